//! Request head → route. Pure: no I/O, unit-tested on its own.
//!
//! Precedence (documented in docs/config.md): the most specific match wins,
//! compared in this order, ties going to the route declared first:
//! 1. host: exact name, then the longest matching `*.suffix`, then any host;
//! 2. path: exact, then pattern (more literal segments first), then prefix
//!    (longer first);
//! 3. more extra conditions (method set, each header and query matcher).
//!
//! Lookup never scans every route: routes are indexed by host (hash map, then
//! the few wildcard suffixes) and by path (hash maps of exact paths and of
//! segment-aligned prefixes), so the cost depends on the number of path
//! segments in the request, not on the size of the table.

mod index;
mod rewrite;

pub use index::{RequestHead, Router};
pub use rewrite::{normalize_path, rewrite_path};

use crate::config::{
    HostMatch, PathMatch, PathPattern, RouteConfig, Segment, ValueMatch, ValueMatchKind,
};
use http::{HeaderMap, Method};
use std::cmp::Reverse;

/// A matched route with the params its path pattern captured.
#[derive(Debug)]
pub struct Matched<'a> {
    pub route: &'a RouteConfig,
    pub index: usize,
    pub params: Vec<(&'a str, String)>,
}

/// Ordering key of a candidate; smaller wins.
type Rank = (
    u8,
    Reverse<usize>,
    u8,
    Reverse<usize>,
    Reverse<usize>,
    usize,
);

fn path_rank(p: &PathMatch) -> (u8, Reverse<usize>) {
    match p {
        PathMatch::Exact(s) => (0, Reverse(s.len())),
        PathMatch::Pattern(p) => {
            let literals = p
                .segments
                .iter()
                .filter(|s| matches!(s, Segment::Literal(_)))
                .count();
            let rest = p.segments.iter().any(|s| matches!(s, Segment::Rest(_)));
            // A pattern with a catch-all is less specific than one without.
            (1, Reverse(literals * 2 + usize::from(!rest)))
        }
        PathMatch::Prefix(s) => (2, Reverse(if s == "/" { 0 } else { s.len() })),
    }
}

fn conditions(r: &RouteConfig) -> usize {
    usize::from(!r.methods.is_empty()) + r.headers.len() + r.query.len()
}

/// Matches a path against a pattern, returning the captured params.
fn match_pattern<'a>(p: &'a PathPattern, path: &str) -> Option<Vec<(&'a str, String)>> {
    let mut parts = path[1..].split('/');
    let mut params = Vec::new();
    for seg in &p.segments {
        match seg {
            Segment::Literal(l) => {
                if parts.next()? != l {
                    return None;
                }
            }
            Segment::Param(name) => {
                let v = parts.next()?;
                if v.is_empty() {
                    return None;
                }
                params.push((name.as_str(), v.to_string()));
            }
            Segment::Rest(name) => {
                let rest: Vec<&str> = parts.by_ref().collect();
                params.push((name.as_str(), rest.join("/")));
                return Some(params);
            }
        }
    }
    parts.next().is_none().then_some(params)
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

fn value_matches(m: &ValueMatch, value: Option<&[u8]>) -> bool {
    match (&m.kind, value) {
        (_, None) => false,
        (ValueMatchKind::Present, Some(_)) => true,
        (ValueMatchKind::Exact(e), Some(v)) => e.as_bytes() == v,
        (ValueMatchKind::Regex(r), Some(v)) => std::str::from_utf8(v).is_ok_and(|v| r.is_match(v)),
    }
}

fn headers_match(r: &RouteConfig, headers: &HeaderMap) -> bool {
    r.headers.iter().all(|m| {
        let values = headers.get_all(m.name.as_str());
        let mut any = false;
        for v in values {
            any = true;
            if value_matches(m, Some(v.as_bytes())) {
                return true;
            }
        }
        !any && value_matches(m, None)
    })
}

fn query_match(r: &RouteConfig, query: Option<&str>) -> bool {
    if r.query.is_empty() {
        return true;
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    r.query.iter().all(|m| {
        pairs
            .iter()
            .any(|(k, v)| *k == m.name && value_matches(m, Some(v.as_bytes())))
    })
}

fn method_matches(r: &RouteConfig, method: &Method) -> bool {
    r.methods.is_empty() || r.methods.contains(method)
}

fn host_matches(hosts: &[HostMatch], host: &str) -> bool {
    hosts.is_empty()
        || hosts.iter().any(|h| match h {
            HostMatch::Exact(e) => e == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        })
}

#[cfg(test)]
mod tests;
