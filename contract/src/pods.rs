//! What the router and the operator agree on about server pods: which ones take requests and at
//! which address, and how their load is read.

use std::net::{IpAddr, SocketAddr};

use ferry_crds::labels::{SERVER_PORT, SERVER_PORT_NAME};
use k8s_openapi::api::core::v1::Pod;

use crate::metrics::QUEUE_DEPTH;

/// The address to send requests to, if the pod is ready and not shutting down: its IP and the
/// container port named `http` (else the server's default port).
pub fn ready_address(pod: &Pod) -> Option<SocketAddr> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return None;
    }
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let port = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(SERVER_PORT_NAME))
        .map(|p| p.container_port)
        .unwrap_or(SERVER_PORT);
    Some(SocketAddr::new(ip, u16::try_from(port).ok()?))
}

/// The value of [`QUEUE_DEPTH`] in a Prometheus text exposition.
pub fn queue_depth(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.strip_prefix(QUEUE_DEPTH)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v.max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_queue_depth_gauge() {
        let text = "# HELP ferry_queue_depth x\n# TYPE ferry_queue_depth gauge\n\
                    ferry_queue_depth_other 9\nferry_queue_depth{model=\"m\",version=\"v\"} 7\n";
        assert_eq!(queue_depth(text), Some(7));
        assert_eq!(queue_depth("ferry_queue_depth 3\n"), Some(3));
        assert_eq!(queue_depth("nothing 1\n"), None);
    }
}
