//! The token the router shows model pods, so that a pod answers the router and nobody else who
//! can reach its port (clusters without NetworkPolicy enforcement included).
//!
//! One random master secret lives in a Secret in Ferry's own namespace (the operator creates it;
//! the router reads it). The token for the pods of one LLMDeployment is
//! `hex(HMAC-SHA256(master, "<namespace>/<llmdeployment>"))`: the router derives it per request
//! target, the operator derives it when it builds the pods and hands each pod only its SHA-256
//! digest (a pod argument), so neither a pod spec nor a pod holds a token, and the token of one
//! LLMDeployment opens no other's pods.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The key holding the master secret in the Secret's `data`.
pub const SECRET_KEY: &str = "master";

/// Bytes of a master secret the operator creates.
pub const MASTER_BYTES: usize = 32;

/// The token for the pods of LLMDeployment `name` in `namespace`.
pub fn derive(master: &[u8], namespace: &str, name: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(master).expect("HMAC takes keys of any length");
    mac.update(namespace.as_bytes());
    mac.update(b"/");
    mac.update(name.as_bytes());
    hex(&mac.finalize().into_bytes())
}

/// SHA-256 of a token, in hex: what a pod is given to check tokens against.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hmac_sha256_of_namespace_slash_name_and_differ_per_deployment_and_master() {
        // Python: hmac.new(b"Jefe", b"what do ya want/for nothing?", hashlib.sha256).hexdigest()
        assert_eq!(
            derive(b"Jefe", "what do ya want", "for nothing?"),
            "dd6af33701c7954138b70ba69f6ce04d168ad68b206c5bd154be3b8dc2eb5994"
        );
        let a = derive(b"m1", "team-a", "chat");
        assert_eq!(a.len(), 64);
        assert_ne!(a, derive(b"m1", "team-b", "chat"));
        assert_ne!(a, derive(b"m1", "team-a", "chat2"));
        assert_ne!(a, derive(b"m2", "team-a", "chat"));
        // SHA-256("abc"), FIPS 180-2.
        assert_eq!(digest("abc").len(), 64);
        assert_eq!(
            digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
