//! Labels the operator puts on what it creates, and the rules that turn names into label values.
//! The router finds a version's pods by these labels, so both sides take them from here.

/// Name of the owning LLMDeployment (as a [`label_value`]).
pub const LABEL_DEPLOYMENT: &str = "serving.ferry.dev/llmdeployment";
/// Name of the ModelVersion a pod serves (as a [`label_value`]).
pub const LABEL_VERSION: &str = "serving.ferry.dev/version";
/// Served OpenAI model id (as a [`label_value`]).
pub const LABEL_MODEL: &str = "serving.ferry.dev/model";
/// Standard `app.kubernetes.io/managed-by` label.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`] on everything the operator creates.
pub const MANAGER: &str = "ferry-operator";
/// Name of the server container port on every pod.
pub const SERVER_PORT_NAME: &str = "http";
/// Annotation on an LLMDeployment: `true` promotes the running canary at once, skipping the
/// remaining steps and analyses.
pub const ANNOTATION_PROMOTE: &str = "serving.ferry.dev/promote";
/// Annotation on an LLMDeployment: `true` rolls the running canary back at once.
pub const ANNOTATION_ABORT: &str = "serving.ferry.dev/abort";
/// Annotation on an LLMDeployment: `true` freezes the canary at its current weight (no analyses,
/// no steps) until it is removed.
pub const ANNOTATION_PAUSE: &str = "serving.ferry.dev/pause";
/// Port `ferry-server` listens on in every pod.
pub const SERVER_PORT: i32 = 8000;

/// `s` as a label value: names longer than 63 characters are cut and end in a hash.
pub fn label_value(s: &str) -> String {
    shorten(s.to_string(), s)
}

/// `s` as an RFC 1035 label (Service names): lower-case alphanumerics and dashes, starting with a
/// letter, at most 63 characters.
pub fn dns_label(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert(0, 'x');
    }
    shorten(out.trim_end_matches('-').to_string(), s)
}

fn shorten(out: String, original: &str) -> String {
    if out.len() <= 63 {
        return out;
    }
    let hash = format!("{:016x}", fnv1a(original.as_bytes()));
    format!("{}-{}", out[..46].trim_end_matches(['-', '.']), &hash[..16])
}

/// Name of a version's Deployment and Service: `<llmd>-<version>` as a DNS label (dots become
/// dashes; names over 63 characters are cut and end in a hash, so they stay unique). The router
/// accepts a pod only when its ReplicaSet belongs to the Deployment of this name.
pub fn child_name(llmd: &str, version: &str) -> String {
    dns_label(&format!("{llmd}-{version}"))
}

/// 64-bit FNV-1a: stable across Rust versions and processes (unlike `DefaultHasher`).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
