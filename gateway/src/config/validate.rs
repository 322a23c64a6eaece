//! Raw TOML structs → the validated model. Every problem is collected, none
//! stops the others from being found.

use super::error::{whole_file, ConfigErrors, Reporter};
use super::model::*;
use super::raw::*;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod upstream;

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        whole_file(
            path,
            format!("cannot read config file: {e}"),
            "check the path given to --config and its permissions",
        )
    })?;
    parse(path, &source)
}

/// Validates config text that came from `path` (used for messages and for
/// resolving relative certificate paths).
pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigErrors> {
    let mut r = Reporter::new(path, source);
    let raw: RawConfig = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().trim().replace('\n', " ");
            r.error(&span, message, syntax_fix(e.message()));
            return Err(r.finish().err().unwrap_or_else(|| ConfigErrors(Vec::new())));
        }
    };
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut v = Validator {
        r,
        base,
        plugin_names: HashSet::new(),
    };
    let config = v.config(raw, path);
    v.r.finish()?;
    Ok(config)
}

fn syntax_fix(message: &str) -> &'static str {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; see docs/config.md"
    } else if message.contains("unknown variant") {
        "use one of the values listed"
    } else if message.contains("missing field") {
        "add the required key"
    } else if message.contains("invalid type") {
        "give the value the type shown in docs/config.md"
    } else {
        "fix the TOML syntax at this place"
    }
}

struct Validator {
    r: Reporter,
    base: PathBuf,
    plugin_names: HashSet<String>,
}

impl Validator {
    fn config(&mut self, raw: RawConfig, path: &Path) -> Config {
        let admin = raw.admin.and_then(|a| {
            let a = a.into_inner();
            self.socket_addr(&a.address)
                .map(|address| AdminConfig { address })
        });
        let level = match &raw.log.level {
            Some(level) => {
                if tracing_subscriber::EnvFilter::try_new(level.get_ref()).is_err() {
                    self.r.error(
                        &level.span(),
                        format!("invalid log level `{}`", level.get_ref()),
                        "use trace, debug, info, warn, error or a tracing filter such as `wasmgate=debug`",
                    );
                }
                level.get_ref().clone()
            }
            None => "info".to_string(),
        };
        let log = LogConfig {
            format: raw.log.format.unwrap_or_default(),
            level,
            access_log: raw.log.access_log.unwrap_or(true),
        };
        let shutdown_grace = self.duration(&raw.shutdown_grace, Duration::from_secs(30));

        let mut plugins = Vec::new();
        for p in raw.plugins {
            if let Some(p) = self.plugin(p) {
                plugins.push(p);
            }
        }
        let global_plugins = self.plugin_refs(&raw.global_plugins);
        let plugin_cache_dir = raw.plugin_cache_dir.map(|d| self.base.join(d.get_ref()));
        let plugin_instance_slots = self.instance_slots(&raw.plugin_instance_slots);

        let listeners: Vec<ListenerConfig> = raw
            .listeners
            .into_iter()
            .filter_map(|l| self.listener(l))
            .collect();
        self.unique_listeners(&listeners, admin.as_ref());

        let upstreams: Vec<UpstreamConfig> = raw
            .upstreams
            .into_iter()
            .filter_map(|u| self.upstream(u))
            .collect();

        let listener_names: HashSet<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let upstream_names: HashSet<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
        let mut route_names = HashMap::new();
        let mut routes = Vec::new();
        for route in raw.routes {
            let span = route.get_ref().name.span();
            let name = route.get_ref().name.get_ref().clone();
            if route_names.insert(name.clone(), ()).is_some() {
                self.r.error(
                    &span,
                    format!("duplicate route name `{name}`"),
                    "give every route a unique name",
                );
            }
            if let Some(route) = self.route(route, &listener_names, &upstream_names) {
                routes.push(route);
            }
        }
        if listeners.is_empty() && !self.r.has_errors() {
            self.r.error(
                &(0..0),
                "no listeners configured",
                "add a [[listeners]] table with a name and an address",
            );
        }

        Config {
            source: path.to_path_buf(),
            admin,
            log,
            shutdown_grace,
            listeners,
            upstreams,
            routes,
            plugins,
            global_plugins,
            plugin_cache_dir,
            plugin_instance_slots,
        }
    }

    fn instance_slots(&mut self, v: &Option<S<u64>>) -> u32 {
        use crate::plugin::{DEFAULT_INSTANCE_SLOTS, MAX_INSTANCE_SLOTS};
        match v {
            Some(n) if *n.get_ref() > u64::from(MAX_INSTANCE_SLOTS) => {
                self.r.error(
                    &n.span(),
                    format!("plugin_instance_slots {} is above {MAX_INSTANCE_SLOTS}", n.get_ref()),
                    format!("each slot reserves about 4 GiB of address space (not memory); use at most {MAX_INSTANCE_SLOTS}"),
                );
                DEFAULT_INSTANCE_SLOTS
            }
            _ => u32::try_from(self.count(v, DEFAULT_INSTANCE_SLOTS as usize))
                .unwrap_or(DEFAULT_INSTANCE_SLOTS),
        }
    }

    fn plugin(&mut self, raw: S<RawPlugin>) -> Option<PluginConfig> {
        let location = self.r.locate(&raw.span());
        let raw = raw.into_inner();
        self.name(&raw.name, "plugin");
        let name = raw.name.get_ref().clone();
        if !self.plugin_names.insert(name.clone()) {
            self.r.error(
                &raw.name.span(),
                format!("duplicate plugin name `{name}`"),
                "give every plugin a unique name",
            );
        }
        let failure_status = match &raw.failure_status {
            None => StatusCode::INTERNAL_SERVER_ERROR,
            Some(s) => match StatusCode::from_u16(*s.get_ref()) {
                Ok(code) if (400..600).contains(&code.as_u16()) => code,
                _ => {
                    self.r.error(
                        &s.span(),
                        format!("invalid failure_status {}", s.get_ref()),
                        "use an error status from 400 to 599, e.g. 500 or 503",
                    );
                    StatusCode::INTERNAL_SERVER_ERROR
                }
            },
        };
        let memory_limit_bytes = self.count(&raw.memory_limit_bytes, 32 << 20);
        if let Some(m) = &raw.memory_limit_bytes {
            if memory_limit_bytes > 256 << 20 {
                self.r.error(
                    &m.span(),
                    "memory_limit_bytes is above 256 MiB, the engine's cap",
                    "use at most 268435456",
                );
            }
        }
        Some(PluginConfig {
            name,
            path: self.base.join(raw.path.get_ref()),
            failure: raw.failure,
            failure_status,
            isolation: raw.isolation,
            memory_limit_bytes,
            cpu_limit: self.duration(&raw.cpu_limit, Duration::from_millis(50)),
            max_output_bytes: self.count(&raw.max_output_bytes, 1 << 20),
            max_instance_uses: self.count(&raw.max_instance_uses, 100_000) as u64,
            max_body_bytes: self.count(&raw.max_body_bytes, 1 << 20),
            location,
        })
    }

    fn plugin_refs(&mut self, refs: &[S<RawPluginRef>]) -> Vec<PluginRef> {
        let mut out = Vec::new();
        for r in refs {
            let location = self.r.locate(&r.span());
            let raw = r.get_ref();
            let plugin = raw.plugin.get_ref();
            if !self.plugin_names.contains(plugin) {
                self.r.error(
                    &raw.plugin.span(),
                    format!("unknown plugin `{plugin}`"),
                    "use the name of a [[plugins]] entry, or add one",
                );
                continue;
            }
            let config_json = match &raw.config {
                None => "{}".to_string(),
                Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "{}".to_string()),
            };
            out.push(PluginRef {
                plugin: plugin.clone(),
                config_json,
                location,
            });
        }
        out
    }

    fn socket_addr(&mut self, s: &S<String>) -> Option<SocketAddr> {
        match s.get_ref().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.r.error(
                    &s.span(),
                    format!("invalid socket address `{}`", s.get_ref()),
                    "write an IP and a port, e.g. \"0.0.0.0:8080\" or \"[::]:8443\"",
                );
                None
            }
        }
    }

    fn duration(&mut self, s: &Option<S<String>>, default: Duration) -> Duration {
        let Some(s) = s else { return default };
        match humantime::parse_duration(s.get_ref()) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.r.error(
                    &s.span(),
                    "duration must be greater than zero",
                    "e.g. \"10s\" or \"500ms\"",
                );
                default
            }
            Err(e) => {
                self.r.error(
                    &s.span(),
                    format!("invalid duration `{}`: {e}", s.get_ref()),
                    "write a number with a unit, e.g. \"10s\", \"500ms\" or \"2m\"",
                );
                default
            }
        }
    }

    fn count(&mut self, v: &Option<S<u64>>, default: usize) -> usize {
        match v {
            None => default,
            Some(v) if *v.get_ref() == 0 => {
                self.r
                    .error(&v.span(), "must be at least 1", "give a positive number");
                default
            }
            Some(v) => usize::try_from(*v.get_ref()).unwrap_or(usize::MAX),
        }
    }

    fn listener(&mut self, raw: S<RawListener>) -> Option<ListenerConfig> {
        let location = self.r.locate(&raw.span());
        let raw = raw.into_inner();
        self.name(&raw.name, "listener");
        let address = self.socket_addr(&raw.address);
        let tls = raw.tls.map(|t| self.tls(t));
        let limits = self.limits(&raw.limits);
        let tls = match tls {
            Some(t) => Some(t?),
            None => None,
        };
        let plugins = self.plugin_refs(&raw.plugins);
        Some(ListenerConfig {
            name: raw.name.into_inner(),
            address: address?,
            tls,
            trust_forwarded: raw.trust_forwarded,
            limits,
            plugins,
            location,
        })
    }

    fn name(&mut self, name: &S<String>, what: &str) {
        let n = name.get_ref();
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            self.r.error(
                &name.span(),
                format!("invalid {what} name `{n}`"),
                "use letters, digits, '-', '_' and '.' only",
            );
        }
    }

    fn tls(&mut self, raw: S<RawTls>) -> Option<TlsConfig> {
        let span = raw.span();
        let raw = raw.into_inner();
        if raw.certificates.is_empty() {
            self.r.error(
                &span,
                "TLS listener has no certificates",
                "add [[listeners.tls.certificates]] with cert and key",
            );
            return None;
        }
        let mut certificates = Vec::new();
        let mut defaults = 0;
        for c in raw.certificates {
            let location = self.r.locate(&c.span());
            let c = c.into_inner();
            if c.default {
                defaults += 1;
                if defaults == 2 {
                    self.r.push(
                        location.clone(),
                        "more than one certificate is marked default",
                        "mark exactly one certificate `default = true`",
                    );
                }
            }
            let mut server_names = Vec::new();
            for n in &c.server_names {
                match normalise_host(n.get_ref()) {
                    Some(h) => server_names.push(h),
                    None => self.r.error(
                        &n.span(),
                        format!("invalid server name `{}`", n.get_ref()),
                        "use a DNS name such as \"api.example.com\" or \"*.example.com\"",
                    ),
                }
            }
            certificates.push(CertConfig {
                cert: self.base.join(c.cert.get_ref()),
                key: self.base.join(c.key.get_ref()),
                server_names,
                default: c.default,
                location,
            });
        }
        Some(TlsConfig { certificates })
    }

    fn limits(&mut self, raw: &RawLimits) -> Limits {
        let d = Limits::default();
        let max_header_bytes = self.count(&raw.max_header_bytes, d.max_header_bytes);
        if let Some(v) = &raw.max_header_bytes {
            if max_header_bytes < 8192 {
                self.r.error(
                    &v.span(),
                    "max_header_bytes must be at least 8192",
                    "raise it to 8192 or more",
                );
            }
        }
        Limits {
            first_byte_timeout: self.duration(&raw.first_byte_timeout, d.first_byte_timeout),
            tls_handshake_timeout: self
                .duration(&raw.tls_handshake_timeout, d.tls_handshake_timeout),
            header_read_timeout: self.duration(&raw.header_read_timeout, d.header_read_timeout),
            idle_timeout: self.duration(&raw.idle_timeout, d.idle_timeout),
            body_read_timeout: self.duration(&raw.body_read_timeout, d.body_read_timeout),
            max_header_bytes,
            max_headers: self.count(&raw.max_headers, d.max_headers),
            max_request_line_bytes: self
                .count(&raw.max_request_line_bytes, d.max_request_line_bytes),
            max_body_bytes: raw
                .max_body_bytes
                .as_ref()
                .map_or(d.max_body_bytes, |v| *v.get_ref()),
            max_connections: self.count(&raw.max_connections, d.max_connections),
            max_connections_per_ip: self
                .count(&raw.max_connections_per_ip, d.max_connections_per_ip),
            h2_max_concurrent_streams: u32::try_from(self.count(
                &raw.h2_max_concurrent_streams,
                d.h2_max_concurrent_streams as usize,
            ))
            .unwrap_or(u32::MAX),
        }
    }

    fn unique_listeners(&mut self, listeners: &[ListenerConfig], admin: Option<&AdminConfig>) {
        let mut names: HashMap<&str, ()> = HashMap::new();
        let mut addrs: HashMap<SocketAddr, &str> = HashMap::new();
        if let Some(a) = admin {
            addrs.insert(a.address, "admin");
        }
        for l in listeners {
            if names.insert(&l.name, ()).is_some() {
                self.r.push(
                    l.location.clone(),
                    format!("duplicate listener name `{}`", l.name),
                    "give every listener a unique name",
                );
            }
            if l.address.port() != 0 {
                if let Some(other) = addrs.insert(l.address, &l.name) {
                    self.r.push(
                        l.location.clone(),
                        format!(
                            "listener `{}` uses address {} already used by `{other}`",
                            l.name, l.address
                        ),
                        "give each listener (and the admin listener) its own port",
                    );
                }
            }
        }
    }

    fn route(
        &mut self,
        raw: S<RawRoute>,
        listeners: &HashSet<&str>,
        upstreams: &HashSet<&str>,
    ) -> Option<RouteConfig> {
        let span = raw.span();
        let location = self.r.locate(&span);
        let raw = raw.into_inner();
        self.name(&raw.name, "route");
        let name = raw.name.get_ref().clone();
        for l in &raw.listeners {
            if !listeners.contains(l.get_ref().as_str()) {
                self.r.error(
                    &l.span(),
                    format!("route `{name}` names unknown listener `{}`", l.get_ref()),
                    "use the name of a [[listeners]] entry",
                );
            }
        }
        let mut hosts = Vec::new();
        for h in &raw.hosts {
            match normalise_host(h.get_ref()) {
                Some(n) if n.starts_with("*.") => hosts.push(HostMatch::Suffix(n[1..].to_string())),
                Some(n) => hosts.push(HostMatch::Exact(n)),
                None => self.r.error(&h.span(), format!("invalid host `{}`", h.get_ref()), "use a host name such as \"api.example.com\" or \"*.example.com\" (no port, no scheme)"),
            }
        }
        let path = self.path_match(&raw);
        let mut methods = Vec::new();
        for m in &raw.methods {
            match Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => self.r.error(
                    &m.span(),
                    format!("invalid method `{}`", m.get_ref()),
                    "use an HTTP method such as GET or POST",
                ),
            }
        }
        let headers = raw
            .headers
            .iter()
            .filter_map(|m| self.value_match(m, true))
            .collect();
        let query = raw
            .query
            .iter()
            .filter_map(|m| self.value_match(m, false))
            .collect();

        let action = match (&raw.upstream, &raw.direct_response) {
            (Some(_), Some(d)) => {
                self.r.error(
                    &d.span(),
                    format!("route `{name}` has both upstream and direct_response"),
                    "keep one of them",
                );
                None
            }
            (None, Some(d)) => self.direct(d),
            (Some(u), None) => {
                if !upstreams.contains(u.get_ref().as_str()) {
                    self.r.error(
                        &u.span(),
                        format!("route `{name}` names unknown upstream `{}`", u.get_ref()),
                        "use the name of an [[upstreams]] entry, or add one",
                    );
                }
                self.forward(&raw, u, path.as_ref())
            }
            (None, None) => {
                self.r.error(
                    &span,
                    format!("route `{name}` has neither upstream nor direct_response"),
                    "add upstream = \"<name>\" or a [routes.direct_response] table",
                );
                None
            }
        };
        if matches!(action, Some(RouteAction::Direct(_))) {
            for (key, v) in [
                ("strip_prefix", &raw.strip_prefix),
                ("rewrite_path", &raw.rewrite_path),
                ("host_rewrite", &raw.host_rewrite),
                ("per_try_timeout", &raw.per_try_timeout),
                ("request_timeout", &raw.request_timeout),
            ] {
                if let Some(v) = v {
                    self.r.error(
                        &v.span(),
                        format!("{key} has no effect on a direct_response route"),
                        format!("remove {key}"),
                    );
                }
            }
            if let Some(r) = &raw.retry {
                self.r.error(
                    &r.span(),
                    "retry has no effect on a direct_response route",
                    "remove [routes.retry]",
                );
            }
        }
        let request_headers = self.header_ops(&raw.request_headers);
        let response_headers = self.header_ops(&raw.response_headers);
        let plugins = self.plugin_refs(&raw.plugins);
        Some(RouteConfig {
            name,
            listeners: raw.listeners.into_iter().map(|l| l.into_inner()).collect(),
            hosts,
            path: path?,
            methods,
            headers,
            query,
            action: action?,
            request_headers,
            response_headers,
            plugins,
            location,
        })
    }

    fn path_match(&mut self, raw: &RawRoute) -> Option<PathMatch> {
        let given: Vec<&S<String>> = [&raw.path, &raw.path_prefix, &raw.path_pattern]
            .into_iter()
            .flatten()
            .collect();
        if given.len() > 1 {
            self.r.error(
                &given[1].span(),
                "a route takes only one of path, path_prefix and path_pattern",
                "keep one; add another route for the other paths",
            );
            return None;
        }
        for p in &given {
            if !p.get_ref().starts_with('/') {
                self.r.error(
                    &p.span(),
                    format!("path `{}` does not start with '/'", p.get_ref()),
                    "begin the path with '/'",
                );
                return None;
            }
        }
        if let Some(p) = &raw.path {
            return Some(PathMatch::Exact(p.get_ref().clone()));
        }
        if let Some(p) = &raw.path_pattern {
            return match parse_pattern(p.get_ref()) {
                Ok(pattern) => Some(PathMatch::Pattern(pattern)),
                Err(msg) => {
                    self.r.error(&p.span(), format!("invalid path_pattern `{}`: {msg}", p.get_ref()), "write literal segments and {name} or a final {*rest}, e.g. \"/users/{id}/posts/{*rest}\"");
                    None
                }
            };
        }
        let prefix = raw
            .path_prefix
            .as_ref()
            .map_or("/", |p| p.get_ref().as_str());
        Some(PathMatch::Prefix(normalise_prefix(prefix)))
    }

    fn value_match(&mut self, m: &S<RawValueMatch>, header: bool) -> Option<ValueMatch> {
        let raw = m.get_ref();
        let name = raw.name.get_ref();
        if header && HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.r.error(
                &raw.name.span(),
                format!("invalid header name `{name}`"),
                "use a token such as \"x-api-version\"",
            );
            return None;
        }
        let kinds = usize::from(raw.exact.is_some())
            + usize::from(raw.regex.is_some())
            + usize::from(raw.present.is_some());
        if kinds != 1 {
            self.r.error(
                &m.span(),
                format!("matcher for `{name}` needs exactly one of exact, regex, present"),
                "e.g. { name = \"x-env\", exact = \"prod\" }",
            );
            return None;
        }
        let kind = if let Some(e) = &raw.exact {
            ValueMatchKind::Exact(e.clone())
        } else if let Some(re) = &raw.regex {
            match regex::Regex::new(&format!("^(?:{})$", re.get_ref())) {
                Ok(r) => ValueMatchKind::Regex(r),
                Err(e) => {
                    let msg = e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_string();
                    self.r.error(&re.span(), format!("invalid regex `{}`: {msg}", re.get_ref()), "fix the regular expression (Rust regex syntax; it must match the whole value)");
                    return None;
                }
            }
        } else if raw.present == Some(true) {
            ValueMatchKind::Present
        } else {
            self.r.error(
                &m.span(),
                "`present = false` is not supported",
                "use present = true, or remove the matcher",
            );
            return None;
        };
        let name = if header {
            name.to_ascii_lowercase()
        } else {
            name.clone()
        };
        Some(ValueMatch { name, kind })
    }

    fn direct(&mut self, d: &S<RawDirectResponse>) -> Option<RouteAction> {
        let d = d.get_ref();
        let status = match StatusCode::from_u16(*d.status.get_ref()) {
            Ok(s) if s.as_u16() >= 200 => s,
            _ => {
                self.r.error(
                    &d.status.span(),
                    format!("invalid status {}", d.status.get_ref()),
                    "use a final status from 200 to 599",
                );
                return None;
            }
        };
        Some(RouteAction::Direct(DirectResponse {
            status,
            body: d.body.clone(),
            content_type: d
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".into()),
        }))
    }

    fn forward(
        &mut self,
        raw: &RawRoute,
        upstream: &S<String>,
        path: Option<&PathMatch>,
    ) -> Option<RouteAction> {
        if let (Some(s), Some(_)) = (&raw.strip_prefix, &raw.rewrite_path) {
            self.r.error(
                &s.span(),
                "strip_prefix and rewrite_path cannot be combined",
                "use rewrite_path alone, with params from path_pattern",
            );
            return None;
        }
        let strip_prefix = raw.strip_prefix.as_ref().and_then(|s| {
            let p = s.get_ref();
            if !p.starts_with('/') {
                self.r.error(
                    &s.span(),
                    format!("strip_prefix `{p}` does not start with '/'"),
                    "begin it with '/'",
                );
                return None;
            }
            let p = normalise_prefix(p);
            let covered = match path {
                Some(PathMatch::Prefix(pre)) | Some(PathMatch::Exact(pre)) => {
                    prefix_covers(&p, pre)
                }
                Some(PathMatch::Pattern(pat)) => prefix_covers(&p, &literal_prefix(pat)),
                None => true,
            };
            if !covered {
                self.r.error(
                    &s.span(),
                    format!("strip_prefix `{p}` is not a prefix of every path this route matches"),
                    "make it equal to (or a parent of) the route's path_prefix",
                );
            }
            Some(p)
        });
        let rewrite_path = raw.rewrite_path.as_ref().and_then(|t| {
            let params: Vec<&str> = match path {
                Some(PathMatch::Pattern(p)) => p
                    .segments
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Param(n) | Segment::Rest(n) => Some(n.as_str()),
                        Segment::Literal(_) => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            match check_template(t.get_ref(), &params) {
                Ok(()) => Some(t.get_ref().clone()),
                Err(msg) => {
                    self.r.error(
                        &t.span(),
                        format!("invalid rewrite_path `{}`: {msg}", t.get_ref()),
                        "start with '/' and use only {params} captured by path_pattern",
                    );
                    None
                }
            }
        });
        let host_rewrite = raw.host_rewrite.as_ref().and_then(|h| {
            match h.get_ref().parse::<http::uri::Authority>() {
                Ok(_) => Some(h.get_ref().clone()),
                Err(_) => {
                    self.r.error(
                        &h.span(),
                        format!("invalid host_rewrite `{}`", h.get_ref()),
                        "write a host or host:port",
                    );
                    None
                }
            }
        });
        let upstream_policy = self.route_upstream_policy(raw);
        Some(RouteAction::Forward(ForwardAction {
            upstream: upstream.get_ref().clone(),
            strip_prefix,
            rewrite_path,
            host_rewrite,
            upstream_policy,
        }))
    }

    fn header_ops(&mut self, raw: &RawHeaderOps) -> HeaderOps {
        let mut ops = HeaderOps::default();
        for (map, out) in [(&raw.set, &mut ops.set), (&raw.add, &mut ops.add)] {
            for (name, value) in map {
                let n = HeaderName::from_bytes(name.as_bytes());
                let v = HeaderValue::from_str(value.get_ref());
                match (n, v) {
                    (Ok(n), Ok(v)) => out.push((n, v)),
                    (Err(_), _) => self.r.error(
                        &value.span(),
                        format!("invalid header name `{name}`"),
                        "use a token such as \"x-team\"",
                    ),
                    (_, Err(_)) => self.r.error(
                        &value.span(),
                        format!("invalid value for header `{name}`"),
                        "use visible ASCII characters only",
                    ),
                }
            }
        }
        for name in &raw.remove {
            match HeaderName::from_bytes(name.get_ref().as_bytes()) {
                Ok(n) => ops.remove.push(n),
                Err(_) => self.r.error(
                    &name.span(),
                    format!("invalid header name `{}`", name.get_ref()),
                    "use a token such as \"x-internal\"",
                ),
            }
        }
        ops
    }
}

struct UpstreamDefaults {
    connect: Duration,
    response: Duration,
    pool_idle: Duration,
    pool_max_idle: usize,
    dns_refresh: Duration,
    panic_threshold: u8,
}

impl Default for UpstreamDefaults {
    fn default() -> Self {
        UpstreamDefaults {
            connect: Duration::from_secs(5),
            response: Duration::from_secs(30),
            pool_idle: Duration::from_secs(90),
            pool_max_idle: 64,
            dns_refresh: Duration::from_secs(5),
            panic_threshold: 50,
        }
    }
}

/// Lower-cases a host name and checks it is a DNS name, optionally with a
/// leading `*.` label.
fn normalise_host(h: &str) -> Option<String> {
    let h = h.to_ascii_lowercase();
    let rest = h.strip_prefix("*.").unwrap_or(&h);
    let ok = !rest.is_empty()
        && rest.len() <= 253
        && rest.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        });
    ok.then_some(h)
}

/// `/api/` and `/api` are the same segment-aware prefix; `/` stays `/`.
fn normalise_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_string()
    } else {
        t.to_string()
    }
}

/// Whether segment-aware `prefix` covers every path under `path`.
fn prefix_covers(prefix: &str, path: &str) -> bool {
    prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
}

/// The literal segments of a pattern before its first parameter, as a path.
pub fn literal_prefix(p: &PathPattern) -> String {
    let mut out = String::new();
    for s in &p.segments {
        match s {
            Segment::Literal(l) => {
                out.push('/');
                out.push_str(l);
            }
            _ => break,
        }
    }
    if out.is_empty() {
        "/".into()
    } else {
        out
    }
}

fn parse_pattern(src: &str) -> Result<PathPattern, String> {
    let mut segments = Vec::new();
    let mut names = HashSet::new();
    let parts: Vec<&str> = src[1..].split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if let Some(inner) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            let (rest, name) = match inner.strip_prefix('*') {
                Some(n) => (true, n),
                None => (false, inner),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad parameter name `{inner}`"));
            }
            if !names.insert(name.to_string()) {
                return Err(format!("parameter `{name}` appears twice"));
            }
            if rest && i + 1 != parts.len() {
                return Err("{*rest} may only be the last segment".into());
            }
            segments.push(if rest {
                Segment::Rest(name.into())
            } else {
                Segment::Param(name.into())
            });
        } else if part.contains('{') || part.contains('}') {
            return Err(format!(
                "segment `{part}` mixes text and a parameter; a parameter must be a whole segment"
            ));
        } else {
            segments.push(Segment::Literal((*part).to_string()));
        }
    }
    Ok(PathPattern {
        source: src.to_string(),
        segments,
    })
}

fn check_template(t: &str, params: &[&str]) -> Result<(), String> {
    if !t.starts_with('/') {
        return Err("must start with '/'".into());
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or("unclosed '{'")? + open;
        let name = &rest[open + 1..close];
        if !params.contains(&name) {
            return Err(format!(
                "`{{{name}}}` is not a parameter of this route's path_pattern"
            ));
        }
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return Err("unmatched '}'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_parsing() {
        let p = parse_pattern("/users/{id}/files/{*path}").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.segments.len(), 4);
        assert!(parse_pattern("/a/{*x}/b").is_err());
        assert!(parse_pattern("/a/x{id}").is_err());
        assert!(parse_pattern("/a/{id}/{id}").is_err());
    }

    #[test]
    fn prefix_coverage() {
        assert!(prefix_covers("/api", "/api"));
        assert!(prefix_covers("/api", "/api/v1"));
        assert!(!prefix_covers("/api", "/apix"));
        assert_eq!(normalise_prefix("/api/"), "/api");
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let src = "[[listeners]]\nname = \"a\"\naddress = \"nope\"\n";
        let err = parse(Path::new("x.toml"), src)
            .err()
            .unwrap_or_else(|| panic!("expected an error"));
        assert_eq!(err.0[0].location.line, 3);
        assert_eq!(err.0[0].location.col, 11);
    }
}
