//! DNS: endpoints named by host name are resolved every `dns_refresh`; each
//! address becomes an endpoint with the configured weight. The endpoint set
//! is swapped whole when the addresses change (requests in flight keep the
//! set they started with). Until the first answer, and for a name whose
//! lookup fails, the previous addresses stay (at first: the name itself,
//! resolved at connect time).

use super::connect::host_of;
use super::Upstream;
use std::net::IpAddr;
use std::sync::{Arc, Weak};

pub(super) fn spawn(up: &Arc<Upstream>) {
    let names = up
        .cfg
        .endpoints
        .iter()
        .any(|e| host_of(&e.address).parse::<IpAddr>().is_err());
    if names {
        super::spawn_task(run(Arc::downgrade(up)));
    }
}

async fn run(weak: Weak<Upstream>) {
    // Per configured endpoint: its last known addresses.
    let mut known: Vec<Vec<String>> = Vec::new();
    loop {
        let (cfg_endpoints, refresh, name) = {
            let Some(up) = weak.upgrade() else { return };
            (
                up.cfg.endpoints.clone(),
                up.cfg.dns_refresh,
                up.name.clone(),
            )
        };
        if known.is_empty() {
            known = cfg_endpoints
                .iter()
                .map(|e| vec![e.address.clone()])
                .collect();
        }
        let mut changed = false;
        for (e, addrs) in cfg_endpoints.iter().zip(known.iter_mut()) {
            let host = host_of(&e.address);
            if host.parse::<IpAddr>().is_ok() {
                continue;
            }
            match tokio::net::lookup_host(e.address.as_str()).await {
                Ok(found) => {
                    let mut found: Vec<String> = found.map(|a| a.to_string()).collect();
                    found.sort();
                    found.dedup();
                    if !found.is_empty() && found != *addrs {
                        tracing::info!(upstream = %name, endpoint = %e.address, addresses = ?found, "endpoint resolved");
                        *addrs = found;
                        changed = true;
                    }
                }
                Err(err) => {
                    tracing::warn!(upstream = %name, endpoint = %e.address, error = %err, "DNS lookup failed; keeping the previous addresses");
                }
            }
        }
        if changed {
            let Some(up) = weak.upgrade() else { return };
            let list = cfg_endpoints
                .iter()
                .zip(&known)
                .flat_map(|(e, addrs)| {
                    let host = host_of(&e.address).to_string();
                    addrs
                        .iter()
                        .map(move |a| (a.clone(), host.clone(), e.weight))
                })
                .collect();
            up.replace_endpoints(list);
        }
        tokio::time::sleep(refresh).await;
    }
}
