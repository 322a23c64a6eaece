//! Prometheus metrics: one registry, encoded on the admin listener. A leaf
//! module: it knows no other part of the gateway.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatus {
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamError {
    pub upstream: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamReason {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    pub upstream: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointResult {
    pub upstream: String,
    pub endpoint: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginKind {
    pub plugin: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginName {
    pub plugin: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

fn duration_histogram() -> Histogram {
    // 100 µs … ~26 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

fn plugin_histogram() -> Histogram {
    // 1 µs … ~0.5 s
    Histogram::new(exponential_buckets(0.000001, 2.0, 20))
}

fn guest_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 14))
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RouteStatus, Counter>,
    pub request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    pub upstream_errors: Family<UpstreamError, Counter>,
    pub upstream_retries: Family<UpstreamReason, Counter>,
    pub upstream_retry_budget_exhausted: Family<UpstreamLabel, Counter>,
    pub upstream_overflow: Family<UpstreamReason, Counter>,
    pub upstream_ejections: Family<EndpointLabel, Counter>,
    pub upstream_health_checks: Family<EndpointResult, Counter>,
    pub upstream_endpoint_healthy: Family<EndpointLabel, Gauge>,
    pub active_connections: Family<ListenerLabel, Gauge>,
    pub rejected_connections: Family<ListenerLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    pub config_generation: Gauge,
    pub plugin_calls: Family<PluginLabel, Counter>,
    pub plugin_errors: Family<PluginKind, Counter>,
    pub plugin_call_duration: Family<PluginLabel, Histogram, fn() -> Histogram>,
    pub plugin_instances: Family<PluginLabel, Gauge>,
    pub plugin_guest_counters: Family<PluginName, Counter>,
    pub plugin_guest_histograms: Family<PluginName, Histogram, fn() -> Histogram>,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("wasmgate");
        let requests = Family::<RouteStatus, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route and status",
            requests.clone(),
        );
        let request_duration =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        registry.register(
            "request_duration_seconds",
            "Time from request head to end of response body",
            request_duration.clone(),
        );
        let upstream_errors = Family::<UpstreamError, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by upstream and kind",
            upstream_errors.clone(),
        );
        let upstream_retries = Family::<UpstreamReason, Counter>::default();
        registry.register(
            "upstream_retries",
            "Retried upstream attempts, by upstream and reason (connect_failure, reset, timeout, status)",
            upstream_retries.clone(),
        );
        let upstream_retry_budget_exhausted = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries not made because the upstream's retry budget was spent",
            upstream_retry_budget_exhausted.clone(),
        );
        let upstream_overflow = Family::<UpstreamReason, Counter>::default();
        registry.register(
            "upstream_overflow",
            "Requests answered 503 by the circuit breaker, by limit (requests, pending, connections)",
            upstream_overflow.clone(),
        );
        let upstream_ejections = Family::<EndpointLabel, Counter>::default();
        registry.register(
            "upstream_ejections",
            "Endpoints ejected by outlier detection",
            upstream_ejections.clone(),
        );
        let upstream_health_checks = Family::<EndpointResult, Counter>::default();
        registry.register(
            "upstream_health_checks",
            "Active health checks, by endpoint and result (ok, failed)",
            upstream_health_checks.clone(),
        );
        let upstream_endpoint_healthy = Family::<EndpointLabel, Gauge>::default();
        registry.register(
            "upstream_endpoint_healthy",
            "1 if the endpoint passes its active health checks, else 0",
            upstream_endpoint_healthy.clone(),
        );
        let active_connections = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "active_connections",
            "Open client connections",
            active_connections.clone(),
        );
        let rejected_connections = Family::<ListenerLabel, Counter>::default();
        registry.register(
            "rejected_connections",
            "Connections closed at accept by a connection cap",
            rejected_connections.clone(),
        );
        let reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reload attempts, by result",
            reloads.clone(),
        );
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the active config",
            config_generation.clone(),
        );
        let plugin_calls = Family::<PluginLabel, Counter>::default();
        registry.register("plugin_calls", "Plugin phase calls", plugin_calls.clone());
        let plugin_errors = Family::<PluginKind, Counter>::default();
        registry.register(
            "plugin_errors",
            "Plugin failures by kind (deadline, memory, stack, unreachable, output, …)",
            plugin_errors.clone(),
        );
        let plugin_call_duration =
            Family::<PluginLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                plugin_histogram,
            );
        registry.register(
            "plugin_call_duration_seconds",
            "Wall time of one plugin phase call",
            plugin_call_duration.clone(),
        );
        let plugin_instances = Family::<PluginLabel, Gauge>::default();
        registry.register(
            "plugin_instances",
            "Live plugin instances",
            plugin_instances.clone(),
        );
        let plugin_guest_counters = Family::<PluginName, Counter>::default();
        registry.register(
            "plugin_guest",
            "Counters reported by plugins",
            plugin_guest_counters.clone(),
        );
        let plugin_guest_histograms =
            Family::<PluginName, Histogram, fn() -> Histogram>::new_with_constructor(
                guest_histogram,
            );
        registry.register(
            "plugin_guest_observations",
            "Histograms reported by plugins",
            plugin_guest_histograms.clone(),
        );
        Metrics {
            registry,
            plugin_calls,
            plugin_errors,
            plugin_call_duration,
            plugin_instances,
            plugin_guest_counters,
            plugin_guest_histograms,
            requests,
            request_duration,
            upstream_errors,
            upstream_retries,
            upstream_retry_budget_exhausted,
            upstream_overflow,
            upstream_ejections,
            upstream_health_checks,
            upstream_endpoint_healthy,
            active_connections,
            rejected_connections,
            reloads,
            config_generation,
        }
    }

    /// Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn upstream_error(&self, upstream: &str, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&UpstreamError {
                upstream: upstream.to_string(),
                kind,
            })
            .inc();
    }
}

impl Metrics {
    pub fn upstream_retry(&self, upstream: &str, reason: &'static str) {
        self.upstream_retries
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_string(),
                reason,
            })
            .inc();
    }

    pub fn upstream_retry_budget_exhausted(&self, upstream: &str) {
        self.upstream_retry_budget_exhausted
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    pub fn upstream_overflow(&self, upstream: &str, reason: &'static str) {
        self.upstream_overflow
            .get_or_create(&UpstreamReason {
                upstream: upstream.to_string(),
                reason,
            })
            .inc();
    }

    pub fn upstream_ejection(&self, upstream: &str, endpoint: &str) {
        self.upstream_ejections
            .get_or_create(&EndpointLabel {
                upstream: upstream.to_string(),
                endpoint: endpoint.to_string(),
            })
            .inc();
    }

    pub fn upstream_health_check(&self, upstream: &str, endpoint: &str, ok: bool) {
        self.upstream_health_checks
            .get_or_create(&EndpointResult {
                upstream: upstream.to_string(),
                endpoint: endpoint.to_string(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn upstream_endpoint_healthy(&self, upstream: &str, endpoint: &str, healthy: bool) {
        self.upstream_endpoint_healthy
            .get_or_create(&EndpointLabel {
                upstream: upstream.to_string(),
                endpoint: endpoint.to_string(),
            })
            .set(i64::from(healthy));
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::new()))
}
