//! Building plugin chains for a snapshot: compile (or reuse) components,
//! create one instance pool per distinct (plugin, config) pair, and give the
//! plugins their metrics, KV store and outbound HTTP.

use crate::config::{Config, ConfigError, FailureMode, IsolationMode, PluginConfig, PluginRef};
use crate::metrics::{self, PluginKind, PluginLabel, PluginName};
use crate::plugin::{
    kv, ChainLink, FailurePolicy, InstancePool, Isolation, Outbound, OutboundResponse,
    PluginEngine, PluginLimits, PluginMeta, PluginMetrics,
};
use crate::upstream::{Body, Upstreams};
use bytes::Bytes;
use dashmap::DashMap;
use http_body_util::{BodyExt, Full, Limited};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The chains of one snapshot.
#[derive(Default)]
pub struct Chains {
    pub global: Vec<ChainLink>,
    pub listeners: HashMap<String, Vec<ChainLink>>,
    /// By route index.
    pub routes: Vec<Vec<ChainLink>>,
}

/// The largest response body a plugin's HTTP call may return.
const MAX_CALL_BODY: usize = 4 << 20;

/// One plugin's metric handles, fetched once so that a call does not look
/// up (and allocate) its labels.
struct Prom {
    calls: prometheus_client::metrics::counter::Counter,
    duration: prometheus_client::metrics::histogram::Histogram,
    instances: prometheus_client::metrics::gauge::Gauge,
}

impl Prom {
    fn new(plugin: &str) -> Prom {
        let m = metrics::global();
        let label = PluginLabel {
            plugin: plugin.to_string(),
        };
        Prom {
            calls: m.plugin_calls.get_or_create(&label).clone(),
            duration: m.plugin_call_duration.get_or_create(&label).clone(),
            instances: m.plugin_instances.get_or_create(&label).clone(),
        }
    }
}

impl PluginMetrics for Prom {
    fn call(&self, _: &str, elapsed: Duration) {
        self.calls.inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
    fn error(&self, plugin: &str, kind: &'static str) {
        metrics::global()
            .plugin_errors
            .get_or_create(&PluginKind {
                plugin: plugin.to_string(),
                kind,
            })
            .inc();
    }
    fn instances(&self, _: &str, delta: i64) {
        self.instances.inc_by(delta);
    }
    fn guest_counter(&self, plugin: &str, name: &str, value: u64) {
        let label = PluginName {
            plugin: plugin.to_string(),
            name: name.to_string(),
        };
        metrics::global()
            .plugin_guest_counters
            .get_or_create(&label)
            .inc_by(value);
    }
    fn guest_histogram(&self, plugin: &str, name: &str, value: f64) {
        let label = PluginName {
            plugin: plugin.to_string(),
            name: name.to_string(),
        };
        metrics::global()
            .plugin_guest_histograms
            .get_or_create(&label)
            .observe(value);
    }
}

/// Plugins' HTTP calls go through the snapshot's upstream pools.
struct UpstreamOutbound(Arc<Upstreams>);

impl Outbound for UpstreamOutbound {
    fn has_upstream(&self, name: &str) -> bool {
        self.0.get(name).is_some()
    }

    fn call<'a>(
        &'a self,
        upstream: &'a str,
        method: &'a str,
        path: &'a str,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<OutboundResponse, String>> + Send + 'a>> {
        Box::pin(async move {
            let u = self
                .0
                .get(upstream)
                .ok_or_else(|| format!("no upstream named `{upstream}` in the gateway config"))?;
            let endpoint = u
                .pick()
                .ok_or_else(|| format!("upstream `{upstream}` has no endpoint"))?
                .to_string();
            let mut req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &endpoint);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let body: Body = Full::new(Bytes::from(body))
                .map_err(|never| match never {})
                .boxed_unsync();
            let req = req
                .body(body)
                .map_err(|e| format!("invalid request: {e}"))?;
            let exchange = async {
                let resp = u.send(&endpoint, req).await.map_err(|e| format!("{e}"))?;
                let (parts, body) = resp.into_parts();
                let body = Limited::new(body, MAX_CALL_BODY)
                    .collect()
                    .await
                    .map_err(|e| format!("reading the response failed: {e}"))?
                    .to_bytes();
                let headers = parts
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                    .collect();
                Ok((parts.status.as_u16(), headers, body.to_vec()))
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| "timed out".to_string())?
        })
    }
}

/// The process-wide engine and the KV stores, which outlive snapshots.
struct Shared {
    engine: Arc<PluginEngine>,
    kv: DashMap<String, Arc<kv::MemoryKv>>,
    /// The engine settings it was made with: a reload cannot change them.
    cache_dir: Option<std::path::PathBuf>,
    slots: u32,
}

static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

fn shared(config: &Config) -> Result<&'static Shared, String> {
    let shared = SHARED
        .get_or_init(|| {
            let dir = config.plugin_cache_dir.clone().or_else(default_cache_dir);
            let slots = config.plugin_instance_slots;
            PluginEngine::new(dir.as_deref(), slots)
                .map(|engine| Shared {
                    engine,
                    kv: DashMap::new(),
                    cache_dir: config.plugin_cache_dir.clone(),
                    slots,
                })
                .map_err(|e| format!("cannot start the WebAssembly engine: {e:#}"))
        })
        .as_ref()
        .map_err(Clone::clone)?;
    if shared.slots != config.plugin_instance_slots || shared.cache_dir != config.plugin_cache_dir {
        tracing::warn!(
            running_slots = shared.slots,
            running_cache_dir = ?shared.cache_dir,
            "plugin_instance_slots and plugin_cache_dir take effect at the next restart; the running engine keeps its settings"
        );
    }
    Ok(shared)
}

fn default_cache_dir() -> Option<std::path::PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
    Some(base.join("wasmgate"))
}

fn limits(p: &PluginConfig) -> PluginLimits {
    PluginLimits {
        memory_bytes: p.memory_limit_bytes,
        cpu: p.cpu_limit,
        max_output_bytes: p.max_output_bytes,
        max_instance_uses: p.max_instance_uses,
        max_body_bytes: p.max_body_bytes,
    }
}

/// Builds every chain of `config`; all errors are reported with the
/// location of the plugin or chain entry at fault.
pub async fn build(config: &Config, upstreams: Arc<Upstreams>) -> Result<Chains, Vec<ConfigError>> {
    let uses_plugins = !config.global_plugins.is_empty()
        || config.listeners.iter().any(|l| !l.plugins.is_empty())
        || config.routes.iter().any(|r| !r.plugins.is_empty());
    if config.plugins.is_empty() && !uses_plugins {
        return Ok(Chains::default());
    }
    let mut errors = Vec::new();
    let shared = match shared(config) {
        Ok(s) => s,
        Err(message) => {
            let location = config.plugins.first().map(|p| p.location.clone());
            return Err(location
                .map(|location| ConfigError {
                    location,
                    message,
                    fix: String::new(),
                })
                .into_iter()
                .collect());
        }
    };
    let outbound: Arc<dyn Outbound> = Arc::new(UpstreamOutbound(upstreams));

    // Compile (or find compiled) every declared plugin, off the async threads.
    let mut prepared = HashMap::new();
    for p in &config.plugins {
        let engine = shared.engine.clone();
        let path = p.path.clone();
        let result = tokio::task::spawn_blocking(move || engine.prepare(&path))
            .await
            .unwrap_or_else(|e| Err(format!("compile task failed: {e}")));
        match result {
            Ok(pre) => {
                prepared.insert(p.name.clone(), (p, pre));
            }
            Err(message) => errors.push(ConfigError {
                location: p.location.clone(),
                message: format!("plugin `{}`: {message}", p.name),
                fix: "build it with `cargo build --target wasm32-wasip2 --release` against wit/plugin.wit, and check the path".into(),
            }),
        }
    }

    let mut pools: HashMap<(String, String), Arc<InstancePool>> = HashMap::new();
    let mut chain =
        async |refs: &[PluginRef], owner: &str, errors: &mut Vec<ConfigError>| -> Vec<ChainLink> {
            let mut links = Vec::new();
            for r in refs {
                let Some((p, pre)) = prepared.get(&r.plugin) else {
                    continue;
                };
                let key = (r.plugin.clone(), r.config_json.clone());
                let pool = match pools.get(&key) {
                    Some(pool) => pool.clone(),
                    None => {
                        let kv = shared.kv.entry(p.name.clone()).or_default().clone();
                        let meta = Arc::new(PluginMeta {
                            name: Arc::from(p.name.as_str()),
                            limits: limits(p),
                            kv,
                            metrics: Arc::new(Prom::new(&p.name)),
                        });
                        let isolation = match p.isolation {
                            IsolationMode::Reuse => Isolation::Reuse,
                            IsolationMode::PerRequest => Isolation::PerRequest,
                        };
                        match InstancePool::new(
                            shared.engine.clone(),
                            pre.clone(),
                            meta,
                            r.config_json.clone(),
                            outbound.clone(),
                            isolation,
                        )
                        .await
                        {
                            Ok(pool) => {
                                pools.insert(key, pool.clone());
                                pool
                            }
                            Err(e) => {
                                errors.push(ConfigError {
                                    location: r.location.clone(),
                                    message: format!(
                                        "{owner}: plugin `{}` failed to start: {e}",
                                        r.plugin
                                    ),
                                    fix:
                                        "fix the plugin's config (its message says what it expects)"
                                            .into(),
                                });
                                continue;
                            }
                        }
                    }
                };
                let failure = match p.failure {
                    FailureMode::Closed => FailurePolicy::Closed {
                        status: p.failure_status,
                    },
                    FailureMode::Open => FailurePolicy::Open,
                };
                links.push(ChainLink { pool, failure });
            }
            links
        };

    let global = chain(&config.global_plugins, "global_plugins", &mut errors).await;
    let mut listeners = HashMap::new();
    for l in &config.listeners {
        let links = chain(&l.plugins, &format!("listener `{}`", l.name), &mut errors).await;
        listeners.insert(l.name.clone(), links);
    }
    let mut routes = Vec::new();
    for r in &config.routes {
        routes.push(chain(&r.plugins, &format!("route `{}`", r.name), &mut errors).await);
    }
    if errors.is_empty() {
        Ok(Chains {
            global,
            listeners,
            routes,
        })
    } else {
        Err(errors)
    }
}
