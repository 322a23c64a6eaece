//! Start-up, signals, config watching and graceful shutdown: the binary's
//! life from `run` to exit.

use crate::config::{self, Config, LogFormat};
use crate::listener::{self, Accepting, ConnTracker};
use crate::runtime::{Runtime, Snapshot};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Sets up logging from the config; `RUST_LOG` overrides the level.
pub fn init_tracing(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match cfg.log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// Runs the gateway until SIGTERM/SIGINT and a drain.
pub async fn run(config_path: PathBuf, cfg: Config) -> anyhow::Result<()> {
    let first = Snapshot::build(cfg, 1, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = first.config.clone();
    let runtime = Arc::new(Runtime::new(first, config_path.clone()));
    let (drain_tx, drain_rx) = watch::channel(false);
    let tracker = Arc::new(ConnTracker::default());

    let mut accepting = Vec::new();
    for l in &config.listeners {
        let tcp = listener::bind(l.address).await.with_context(|| {
            format!(
                "{}: cannot bind listener `{}` to {}",
                l.location, l.name, l.address
            )
        })?;
        let addr = tcp.local_addr()?;
        crate::announce(&format!("listening listener={} addr={addr}", l.name));
        tracing::info!(listener = %l.name, %addr, tls = l.tls.is_some(), "listening");
        accepting.push(Accepting {
            name: Arc::from(l.name.as_str()),
            listener: tcp,
            runtime: runtime.clone(),
            drain: drain_rx.clone(),
            tracker: tracker.clone(),
        });
    }
    if let Some(admin) = &config.admin {
        let tcp = listener::bind(admin.address)
            .await
            .with_context(|| format!("cannot bind the admin listener to {}", admin.address))?;
        let addr = tcp.local_addr()?;
        crate::announce(&format!("admin addr={addr}"));
        tokio::spawn(crate::admin::serve(tcp, runtime.clone()));
    }
    let loops: Vec<_> = accepting
        .into_iter()
        .map(|a| tokio::spawn(listener::accept_loop(a)))
        .collect();
    spawn_reload_triggers(runtime.clone(), &config_path)?;
    // Signal handlers exist before `ready`, so a stop sent right after it drains.
    let stop = stop_signal()?;
    crate::announce("ready");
    tracing::info!(generation = 1, "wasmgate ready");

    stop.await;
    runtime.set_draining();
    crate::announce("draining");
    let _ = drain_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let grace = runtime.current().config.shutdown_grace;
    let live = tracker.live();
    tracing::info!(connections = live, grace = ?grace, "draining");
    if tokio::time::timeout(grace, tracker.wait_idle())
        .await
        .is_err()
    {
        tracing::warn!(
            connections = tracker.live(),
            "grace period over; closing remaining connections"
        );
    }
    crate::announce("stopped");
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// SIGHUP and changes to the config file both reload.
fn spawn_reload_triggers(runtime: Arc<Runtime>, path: &Path) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let rt = runtime.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = rt.reload("SIGHUP").await;
        }
    });

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file = path.file_name().map(|f| f.to_os_string());
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            let ours = event.paths.iter().any(|p| p.file_name() == file.as_deref());
            if ours && (event.kind.is_modify() || event.kind.is_create()) {
                let _ = tx.send(());
            }
        }
    })
    .context("cannot watch the config file")?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("cannot watch {}", dir.display()))?;
    let path = path.to_path_buf();
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut last = std::fs::read(&path).ok();
        while rx.recv().await.is_some() {
            // Editors write in several steps; let them finish, then take
            // every event of the burst as one.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            let now = std::fs::read(&path).ok();
            if now.is_some() && now != last {
                last = now;
                let _ = runtime.reload("file change").await;
            }
        }
    });
    Ok(())
}

/// `wasmgate check`: validates a config file and builds everything a start
/// would build, without binding sockets.
pub fn check(path: &Path) -> Result<(), config::ConfigErrors> {
    let cfg = config::load(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| config::error::whole_file(path, format!("cannot start a runtime: {e}"), ""))?;
    rt.block_on(Snapshot::build(cfg, 1, None)).map(|_| ())
}
