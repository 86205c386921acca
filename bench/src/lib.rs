//! Load generator and concurrency sweep for any OpenAI-compatible endpoint, with tables and plots.
//!
//! `ferry-bench sweep` sends streamed chat completions at each concurrency level to one or more
//! endpoints (interleaved level by level, so every target sees the same machine state), measures
//! output tokens/s, requests/s, TTFT, inter-token and end-to-end latency, and writes a table, CSV,
//! JSON and PNG plots.

pub mod report;
pub mod run;
pub mod stats;
