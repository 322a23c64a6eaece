//! Listeners: bound sockets, accept loops with global and per-IP connection
//! caps, and the hand-off of each connection to [`conn::serve`].

mod conn;
mod guard;
pub mod tls;

use crate::metrics::{self, ListenerLabel};
use crate::proxy::{ConnCtx, ConnShared};
use crate::runtime::Runtime;
use dashmap::DashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Counts live connections so that a drain can wait for them.
#[derive(Default)]
pub struct ConnTracker {
    live: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl ConnTracker {
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Waits until no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.live() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Everything an accept loop needs.
pub struct Accepting {
    pub name: Arc<str>,
    pub listener: TcpListener,
    pub runtime: Arc<Runtime>,
    pub drain: watch::Receiver<bool>,
    pub tracker: Arc<ConnTracker>,
}

/// Releases a connection's slots when the connection ends.
struct Slot {
    tracker: Arc<ConnTracker>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    listener_count: Arc<AtomicUsize>,
    ip: IpAddr,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.listener_count.fetch_sub(1, Ordering::AcqRel);
        self.per_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
        self.gauge.dec();
        if self.tracker.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.idle.notify_waiters();
        }
    }
}

/// Accepts connections until the gateway drains.
pub async fn accept_loop(a: Accepting) {
    let Accepting {
        name,
        listener,
        runtime,
        mut drain,
        tracker,
    } = a;
    let per_ip: Arc<DashMap<IpAddr, usize>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let label = ListenerLabel {
        listener: name.to_string(),
    };
    let gauge = metrics::global()
        .active_connections
        .get_or_create(&label)
        .clone();
    let rejected = metrics::global()
        .rejected_connections
        .get_or_create(&label)
        .clone();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.changed() => return,
        };
        let snap = runtime.current();
        let Some(cfg) = snap.config.listeners.iter().find(|l| *l.name == *name) else {
            continue;
        };
        let limits = cfg.limits.clone();
        if count.load(Ordering::Acquire) >= limits.max_connections {
            rejected.inc();
            continue;
        }
        let ip = peer.ip();
        {
            let mut n = per_ip.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_ip {
                drop(n);
                rejected.inc();
                tracing::debug!(listener = %name, client = %peer, "per-IP connection cap reached");
                continue;
            }
            *n += 1;
        }
        count.fetch_add(1, Ordering::AcqRel);
        tracker.live.fetch_add(1, Ordering::AcqRel);
        gauge.inc();
        let slot = Slot {
            tracker: tracker.clone(),
            per_ip: per_ip.clone(),
            listener_count: count.clone(),
            ip,
            gauge: gauge.clone(),
        };
        let ctx = Arc::new(ConnCtx {
            listener: name.clone(),
            client: peer,
            client_ip: crate::proxy::ClientIp::new(peer.ip()),
            tls: cfg.tls.is_some(),
            trust_forwarded: cfg.trust_forwarded,
            limits,
            shared: Arc::new(ConnShared::default()),
        });
        let tls = snap.tls.get(&*name).cloned();
        let runtime = runtime.clone();
        let drain = drain.clone();
        drop(snap);
        tokio::spawn(async move {
            conn::serve(stream, ctx, tls, runtime, drain).await;
            drop(slot);
        });
    }
}

/// Binds a listener's socket.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
