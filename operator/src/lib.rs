//! The control plane: reconciles ModelVersion and LLMDeployment into pods, services, traffic splits and status.
