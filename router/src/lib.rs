//! The in-cluster OpenAI endpoint: routes by model, splits traffic between versions, picks the least-loaded pod.
