//! What Ferry's processes agree on across a process boundary. The server, the router, the
//! operator and ferry-bench each read these definitions from here, so a name or a rule is
//! defined once.

pub mod auth;
pub mod error;
pub mod metrics;
pub mod pod_token;
#[cfg(feature = "pods")]
pub mod pods;
pub mod stats;
pub mod tokens;
pub mod ttft;
