//! The running config: one immutable [`Snapshot`] swapped whole on reload.
//! A request keeps the snapshot it started with, so in-flight requests
//! finish on the config they began on.

mod plugins;

use crate::config::{self, Config, ConfigError, ConfigErrors};
use crate::listener::tls;
use crate::metrics::{self, ResultLabel};
use crate::plugin::{Chain, ChainLink};
use crate::router::Router;
use crate::upstream::Upstreams;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything built from one config generation.
pub struct Snapshot {
    pub generation: u64,
    pub config: Arc<Config>,
    pub router: Router,
    pub upstreams: Arc<Upstreams>,
    chains: plugins::Chains,
    /// TLS server configs by listener name.
    pub tls: HashMap<String, Arc<rustls::ServerConfig>>,
    route_names: Vec<Arc<str>>,
}

impl Snapshot {
    /// Builds the runtime parts of a validated config: certificates loaded,
    /// routes compiled, upstream pools created (or kept from `previous` when
    /// unchanged). Any failure rejects the whole config.
    pub async fn build(
        config: Config,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, ConfigErrors> {
        let mut errors: Vec<ConfigError> = Vec::new();
        if let Some(prev) = previous {
            errors.extend(listener_changes(&prev.config, &config));
        }
        let mut tls_configs = HashMap::new();
        for l in &config.listeners {
            if let Some(t) = &l.tls {
                match tls::server_config(t) {
                    Ok(c) => {
                        tls_configs.insert(l.name.clone(), c);
                    }
                    Err(e) => errors.extend(e),
                }
            }
        }
        let router = match Router::new(config.routes.clone()) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.extend(e.0);
                None
            }
        };
        let upstreams = match Upstreams::build(&config.upstreams, previous.map(|p| &*p.upstreams)) {
            Ok(u) => Arc::new(u),
            Err(e) => {
                errors.extend(e);
                Arc::new(Upstreams::default())
            }
        };
        let chains = match plugins::build(&config, upstreams.clone()).await {
            Ok(c) => c,
            Err(e) => {
                errors.extend(e);
                plugins::Chains::default()
            }
        };
        let (Some(router), true) = (router, errors.is_empty()) else {
            errors.sort_by_key(|e| (e.location.line, e.location.col));
            return Err(ConfigErrors(errors));
        };
        let route_names = router
            .routes()
            .iter()
            .map(|r| Arc::from(r.name.as_str()))
            .collect();
        Ok(Snapshot {
            generation,
            config: Arc::new(config),
            router,
            upstreams,
            chains,
            tls: tls_configs,
            route_names,
        })
    }

    /// The plugin chain for a request on `listener` matched to route `index`:
    /// global plugins, then the listener's, then the route's.
    pub fn chain(&self, listener: &str, index: usize) -> Chain<'_> {
        const NONE: &[ChainLink] = &[];
        Chain {
            parts: [
                &self.chains.global,
                self.chains
                    .listeners
                    .get(listener)
                    .map_or(NONE, Vec::as_slice),
                self.chains.routes.get(index).map_or(NONE, Vec::as_slice),
            ],
            route: self.route_names.get(index).map_or("", |n| n),
        }
    }

    /// The route's name, shared so the hot path does not allocate it.
    pub fn route_name(&self, index: usize) -> Arc<str> {
        self.route_names[index].clone()
    }
}

/// Listeners are bound once at start; a reload may not add, remove or move
/// them (their sockets would have to change under running connections).
fn listener_changes(old: &Config, new: &Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for l in &new.listeners {
        match old.listeners.iter().find(|o| o.name == l.name) {
            Some(o) if o.address == l.address && o.tls.is_some() == l.tls.is_some() => {}
            Some(_) => errors.push(ConfigError {
                location: l.location.clone(),
                message: format!("listener `{}` changed its address or TLS mode", l.name),
                fix: "listener addresses and TLS on/off apply at restart; restart wasmgate or revert the change".into(),
            }),
            None => errors.push(ConfigError {
                location: l.location.clone(),
                message: format!("listener `{}` is new", l.name),
                fix: "new listeners apply at restart; restart wasmgate to bind it".into(),
            }),
        }
    }
    for o in &old.listeners {
        if !new.listeners.iter().any(|l| l.name == o.name) {
            errors.push(ConfigError {
                location: o.location.clone(),
                message: format!("listener `{}` was removed", o.name),
                fix: "removing a listener applies at restart; restart wasmgate or keep it".into(),
            });
        }
    }
    errors
}

/// The gateway's live state: the current snapshot and how to replace it.
pub struct Runtime {
    current: ArcSwap<Snapshot>,
    config_path: PathBuf,
    reload_lock: tokio::sync::Mutex<()>,
    draining: std::sync::atomic::AtomicBool,
}

impl Runtime {
    pub fn new(first: Snapshot, config_path: PathBuf) -> Runtime {
        metrics::global()
            .config_generation
            .set(first.generation as i64);
        Runtime {
            current: ArcSwap::from_pointee(first),
            config_path,
            reload_lock: tokio::sync::Mutex::new(()),
            draining: Default::default(),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn set_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the config file again and swaps it in if it is entirely valid.
    /// Returns the new generation, or every error (the old config stays).
    pub async fn reload(&self, cause: &str) -> Result<u64, ConfigErrors> {
        let _guard = self.reload_lock.lock().await;
        let path = self.config_path.clone();
        let old = self.current();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .unwrap_or_else(|e| {
                Err(config::error::whole_file(
                    &self.config_path,
                    format!("reload task failed: {e}"),
                    "",
                ))
            });
        let result = match loaded {
            Ok(cfg) => Snapshot::build(cfg, old.generation + 1, Some(&old)).await,
            Err(e) => Err(e),
        };
        let m = metrics::global();
        match result {
            Ok(snap) => {
                let generation = snap.generation;
                self.current.store(Arc::new(snap));
                m.reloads.get_or_create(&ResultLabel { result: "ok" }).inc();
                m.config_generation.set(generation as i64);
                tracing::info!(generation, cause, "config reloaded");
                crate::announce(&format!("reload ok generation={generation}"));
                Ok(generation)
            }
            Err(errors) => {
                m.reloads
                    .get_or_create(&ResultLabel { result: "failed" })
                    .inc();
                let generation = self.current().generation;
                tracing::error!(
                    cause,
                    generation,
                    "config reload rejected; the running config stays:\n{errors}"
                );
                crate::announce(&format!("reload failed generation={generation}"));
                Err(errors)
            }
        }
    }
}
