//! The operator's one error type.

/// What can go wrong in a reconcile. Invalid specs are not errors: they are reported in status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
}

impl Error {
    /// Category for the `ferry_operator_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(e)) if e.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(e)) if e.code == 422 => "rejected",
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "connection",
            Self::Serialization(_) => "internal",
        }
    }
}
