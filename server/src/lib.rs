//! The model server: an OpenAI-compatible HTTP API on mistral.rs, with admission control and metrics.
