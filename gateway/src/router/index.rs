//! The route index: host groups, each with exact-path and prefix hash maps.

use super::*;
use crate::config::{ConfigError, ConfigErrors};
use std::collections::HashMap;

/// What the router looks at in a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub listener: &'a str,
    /// Lower-case, without port.
    pub host: &'a str,
    /// Normalised origin-form path, without query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<String, Vec<usize>>,
    /// Prefix routes by prefix; pattern routes by their literal prefix.
    prefix: HashMap<String, Vec<usize>>,
}

impl PathIndex {
    fn insert(&mut self, i: usize, path: &PathMatch) {
        match path {
            PathMatch::Exact(p) => self.exact.entry(p.clone()).or_default().push(i),
            PathMatch::Prefix(p) => self.prefix.entry(p.clone()).or_default().push(i),
            PathMatch::Pattern(p) => self
                .prefix
                .entry(crate::config::validate::literal_prefix(p))
                .or_default()
                .push(i),
        }
    }

    /// Every route indexed under a key that could match `path`.
    fn candidates(&self, path: &str, mut f: impl FnMut(usize)) {
        if let Some(v) = self.exact.get(path) {
            v.iter().for_each(|&i| f(i));
        }
        if self.prefix.is_empty() {
            return;
        }
        let mut end = path.len();
        loop {
            let key = if end == 0 { "/" } else { &path[..end] };
            if let Some(v) = self.prefix.get(key) {
                v.iter().for_each(|&i| f(i));
            }
            if end == 0 {
                break;
            }
            end = path[..end].rfind('/').unwrap_or(0);
        }
    }
}

/// An immutable routing table built once per config.
#[derive(Debug)]
pub struct Router {
    routes: Vec<RouteConfig>,
    /// Per route: its path rank, condition count and declaration order.
    ranks: Vec<(u8, Reverse<usize>, Reverse<usize>, usize)>,
    exact_hosts: HashMap<String, PathIndex>,
    /// Longest suffix first.
    suffix_hosts: Vec<(String, PathIndex)>,
    any_host: PathIndex,
}

impl Router {
    /// Builds the table; routes that can never match because an identical
    /// route comes first are reported as errors.
    pub fn new(routes: Vec<RouteConfig>) -> Result<Router, ConfigErrors> {
        report_duplicates(&routes)?;
        let mut exact_hosts: HashMap<String, PathIndex> = HashMap::new();
        let mut suffixes: HashMap<String, PathIndex> = HashMap::new();
        let mut any_host = PathIndex::default();
        let mut ranks = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let (kind, spec) = path_rank(&r.path);
            ranks.push((kind, spec, Reverse(conditions(r)), i));
            if r.hosts.is_empty() {
                any_host.insert(i, &r.path);
            }
            for h in &r.hosts {
                match h {
                    HostMatch::Exact(e) => {
                        exact_hosts.entry(e.clone()).or_default().insert(i, &r.path)
                    }
                    HostMatch::Suffix(s) => {
                        suffixes.entry(s.clone()).or_default().insert(i, &r.path)
                    }
                }
            }
        }
        let mut suffix_hosts: Vec<(String, PathIndex)> = suffixes.into_iter().collect();
        suffix_hosts.sort_by_key(|(s, _)| Reverse(s.len()));
        Ok(Router {
            routes,
            ranks,
            exact_hosts,
            suffix_hosts,
            any_host,
        })
    }

    pub fn routes(&self) -> &[RouteConfig] {
        &self.routes
    }

    /// The best route for a request, or `None` (404).
    pub fn lookup<'a>(&'a self, req: &RequestHead<'_>) -> Option<Matched<'a>> {
        let mut best: Option<(Rank, Matched<'a>)> = None;
        let mut consider = |host_kind: u8, host_len: usize, index: &'a PathIndex| {
            index.candidates(req.path, |i| {
                let (kind, spec, cond, order) = self.ranks[i];
                let rank: Rank = (host_kind, Reverse(host_len), kind, spec, cond, order);
                if best.as_ref().is_some_and(|(b, _)| *b <= rank) {
                    return;
                }
                if let Some(m) = self.check(i, req) {
                    best = Some((rank, m));
                }
            });
        };
        if let Some(index) = self.exact_hosts.get(req.host) {
            consider(0, 0, index);
        }
        for (suffix, index) in &self.suffix_hosts {
            if req.host.len() > suffix.len() && req.host.ends_with(suffix.as_str()) {
                consider(1, suffix.len(), index);
            }
        }
        consider(2, 0, &self.any_host);
        best.map(|(_, m)| m)
    }

    fn check<'a>(&'a self, i: usize, req: &RequestHead<'_>) -> Option<Matched<'a>> {
        let r = &self.routes[i];
        if !r.listeners.is_empty() && !r.listeners.iter().any(|l| l == req.listener) {
            return None;
        }
        let params = match &r.path {
            PathMatch::Exact(p) => (p == req.path).then(Vec::new)?,
            PathMatch::Prefix(p) => prefix_matches(p, req.path).then(Vec::new)?,
            PathMatch::Pattern(p) => match_pattern(p, req.path)?,
        };
        let ok = method_matches(r, req.method)
            && headers_match(r, req.headers)
            && query_match(r, req.query)
            && host_matches(&r.hosts, req.host);
        ok.then_some(Matched {
            route: r,
            index: i,
            params,
        })
    }
}

/// What a route matches, as a comparable string (listeners aside).
fn signature(r: &RouteConfig) -> String {
    let mut hosts: Vec<String> = r.hosts.iter().map(|h| format!("{h:?}")).collect();
    hosts.sort();
    let mut methods: Vec<&str> = r.methods.iter().map(Method::as_str).collect();
    methods.sort();
    let path = match &r.path {
        PathMatch::Pattern(p) => {
            // Param names do not change what a pattern matches.
            let shape: Vec<&str> = p
                .segments
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.as_str(),
                    Segment::Param(_) => "{}",
                    Segment::Rest(_) => "{*}",
                })
                .collect();
            format!("pattern:{}", shape.join("/"))
        }
        other => format!("{other:?}"),
    };
    let mut conds: Vec<String> = r
        .headers
        .iter()
        .map(|m| format!("h:{}:{:?}", m.name, kind_str(&m.kind)))
        .chain(
            r.query
                .iter()
                .map(|m| format!("q:{}:{:?}", m.name, kind_str(&m.kind))),
        )
        .collect();
    conds.sort();
    format!("{hosts:?}|{path}|{methods:?}|{conds:?}")
}

fn kind_str(k: &ValueMatchKind) -> String {
    match k {
        ValueMatchKind::Present => "present".into(),
        ValueMatchKind::Exact(e) => format!("exact:{e}"),
        ValueMatchKind::Regex(r) => format!("regex:{}", r.as_str()),
    }
}

fn report_duplicates(routes: &[RouteConfig]) -> Result<(), ConfigErrors> {
    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let mut errors = Vec::new();
    for (i, r) in routes.iter().enumerate() {
        let earlier = seen.entry(signature(r)).or_default();
        let listeners_overlap = |o: &RouteConfig| {
            o.listeners.is_empty()
                || r.listeners.is_empty()
                || o.listeners.iter().any(|l| r.listeners.contains(l))
        };
        if let Some(&first) = earlier.iter().find(|&&j| listeners_overlap(&routes[j])) {
            let f = &routes[first];
            errors.push(ConfigError {
                location: r.location.clone(),
                message: format!(
                    "route `{}` can never match: route `{}` (line {}) matches exactly the same requests and comes first",
                    r.name, f.name, f.location.line
                ),
                fix: "remove one of them, or make this one more specific (host, method, header or query)".into(),
            });
        }
        earlier.push(i);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}
