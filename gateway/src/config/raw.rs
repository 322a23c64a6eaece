//! The TOML file as written: serde structs with spans, no meaning attached yet.
//!
//! Every struct denies unknown fields so that a typo is an error, not a silently
//! ignored setting. Values that need checking later keep their span so the
//! error can point at them.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: Option<S<RawAdmin>>,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub shutdown_grace: Option<S<String>>,
    #[serde(default)]
    pub listeners: Vec<S<RawListener>>,
    #[serde(default)]
    pub upstreams: Vec<S<RawUpstream>>,
    #[serde(default)]
    pub routes: Vec<S<RawRoute>>,
    #[serde(default)]
    pub plugins: Vec<S<RawPlugin>>,
    /// Plugins run for every request, before listener and route plugins.
    #[serde(default)]
    pub global_plugins: Vec<S<RawPluginRef>>,
    /// Where compiled plugins are cached between runs.
    #[serde(default)]
    pub plugin_cache_dir: Option<S<String>>,
    /// Plugin instances that can exist at once, process-wide.
    #[serde(default)]
    pub plugin_instance_slots: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugin {
    pub name: S<String>,
    pub path: S<String>,
    #[serde(default)]
    pub failure: FailureMode,
    pub failure_status: Option<S<u16>>,
    #[serde(default)]
    pub isolation: IsolationMode,
    pub memory_limit_bytes: Option<S<u64>>,
    pub cpu_limit: Option<S<String>>,
    pub max_output_bytes: Option<S<u64>>,
    pub max_instance_uses: Option<S<u64>>,
    pub max_body_bytes: Option<S<u64>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureMode {
    /// A failing plugin fails the request.
    #[default]
    Closed,
    /// A failing plugin is skipped.
    Open,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    #[default]
    Reuse,
    PerRequest,
}

/// A plugin in a chain, with the config handed to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPluginRef {
    pub plugin: S<String>,
    #[serde(default)]
    pub config: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub address: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    #[serde(default)]
    pub format: Option<LogFormat>,
    #[serde(default)]
    pub level: Option<S<String>>,
    #[serde(default)]
    pub access_log: Option<bool>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: S<String>,
    pub address: S<String>,
    #[serde(default)]
    pub tls: Option<S<RawTls>>,
    #[serde(default)]
    pub trust_forwarded: bool,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub plugins: Vec<S<RawPluginRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub certificates: Vec<S<RawCert>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: S<String>,
    pub key: S<String>,
    #[serde(default)]
    pub server_names: Vec<S<String>>,
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub first_byte_timeout: Option<S<String>>,
    pub tls_handshake_timeout: Option<S<String>>,
    pub header_read_timeout: Option<S<String>>,
    pub idle_timeout: Option<S<String>>,
    pub body_read_timeout: Option<S<String>>,
    pub max_header_bytes: Option<S<u64>>,
    pub max_headers: Option<S<u64>>,
    pub max_request_line_bytes: Option<S<u64>>,
    pub max_body_bytes: Option<S<u64>>,
    pub max_connections: Option<S<u64>>,
    pub max_connections_per_ip: Option<S<u64>>,
    pub h2_max_concurrent_streams: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: S<String>,
    pub endpoints: Vec<S<RawEndpoint>>,
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    #[serde(default)]
    pub balancer: BalancerKind,
    pub hash_on: Option<S<RawHashOn>>,
    pub dns_refresh: Option<S<String>>,
    pub connect_timeout: Option<S<String>>,
    /// Older name of `per_try_timeout`.
    pub response_timeout: Option<S<String>>,
    pub per_try_timeout: Option<S<String>>,
    pub request_timeout: Option<S<String>>,
    pub pool_idle_timeout: Option<S<String>>,
    pub pool_max_idle_per_endpoint: Option<S<u64>>,
    /// Percent of healthy endpoints below which ejection and health are ignored.
    pub panic_threshold: Option<S<u64>>,
    pub health_check: Option<S<RawHealthCheck>>,
    pub outlier: Option<S<RawOutlier>>,
    pub retry: Option<S<RawRetry>>,
    pub circuit_breaker: Option<S<RawCircuitBreaker>>,
    pub tls: Option<S<RawUpstreamTls>>,
}

/// `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Address(String),
    Table(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub address: String,
    pub weight: Option<i64>,
}

/// `"client-ip"` or `{ header = "x-user" }`, `{ cookie = "session" }`,
/// `{ query = "user" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHashOn {
    Name(String),
    Table(RawHashOnTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHashOnTable {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancerKind {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastRequest,
    Random,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthCheckKind {
    #[default]
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[serde(default, rename = "type")]
    pub kind: HealthCheckKind,
    pub path: Option<S<String>>,
    pub host: Option<S<String>>,
    #[serde(default)]
    pub expected_statuses: Vec<S<u16>>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub jitter: Option<S<String>>,
    pub healthy_threshold: Option<S<u64>>,
    pub unhealthy_threshold: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_5xx: Option<S<u64>>,
    pub consecutive_connect_failures: Option<S<u64>>,
    pub base_ejection_time: Option<S<String>>,
    pub max_ejection_time: Option<S<String>>,
    pub max_ejection_percent: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub max_retries: Option<S<u64>>,
    pub on: Option<Vec<S<String>>>,
    pub methods: Option<Vec<S<String>>>,
    pub backoff_base: Option<S<String>>,
    pub backoff_max: Option<S<String>>,
    pub budget_percent: Option<S<u64>>,
    pub min_retry_concurrency: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCircuitBreaker {
    pub max_connections: Option<S<u64>>,
    pub max_pending: Option<S<u64>>,
    pub max_requests: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM bundle of trusted CAs; absent: the system's roots.
    pub ca: Option<S<String>>,
    pub sni: Option<S<String>>,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (over TLS when `[upstreams.tls]` is set).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
    /// HTTP/2 over TLS, negotiated with ALPN `h2`.
    H2,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: S<String>,
    #[serde(default)]
    pub listeners: Vec<S<String>>,
    #[serde(default)]
    pub hosts: Vec<S<String>>,
    pub path: Option<S<String>>,
    pub path_prefix: Option<S<String>>,
    pub path_pattern: Option<S<String>>,
    #[serde(default)]
    pub methods: Vec<S<String>>,
    #[serde(default)]
    pub headers: Vec<S<RawValueMatch>>,
    #[serde(default)]
    pub query: Vec<S<RawValueMatch>>,
    pub upstream: Option<S<String>>,
    pub direct_response: Option<S<RawDirectResponse>>,
    pub strip_prefix: Option<S<String>>,
    pub rewrite_path: Option<S<String>>,
    pub host_rewrite: Option<S<String>>,
    /// Overrides the upstream's `per_try_timeout` for this route.
    pub per_try_timeout: Option<S<String>>,
    /// Overrides the upstream's `request_timeout` for this route.
    pub request_timeout: Option<S<String>>,
    /// Overrides fields of the upstream's `[upstreams.retry]` for this route.
    pub retry: Option<S<RawRouteRetry>>,
    #[serde(default)]
    pub request_headers: RawHeaderOps,
    #[serde(default)]
    pub response_headers: RawHeaderOps,
    #[serde(default)]
    pub plugins: Vec<S<RawPluginRef>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteRetry {
    pub max_retries: Option<S<u64>>,
    pub on: Option<Vec<S<String>>>,
    pub methods: Option<Vec<S<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueMatch {
    pub name: S<String>,
    pub exact: Option<String>,
    pub regex: Option<S<String>>,
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectResponse {
    pub status: S<u16>,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub content_type: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub add: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub remove: Vec<S<String>>,
}
