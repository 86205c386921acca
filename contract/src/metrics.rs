//! Metric names read across a process boundary.

/// The gauge every server pod exports: requests waiting + running in it. The operator's
/// autoscaler scales on it, and each router balances on it across router replicas.
pub const QUEUE_DEPTH: &str = "ferry_queue_depth";
