//! The token the router shows model pods (`Authorization: Bearer`), derived per LLMDeployment
//! from the master secret the operator keeps in a Secret in Ferry's namespace
//! ([`ferry_contract::pod_token`]). Pods built by an operator with `--pod-token-secret` answer
//! only requests that carry it, so API keys, rate limits and idempotency cannot be skipped by
//! calling a pod directly.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::HeaderValue;
use ferry_contract::pod_token::{SECRET_KEY, derive};
use tracing::{info, warn};

use crate::error::RouterError;

/// The master secret, once read; off unless [`PodToken::expect`] was called.
#[derive(Default)]
pub struct PodToken {
    configured: AtomicBool,
    master: RwLock<Option<Vec<u8>>>,
}

impl PodToken {
    /// Requests to pods need the token from now on; until the master is read they are refused
    /// (503), never sent without it.
    pub fn expect(&self) {
        self.configured.store(true, Ordering::Relaxed);
    }

    /// The master secret from the Secret's data (`None`: missing or empty).
    pub fn set_master(&self, master: Option<Vec<u8>>) {
        *self.master.write().unwrap_or_else(|e| e.into_inner()) = master.filter(|m| !m.is_empty());
    }

    /// Whether requests can be sent: no token needed, or the master is known.
    pub fn is_ready(&self) -> bool {
        !self.configured.load(Ordering::Relaxed)
            || self
                .master
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .is_some()
    }

    /// The `Authorization` value for the pods of LLMDeployment `deployment` in `namespace`
    /// (`None` when tokens are off).
    pub fn credential(
        &self,
        namespace: &str,
        deployment: &str,
    ) -> Result<Option<HeaderValue>, RouterError> {
        if !self.configured.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let master = self.master.read().unwrap_or_else(|e| e.into_inner());
        let master = master.as_deref().ok_or(RouterError::NotReady {
            what: "the pod token Secret is not read yet (or is missing)",
        })?;
        let token = derive(master, namespace, deployment);
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .expect("a hex token is a valid header value");
        value.set_sensitive(true);
        Ok(Some(value))
    }
}

/// Keeps `token` in step with the Secret `name` in `namespace` (the operator creates it).
pub async fn watch(
    client: kube::Client,
    namespace: String,
    name: String,
    token: std::sync::Arc<PodToken>,
) {
    let secret = name.clone();
    crate::access::watch_secret_data(client, namespace, name, move |data| {
        let master = data.get(SECRET_KEY).cloned();
        match &master {
            Some(m) if !m.is_empty() => info!(%secret, "pod token master read"),
            _ => warn!(%secret, key = SECRET_KEY, "the pod token Secret is missing or has no master: requests get 503"),
        }
        token.set_master(master);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_sends_nothing_on_refuses_until_the_master_is_read() {
        let token = PodToken::default();
        assert!(token.is_ready());
        assert_eq!(token.credential("ns", "chat").unwrap(), None);

        token.expect();
        assert!(!token.is_ready());
        assert!(matches!(
            token.credential("ns", "chat"),
            Err(RouterError::NotReady { .. })
        ));

        token.set_master(Some(b"master".to_vec()));
        assert!(token.is_ready());
        let value = token.credential("ns", "chat").unwrap().unwrap();
        assert_eq!(
            value.to_str().unwrap(),
            format!("Bearer {}", derive(b"master", "ns", "chat"))
        );
        assert!(value.is_sensitive());

        token.set_master(Some(Vec::new()));
        assert!(!token.is_ready(), "an emptied Secret stops requests again");
    }
}
