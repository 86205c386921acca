//! The master of the tokens the router shows model pods ([`ferry_contract::pod_token`]): read
//! from a Secret in the operator's namespace, created with a random master when missing. The
//! operator only reads and creates that one Secret; no token is ever stored anywhere else (pods
//! get digests).

use std::io::Read;

use ferry_contract::pod_token::{MASTER_BYTES, SECRET_KEY};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::info;

use crate::build::{LABEL_MANAGED_BY, MANAGER};

/// The master in Secret `name` of `namespace`, created first when there is none. Two operators
/// starting at once agree: the second one's create fails with 409 and it reads the first one's.
pub async fn ensure_master(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(name).await? {
            return master_of(&secret).ok_or_else(|| {
                anyhow::anyhow!(
                    "Secret {namespace}/{name} has no non-empty `{SECRET_KEY}` entry; delete it \
                     and restart the operator: it creates a new one"
                )
            });
        }
        let master = random_master()?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some([(LABEL_MANAGED_BY.to_string(), MANAGER.to_string())].into()),
                ..Default::default()
            },
            data: Some([(SECRET_KEY.to_string(), ByteString(master.clone()))].into()),
            immutable: Some(true),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(secret = %format!("{namespace}/{name}"), "created the pod token master");
                return Ok(master);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("could not read or create the pod token Secret {namespace}/{name}")
}

fn master_of(secret: &Secret) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()?
        .get(SECRET_KEY)
        .map(|b| b.0.clone())
        .filter(|m| !m.is_empty())
}

fn random_master() -> anyhow::Result<Vec<u8>> {
    let mut master = vec![0u8; MASTER_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut master)?;
    Ok(master)
}
