//! Upstream tables: endpoints, balancing, health checks, outlier detection,
//! retries, circuit breaking, TLS, and a route's overrides of them.

use super::super::model::*;
use super::super::raw::*;
use super::{UpstreamDefaults, Validator};
use http::Method;
use std::time::Duration;

/// Conditions `retry.on` accepts.
const RETRY_ON: &str =
    "\"connect-failure\", \"reset\", \"timeout\", \"5xx\", \"gateway-error\" or a status such as \"503\"";

impl Validator {
    pub(super) fn upstream(&mut self, raw: S<RawUpstream>) -> Option<UpstreamConfig> {
        let raw = raw.into_inner();
        self.name(&raw.name, "upstream");
        // An upstream may have no endpoints (a service taken out of
        // rotation): its routes then answer 503, as in Envoy.
        let mut endpoints = Vec::new();
        for e in &raw.endpoints {
            if let Some(ep) = self.endpoint(e) {
                endpoints.push(ep);
            }
        }
        let d = UpstreamDefaults::default();
        let hash_on = raw.hash_on.as_ref().and_then(|h| self.hash_on(h));
        if raw.balancer == BalancerKind::ConsistentHash
            && hash_on.is_none()
            && raw.hash_on.is_none()
        {
            self.r.error(
                &raw.name.span(),
                format!(
                    "upstream `{}` uses balancer = \"consistent-hash\" without hash_on",
                    raw.name.get_ref()
                ),
                "add hash_on = \"client-ip\", { header = \"x-user\" }, { cookie = \"session\" } or { query = \"user\" }",
            );
        }
        if let (Some(h), false) = (&raw.hash_on, raw.balancer == BalancerKind::ConsistentHash) {
            self.r.error(
                &h.span(),
                "hash_on is only used by balancer = \"consistent-hash\"",
                "set balancer = \"consistent-hash\" or remove hash_on",
            );
        }
        if let (Some(a), Some(_)) = (&raw.response_timeout, &raw.per_try_timeout) {
            self.r.error(
                &a.span(),
                "response_timeout and per_try_timeout are the same setting",
                "keep per_try_timeout (response_timeout is its older name)",
            );
        }
        let per_try = raw
            .per_try_timeout
            .as_ref()
            .or(raw.response_timeout.as_ref());
        let per_try_timeout = self.duration(&per_try.cloned(), d.response);
        let protocol = raw.protocol;
        let tls = raw.tls.as_ref().map(|t| self.upstream_tls(t));
        match (&tls, protocol) {
            (None, UpstreamProtocol::H2) => self.r.error(
                &raw.name.span(),
                format!(
                    "upstream `{}` has protocol = \"h2\" but no [upstreams.tls] table",
                    raw.name.get_ref()
                ),
                "add [upstreams.tls] (HTTP/2 over TLS), or use protocol = \"h2c\" for cleartext HTTP/2",
            ),
            (Some(_), UpstreamProtocol::H2c) => self.r.error(
                &raw.name.span(),
                format!(
                    "upstream `{}` has protocol = \"h2c\" and a [upstreams.tls] table",
                    raw.name.get_ref()
                ),
                "use protocol = \"h2\" for HTTP/2 over TLS, or remove [upstreams.tls]",
            ),
            _ => {}
        }
        let panic_threshold = match &raw.panic_threshold {
            None => d.panic_threshold,
            Some(p) => self.percent(p, d.panic_threshold),
        };
        Some(UpstreamConfig {
            name: raw.name.get_ref().clone(),
            endpoints,
            protocol,
            balancer: raw.balancer,
            hash_on,
            dns_refresh: self.duration(&raw.dns_refresh, d.dns_refresh),
            connect_timeout: self.duration(&raw.connect_timeout, d.connect),
            per_try_timeout,
            request_timeout: raw
                .request_timeout
                .as_ref()
                .map(|t| self.duration(&Some(t.clone()), d.response)),
            pool_idle_timeout: self.duration(&raw.pool_idle_timeout, d.pool_idle),
            pool_max_idle_per_endpoint: self
                .count(&raw.pool_max_idle_per_endpoint, d.pool_max_idle),
            panic_threshold,
            health_check: raw.health_check.as_ref().map(|h| self.health_check(h)),
            outlier: raw
                .outlier
                .as_ref()
                .map(|o| self.outlier(o))
                .unwrap_or_default(),
            retry: raw
                .retry
                .as_ref()
                .map(|r| self.retry(r))
                .unwrap_or_default(),
            circuit_breaker: raw
                .circuit_breaker
                .as_ref()
                .map(|c| self.breaker(c))
                .unwrap_or_default(),
            tls: tls.flatten(),
        })
    }

    fn endpoint(&mut self, e: &S<RawEndpoint>) -> Option<EndpointConfig> {
        let (address, weight) = match e.get_ref() {
            RawEndpoint::Address(a) => (a, 1),
            RawEndpoint::Table(t) => (&t.address, t.weight.unwrap_or(1)),
        };
        if !(1..=10_000).contains(&weight) {
            self.r.error(
                &e.span(),
                format!("invalid weight {weight} for endpoint `{address}`"),
                "use a weight from 1 to 10000",
            );
            return None;
        }
        match address.parse::<http::uri::Authority>() {
            Ok(a) if a.port_u16().is_some() && !a.as_str().contains('@') => Some(EndpointConfig {
                address: a.to_string(),
                weight: weight as u32,
            }),
            _ => {
                self.r.error(
                    &e.span(),
                    format!("invalid endpoint `{address}`"),
                    "write host:port, e.g. \"127.0.0.1:8081\" or \"backend.internal:80\"",
                );
                None
            }
        }
    }

    fn hash_on(&mut self, h: &S<RawHashOn>) -> Option<HashOn> {
        let bad = |v: &mut Validator| {
            v.r.error(
                &h.span(),
                "invalid hash_on",
                "use \"client-ip\", { header = \"x-user\" }, { cookie = \"session\" } or { query = \"user\" } (exactly one key)",
            );
            None
        };
        match h.get_ref() {
            RawHashOn::Name(n) if n == "client-ip" => Some(HashOn::ClientIp),
            RawHashOn::Name(_) => bad(self),
            RawHashOn::Table(t) => match (&t.header, &t.cookie, &t.query) {
                (Some(name), None, None) => {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return bad(self);
                    }
                    Some(HashOn::Header(name.to_ascii_lowercase()))
                }
                (None, Some(c), None) if !c.is_empty() => Some(HashOn::Cookie(c.clone())),
                (None, None, Some(q)) if !q.is_empty() => Some(HashOn::Query(q.clone())),
                _ => bad(self),
            },
        }
    }

    fn percent(&mut self, p: &S<u64>, default: u8) -> u8 {
        match u8::try_from(*p.get_ref()) {
            Ok(v) if v <= 100 => v,
            _ => {
                self.r.error(
                    &p.span(),
                    format!("{} is not a percentage", p.get_ref()),
                    "use a number from 0 to 100",
                );
                default
            }
        }
    }

    fn count_u32(&mut self, v: &Option<S<u64>>, default: u32) -> u32 {
        u32::try_from(self.count(v, default as usize)).unwrap_or(u32::MAX)
    }

    fn health_check(&mut self, raw: &S<RawHealthCheck>) -> HealthCheck {
        let h = raw.get_ref();
        let path = match &h.path {
            None => "/".to_string(),
            Some(p) if p.get_ref().starts_with('/') && p.get_ref().parse::<http::Uri>().is_ok() => {
                p.get_ref().clone()
            }
            Some(p) => {
                self.r.error(
                    &p.span(),
                    format!("invalid health check path `{}`", p.get_ref()),
                    "write an absolute path such as \"/healthz\"",
                );
                "/".to_string()
            }
        };
        if h.kind == HealthCheckKind::Tcp {
            for (key, span) in [
                ("path", h.path.as_ref().map(|p| p.span())),
                ("host", h.host.as_ref().map(|p| p.span())),
                (
                    "expected_statuses",
                    h.expected_statuses.first().map(|p| p.span()),
                ),
            ] {
                if let Some(span) = span {
                    self.r.error(
                        &span,
                        format!("`{key}` has no effect on a TCP health check"),
                        "remove it, or set type = \"http\"",
                    );
                }
            }
        }
        let mut expected_statuses = Vec::new();
        for s in &h.expected_statuses {
            if (100..600).contains(s.get_ref()) {
                expected_statuses.push(*s.get_ref());
            } else {
                self.r.error(
                    &s.span(),
                    format!("invalid status {}", s.get_ref()),
                    "use statuses from 100 to 599",
                );
            }
        }
        let interval = self.duration(&h.interval, Duration::from_secs(5));
        let timeout = self.duration(&h.timeout, Duration::from_secs(1));
        if let (Some(t), true) = (&h.timeout, timeout > interval) {
            self.r.error(
                &t.span(),
                "health check timeout is longer than its interval",
                "make timeout at most the interval",
            );
        }
        let jitter = match &h.jitter {
            None => interval / 10,
            Some(j) if j.get_ref().trim() == "0s" || j.get_ref().trim() == "0" => Duration::ZERO,
            Some(_) => self.duration(&h.jitter, interval / 10),
        };
        HealthCheck {
            kind: h.kind,
            path,
            host: h.host.as_ref().map(|x| x.get_ref().clone()),
            expected_statuses,
            interval,
            timeout,
            jitter,
            healthy_threshold: self.count_u32(&h.healthy_threshold, 2),
            unhealthy_threshold: self.count_u32(&h.unhealthy_threshold, 3),
        }
    }

    fn outlier(&mut self, raw: &S<RawOutlier>) -> OutlierSettings {
        let o = raw.get_ref();
        let d = OutlierSettings::default();
        let base = self.duration(&o.base_ejection_time, d.base_ejection_time);
        let max = self.duration(&o.max_ejection_time, d.max_ejection_time.max(base));
        if let (Some(m), true) = (&o.max_ejection_time, max < base) {
            self.r.error(
                &m.span(),
                "max_ejection_time is shorter than base_ejection_time",
                "make max_ejection_time at least base_ejection_time",
            );
        }
        OutlierSettings {
            consecutive_5xx: self.count_u32(&o.consecutive_5xx, d.consecutive_5xx),
            consecutive_connect_failures: self.count_u32(
                &o.consecutive_connect_failures,
                d.consecutive_connect_failures,
            ),
            base_ejection_time: base,
            max_ejection_time: max,
            max_ejection_percent: o
                .max_ejection_percent
                .as_ref()
                .map_or(d.max_ejection_percent, |p| {
                    self.percent(p, d.max_ejection_percent)
                }),
        }
    }

    fn retry_on(&mut self, list: &[S<String>]) -> RetryOn {
        let mut on = RetryOn {
            connect_failure: false,
            reset: false,
            timeout: false,
            statuses: Vec::new(),
        };
        for item in list {
            match item.get_ref().as_str() {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "timeout" => on.timeout = true,
                "5xx" => on.statuses.extend(500..600),
                "gateway-error" => on.statuses.extend([502, 503, 504]),
                s => match s.parse::<u16>() {
                    Ok(code) if (500..600).contains(&code) => on.statuses.push(code),
                    _ => self.r.error(
                        &item.span(),
                        format!("unknown retry condition `{s}`"),
                        format!("use {RETRY_ON}"),
                    ),
                },
            }
        }
        on.statuses.sort_unstable();
        on.statuses.dedup();
        on
    }

    fn methods(&mut self, list: &[S<String>]) -> Vec<Method> {
        let mut out = Vec::new();
        for m in list {
            let upper = m.get_ref().to_ascii_uppercase();
            match Method::from_bytes(upper.as_bytes()) {
                Ok(method) if !upper.is_empty() && upper != "CONNECT" => out.push(method),
                _ => self.r.error(
                    &m.span(),
                    format!("invalid retry method `{}`", m.get_ref()),
                    "use HTTP methods such as \"GET\" or \"POST\"",
                ),
            }
        }
        out
    }

    fn max_retries(&mut self, v: &S<u64>) -> u32 {
        match u32::try_from(*v.get_ref()) {
            Ok(n) if n <= 10 => n,
            _ => {
                self.r.error(
                    &v.span(),
                    format!("max_retries {} is above 10", v.get_ref()),
                    "use 0 to 10; the retry budget, not this number, is what stops retry storms",
                );
                1
            }
        }
    }

    fn retry(&mut self, raw: &S<RawRetry>) -> RetryPolicy {
        let r = raw.get_ref();
        let d = RetryPolicy::default();
        let backoff_base = self.duration(&r.backoff_base, d.backoff_base);
        let backoff_max = self.duration(&r.backoff_max, d.backoff_max.max(backoff_base));
        if let (Some(m), true) = (&r.backoff_max, backoff_max < backoff_base) {
            self.r.error(
                &m.span(),
                "backoff_max is shorter than backoff_base",
                "make backoff_max at least backoff_base",
            );
        }
        RetryPolicy {
            max_retries: r
                .max_retries
                .as_ref()
                .map_or(d.max_retries, |v| self.max_retries(v)),
            on: r.on.as_ref().map_or(d.on.clone(), |l| self.retry_on(l)),
            methods: r
                .methods
                .as_ref()
                .map_or(d.methods.clone(), |l| self.methods(l)),
            backoff_base,
            backoff_max,
            budget_percent: r
                .budget_percent
                .as_ref()
                .map_or(d.budget_percent, |p| u32::from(self.percent(p, 20))),
            min_retry_concurrency: r
                .min_retry_concurrency
                .as_ref()
                .map_or(d.min_retry_concurrency, |v| {
                    u32::try_from(*v.get_ref()).unwrap_or(u32::MAX)
                }),
        }
    }

    fn breaker(&mut self, raw: &S<RawCircuitBreaker>) -> CircuitBreaker {
        let c = raw.get_ref();
        let d = CircuitBreaker::default();
        CircuitBreaker {
            max_connections: self.count(&c.max_connections, d.max_connections),
            max_pending: self.count(&c.max_pending, d.max_pending),
            max_requests: self.count(&c.max_requests, d.max_requests),
        }
    }

    fn upstream_tls(&mut self, raw: &S<RawUpstreamTls>) -> Option<UpstreamTls> {
        let location = self.r.locate(&raw.span());
        let t = raw.get_ref();
        match (&t.cert, &t.key) {
            (Some(c), None) => {
                self.r.error(
                    &c.span(),
                    "client certificate without a key",
                    "add key = \"<file>\" next to cert, or remove cert",
                );
                return None;
            }
            (None, Some(k)) => {
                self.r.error(
                    &k.span(),
                    "client key without a certificate",
                    "add cert = \"<file>\" next to key, or remove key",
                );
                return None;
            }
            _ => {}
        }
        if let (true, Some(ca)) = (t.insecure_skip_verify, &t.ca) {
            self.r.error(
                &ca.span(),
                "ca has no effect with insecure_skip_verify = true",
                "remove one of them (prefer keeping ca and verifying)",
            );
        }
        let sni = t.sni.as_ref().and_then(|s| {
            let ok = rustls::pki_types::ServerName::try_from(s.get_ref().as_str()).is_ok();
            if !ok {
                self.r.error(
                    &s.span(),
                    format!("invalid sni `{}`", s.get_ref()),
                    "use a DNS name such as \"api.internal\" or an IP address",
                );
            }
            ok.then(|| s.get_ref().clone())
        });
        Some(UpstreamTls {
            ca: t.ca.as_ref().map(|p| self.base.join(p.get_ref())),
            sni,
            cert: t.cert.as_ref().map(|p| self.base.join(p.get_ref())),
            key: t.key.as_ref().map(|p| self.base.join(p.get_ref())),
            insecure_skip_verify: t.insecure_skip_verify,
            location,
        })
    }

    /// A route's `per_try_timeout`, `request_timeout` and `[routes.retry]`.
    pub(super) fn route_upstream_policy(&mut self, raw: &RawRoute) -> RouteUpstreamPolicy {
        let d = Duration::from_secs(30);
        let mut p = RouteUpstreamPolicy {
            per_try_timeout: raw
                .per_try_timeout
                .as_ref()
                .map(|t| self.duration(&Some(t.clone()), d)),
            request_timeout: raw
                .request_timeout
                .as_ref()
                .map(|t| self.duration(&Some(t.clone()), d)),
            ..RouteUpstreamPolicy::default()
        };
        if let Some(r) = &raw.retry {
            let r = r.get_ref();
            p.max_retries = r.max_retries.as_ref().map(|v| self.max_retries(v));
            p.retry_on = r.on.as_ref().map(|l| self.retry_on(l));
            p.retry_methods = r.methods.as_ref().map(|l| self.methods(l));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use crate::config::*;
    use std::path::Path;
    use std::time::Duration;

    const FULL: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"

[[upstreams]]
name = "u"
endpoints = ["10.0.0.1:80", { address = "backend.internal:8080", weight = 3 }]
balancer = "consistent-hash"
hash_on = { cookie = "session" }
response_timeout = "2s"
request_timeout = "5s"
panic_threshold = 0
[upstreams.health_check]
type = "http"
path = "/healthz"
expected_statuses = [200, 204]
interval = "2s"
[upstreams.outlier]
consecutive_5xx = 3
[upstreams.retry]
on = ["gateway-error", "timeout"]
methods = ["get", "POST"]
[upstreams.circuit_breaker]
max_requests = 10

[[routes]]
name = "r"
upstream = "u"
per_try_timeout = "1s"
retry = { max_retries = 0 }
"#;

    #[test]
    fn full_upstream_table() {
        let c = parse(Path::new("x.toml"), FULL).unwrap_or_else(|e| panic!("{e}"));
        let u = &c.upstreams[0];
        assert_eq!(u.endpoints[1].address, "backend.internal:8080");
        assert_eq!(u.endpoints[1].weight, 3);
        assert_eq!(u.endpoints[0].weight, 1);
        assert_eq!(u.balancer, BalancerKind::ConsistentHash);
        assert_eq!(u.hash_on, Some(HashOn::Cookie("session".into())));
        assert_eq!(u.per_try_timeout, Duration::from_secs(2));
        assert_eq!(u.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(u.panic_threshold, 0);
        let hc = u
            .health_check
            .as_ref()
            .unwrap_or_else(|| panic!("no health check"));
        assert_eq!(hc.expected_statuses, vec![200, 204]);
        assert_eq!(hc.jitter, Duration::from_millis(200));
        assert_eq!(hc.unhealthy_threshold, 3);
        assert_eq!(u.outlier.consecutive_5xx, 3);
        assert_eq!(u.outlier.consecutive_connect_failures, 5);
        assert_eq!(u.retry.on.statuses, vec![502, 503, 504]);
        assert!(u.retry.on.timeout && !u.retry.on.connect_failure);
        assert_eq!(u.retry.methods, vec![http::Method::GET, http::Method::POST]);
        assert_eq!(u.retry.max_retries, 1);
        assert_eq!(u.circuit_breaker.max_requests, 10);
        assert_eq!(u.circuit_breaker.max_connections, 1024);
        let RouteAction::Forward(f) = &c.routes[0].action else {
            panic!("not a forward route")
        };
        assert_eq!(
            f.upstream_policy.per_try_timeout,
            Some(Duration::from_secs(1))
        );
        assert_eq!(f.upstream_policy.max_retries, Some(0));
        assert_eq!(f.upstream_policy.retry_on, None);
    }

    #[test]
    fn defaults_match_the_docs() {
        let src = "[[listeners]]\nname = \"m\"\naddress = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"a:1\"]\n";
        let c = parse(Path::new("x.toml"), src).unwrap_or_else(|e| panic!("{e}"));
        let u = &c.upstreams[0];
        assert_eq!(u.balancer, BalancerKind::RoundRobin);
        assert_eq!(u.dns_refresh, Duration::from_secs(5));
        assert_eq!(u.connect_timeout, Duration::from_secs(5));
        assert_eq!(u.per_try_timeout, Duration::from_secs(30));
        assert_eq!(u.request_timeout, None);
        assert_eq!(u.panic_threshold, 50);
        assert!(u.health_check.is_none() && u.tls.is_none());
        assert_eq!(u.retry, RetryPolicy::default());
        assert_eq!(u.outlier, OutlierSettings::default());
        assert_eq!(u.circuit_breaker, CircuitBreaker::default());
    }
}
