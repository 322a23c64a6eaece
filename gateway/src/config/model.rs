//! The validated, immutable config model. Everything here has been checked;
//! runtime parts are built from it by the application.

use super::error::Location;
pub use super::raw::{
    BalancerKind, FailureMode, HealthCheckKind, IsolationMode, LogFormat, UpstreamProtocol,
};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use regex::Regex;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: PathBuf,
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    #[serde(with = "humantime_serde_compat")]
    pub shutdown_grace: Duration,
    pub listeners: Vec<ListenerConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub plugins: Vec<PluginConfig>,
    pub global_plugins: Vec<PluginRef>,
    pub plugin_cache_dir: Option<PathBuf>,
    /// The engine's pool of plugin instances (memory, stack and table
    /// slots): how many instances can exist at once, across all plugins.
    pub plugin_instance_slots: u32,
}

/// A plugin component and its sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginConfig {
    pub name: String,
    pub path: PathBuf,
    pub failure: FailureMode,
    #[serde(serialize_with = "display_one")]
    pub failure_status: StatusCode,
    pub isolation: IsolationMode,
    pub memory_limit_bytes: usize,
    #[serde(with = "humantime_serde_compat")]
    pub cpu_limit: Duration,
    pub max_output_bytes: usize,
    pub max_instance_uses: u64,
    /// The largest body buffered for this plugin's body phases.
    pub max_body_bytes: usize,
    #[serde(skip)]
    pub location: Location,
}

/// A plugin in a chain, with its config as JSON text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginRef {
    pub plugin: String,
    pub config_json: String,
    #[serde(skip)]
    pub location: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub trust_forwarded: bool,
    pub limits: Limits,
    pub plugins: Vec<PluginRef>,
    #[serde(skip)]
    pub location: Location,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsConfig {
    pub certificates: Vec<CertConfig>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CertConfig {
    pub cert: PathBuf,
    /// Never shown by `/config`: the path of a private key is not a secret,
    /// but redacting it keeps operators from pasting key material here.
    #[serde(serialize_with = "redacted")]
    pub key: PathBuf,
    pub server_names: Vec<String>,
    pub default: bool,
    #[serde(skip)]
    pub location: Location,
}

fn redacted<S: serde::Serializer, T>(_: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("<redacted>")
}

/// Connection and request limits of one listener. Defaults are in
/// [`Limits::default`] and documented in `docs/config.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limits {
    #[serde(with = "humantime_serde_compat")]
    pub first_byte_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub tls_handshake_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub body_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_request_line_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub h2_max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            first_byte_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_line_bytes: 8 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 1_000,
            h2_max_concurrent_streams: 256,
        }
    }
}

/// One upstream: its endpoints and how traffic to them is managed. Defaults
/// are in `validate.rs` (`UpstreamDefaults` and the `Default` impls below)
/// and documented in `docs/config.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub protocol: UpstreamProtocol,
    pub balancer: BalancerKind,
    pub hash_on: Option<HashOn>,
    /// How often host names among the endpoints are resolved again.
    #[serde(with = "humantime_serde_compat")]
    pub dns_refresh: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Deadline for the response head of one attempt.
    #[serde(with = "humantime_serde_compat")]
    pub per_try_timeout: Duration,
    /// Deadline for the response head over all attempts and back-offs.
    #[serde(with = "opt_duration")]
    pub request_timeout: Option<Duration>,
    #[serde(with = "humantime_serde_compat")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    /// Percent (0–100); below this share of available endpoints, the
    /// balancer ignores health and ejection.
    pub panic_threshold: u8,
    pub health_check: Option<HealthCheck>,
    pub outlier: OutlierSettings,
    pub retry: RetryPolicy,
    pub circuit_breaker: CircuitBreaker,
    pub tls: Option<UpstreamTls>,
}

/// `host:port` (a host name or an IP literal) and a relative weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointConfig {
    pub address: String,
    pub weight: u32,
}

/// What the consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashOn {
    /// A request header (lower-case name).
    Header(String),
    Cookie(String),
    Query(String),
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub kind: HealthCheckKind,
    pub path: String,
    /// `Host` of HTTP checks; default the endpoint's host.
    pub host: Option<String>,
    /// Statuses that count as healthy; empty means any 2xx.
    pub expected_statuses: Vec<u16>,
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Up to this much is added at random to each interval.
    #[serde(with = "humantime_serde_compat")]
    pub jitter: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

/// Passive health: ejection after consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutlierSettings {
    pub consecutive_5xx: u32,
    pub consecutive_connect_failures: u32,
    #[serde(with = "humantime_serde_compat")]
    pub base_ejection_time: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u8,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_5xx: 5,
            consecutive_connect_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// When a failed attempt is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    pub connect_failure: bool,
    /// The connection failed or was reset before a response head arrived.
    pub reset: bool,
    /// The attempt hit `per_try_timeout`.
    pub timeout: bool,
    pub statuses: Vec<u16>,
}

impl RetryOn {
    pub fn status(&self, s: u16) -> bool {
        self.statuses.contains(&s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub on: RetryOn,
    /// Methods that may be retried (idempotent ones by default).
    #[serde(serialize_with = "display_all")]
    pub methods: Vec<Method>,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_base: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub backoff_max: Duration,
    /// Retries may be at most this percent of the active requests…
    pub budget_percent: u32,
    /// …but this many concurrent retries are always allowed.
    pub min_retry_concurrency: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 1,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                timeout: false,
                statuses: Vec::new(),
            },
            methods: [
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ]
            .to_vec(),
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget_percent: 20,
            min_retry_concurrency: 3,
        }
    }
}

/// A route's changes to its upstream's timeouts and retry policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RouteUpstreamPolicy {
    #[serde(with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    #[serde(with = "opt_duration")]
    pub request_timeout: Option<Duration>,
    pub max_retries: Option<u32>,
    pub retry_on: Option<RetryOn>,
    #[serde(serialize_with = "opt_methods")]
    pub retry_methods: Option<Vec<Method>>,
}

impl RouteUpstreamPolicy {
    pub fn is_empty(&self) -> bool {
        *self == RouteUpstreamPolicy::default()
    }
}

fn opt_methods<S: serde::Serializer>(v: &Option<Vec<Method>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => display_all(v, s),
        None => s.serialize_none(),
    }
}

/// Per-upstream limits; overflow is answered 503 at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CircuitBreaker {
    pub max_connections: usize,
    pub max_pending: usize,
    pub max_requests: usize,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            max_connections: 1024,
            max_pending: 1024,
            max_requests: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct UpstreamTls {
    /// Trusted CAs; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
    pub cert: Option<PathBuf>,
    #[serde(serialize_with = "redacted")]
    pub key: Option<PathBuf>,
    pub insecure_skip_verify: bool,
    /// Where the table is, for certificate loading errors. Not part of
    /// equality: moving the table must not rebuild the upstream on reload.
    #[serde(skip)]
    pub location: Location,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, o: &Self) -> bool {
        (
            &self.ca,
            &self.sni,
            &self.cert,
            &self.key,
            self.insecure_skip_verify,
        ) == (&o.ca, &o.sni, &o.cert, &o.key, o.insecure_skip_verify)
    }
}

impl Eq for UpstreamTls {}

#[derive(Debug, Clone, Serialize)]
pub struct RouteConfig {
    pub name: String,
    /// Empty means every listener.
    pub listeners: Vec<String>,
    /// Empty means any host.
    pub hosts: Vec<HostMatch>,
    pub path: PathMatch,
    /// Empty means any method.
    #[serde(serialize_with = "display_all")]
    pub methods: Vec<Method>,
    pub headers: Vec<ValueMatch>,
    pub query: Vec<ValueMatch>,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    pub plugins: Vec<PluginRef>,
    #[serde(skip)]
    pub location: Location,
}

fn display_all<S: serde::Serializer, T: std::fmt::Display>(
    v: &[T],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|x| x.to_string()))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum HostMatch {
    /// A lower-case host name without port.
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: matches any name ending in it.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    Exact(String),
    /// Segment-aware: `/api` matches `/api` and `/api/x`, never `/apix`.
    Prefix(String),
    Pattern(PathPattern),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathPattern {
    pub source: String,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Segment {
    Literal(String),
    /// `{name}`: exactly one non-empty segment.
    Param(String),
    /// `{*name}`: the rest of the path (possibly empty); only last.
    Rest(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ValueMatch {
    pub name: String,
    pub kind: ValueMatchKind,
}

#[derive(Debug, Clone, Serialize)]
pub enum ValueMatchKind {
    Present,
    Exact(String),
    Regex(#[serde(serialize_with = "regex_source")] Regex),
}

fn regex_source<S: serde::Serializer>(r: &Regex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

#[derive(Debug, Clone, Serialize)]
pub enum RouteAction {
    Forward(ForwardAction),
    Direct(DirectResponse),
}

#[derive(Debug, Clone, Serialize)]
pub struct ForwardAction {
    pub upstream: String,
    pub strip_prefix: Option<String>,
    /// A template such as `/v2/{id}` filled from the path pattern's params.
    pub rewrite_path: Option<String>,
    /// Replaces the `Host` sent upstream; by default the client's is kept.
    pub host_rewrite: Option<String>,
    /// Timeouts and retries that differ from the upstream's.
    pub upstream_policy: RouteUpstreamPolicy,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectResponse {
    #[serde(serialize_with = "display_one")]
    pub status: StatusCode,
    pub body: String,
    pub content_type: String,
}

fn display_one<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HeaderOps {
    #[serde(serialize_with = "header_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "header_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    #[serde(serialize_with = "display_all")]
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

fn header_pairs<S: serde::Serializer>(
    v: &[(HeaderName, HeaderValue)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(k, v)| {
        (
            k.as_str(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        )
    }))
}

/// Optional durations: a humantime string or null.
mod opt_duration {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.collect_str(&humantime::format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Durations serialise as humantime strings ("10s") in `/config`.
mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
