use super::*;
use crate::config;
use std::path::Path;

fn router(routes_toml: &str) -> Router {
    let src = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\"]\n{routes_toml}"
    );
    let cfg = config::parse(Path::new("t.toml"), &src).unwrap_or_else(|e| panic!("{e}"));
    Router::new(cfg.routes).unwrap_or_else(|e| panic!("{e}"))
}

fn find<'a>(
    r: &'a Router,
    method: &str,
    host: &str,
    path_and_query: &str,
    headers: &[(&str, &str)],
) -> Option<&'a str> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            v.parse().unwrap_or_else(|e| panic!("{e}")),
        );
    }
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let method = Method::from_bytes(method.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let head = RequestHead {
        listener: "main",
        host,
        path,
        query,
        method: &method,
        headers: &h,
    };
    r.lookup(&head).map(|m| m.route.name.as_str())
}

const R: &str = "upstream = \"u\"\n";

#[test]
fn exact_beats_pattern_beats_prefix_and_longer_prefix_wins() {
    let r = router(&format!(
        "[[routes]]\nname = \"root\"\n{R}\
         [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\n{R}\
         [[routes]]\nname = \"api-v1\"\npath_prefix = \"/api/v1\"\n{R}\
         [[routes]]\nname = \"user\"\npath_pattern = \"/api/v1/users/{{id}}\"\n{R}\
         [[routes]]\nname = \"me\"\npath = \"/api/v1/users/me\"\n{R}"
    ));
    assert_eq!(find(&r, "GET", "x", "/", &[]), Some("root"));
    assert_eq!(find(&r, "GET", "x", "/apix", &[]), Some("root"));
    assert_eq!(find(&r, "GET", "x", "/api", &[]), Some("api"));
    assert_eq!(find(&r, "GET", "x", "/api/v2", &[]), Some("api"));
    assert_eq!(find(&r, "GET", "x", "/api/v1/things", &[]), Some("api-v1"));
    assert_eq!(find(&r, "GET", "x", "/api/v1/users/42", &[]), Some("user"));
    assert_eq!(
        find(&r, "GET", "x", "/api/v1/users/42/x", &[]),
        Some("api-v1")
    );
    assert_eq!(find(&r, "GET", "x", "/api/v1/users/me", &[]), Some("me"));
}

#[test]
fn host_precedence_exact_then_longest_wildcard_then_any() {
    let r = router(&format!(
        "[[routes]]\nname = \"any\"\n{R}\
         [[routes]]\nname = \"wild\"\nhosts = [\"*.example.com\"]\n{R}\
         [[routes]]\nname = \"wild2\"\nhosts = [\"*.eu.example.com\"]\n{R}\
         [[routes]]\nname = \"exact\"\nhosts = [\"api.example.com\"]\n{R}"
    ));
    assert_eq!(find(&r, "GET", "api.example.com", "/", &[]), Some("exact"));
    assert_eq!(find(&r, "GET", "www.example.com", "/", &[]), Some("wild"));
    assert_eq!(find(&r, "GET", "a.eu.example.com", "/", &[]), Some("wild2"));
    assert_eq!(find(&r, "GET", "example.com", "/", &[]), Some("any"));
    assert_eq!(find(&r, "GET", "other.org", "/", &[]), Some("any"));
}

#[test]
fn falls_back_to_less_specific_host_when_path_does_not_match() {
    let r = router(&format!(
        "[[routes]]\nname = \"any\"\n{R}\
         [[routes]]\nname = \"exact\"\nhosts = [\"a.com\"]\npath = \"/only\"\n{R}"
    ));
    assert_eq!(find(&r, "GET", "a.com", "/only", &[]), Some("exact"));
    assert_eq!(find(&r, "GET", "a.com", "/other", &[]), Some("any"));
}

#[test]
fn methods_headers_and_query_add_specificity() {
    let r = router(&format!(
        "[[routes]]\nname = \"plain\"\npath_prefix = \"/a\"\n{R}\
         [[routes]]\nname = \"post\"\npath_prefix = \"/a\"\nmethods = [\"POST\"]\n{R}\
         [[routes]]\nname = \"beta\"\npath_prefix = \"/a\"\nheaders = [{{ name = \"X-Env\", exact = \"beta\" }}]\n{R}\
         [[routes]]\nname = \"re\"\npath_prefix = \"/a\"\nheaders = [{{ name = \"x-ver\", regex = \"v[0-9]+\" }}]\n{R}\
         [[routes]]\nname = \"dbg\"\npath_prefix = \"/a\"\nquery = [{{ name = \"debug\", exact = \"on air\" }}]\n{R}"
    ));
    assert_eq!(find(&r, "GET", "h", "/a", &[]), Some("plain"));
    assert_eq!(find(&r, "POST", "h", "/a", &[]), Some("post"));
    assert_eq!(
        find(&r, "GET", "h", "/a", &[("x-env", "beta")]),
        Some("beta")
    );
    assert_eq!(
        find(&r, "GET", "h", "/a", &[("x-env", "prod")]),
        Some("plain")
    );
    assert_eq!(find(&r, "GET", "h", "/a", &[("x-ver", "v12")]), Some("re"));
    assert_eq!(
        find(&r, "GET", "h", "/a", &[("x-ver", "v12x")]),
        Some("plain")
    );
    assert_eq!(find(&r, "GET", "h", "/a?debug=on+air", &[]), Some("dbg"));
    assert_eq!(find(&r, "GET", "h", "/a?debug=off", &[]), Some("plain"));
}

#[test]
fn equal_specificity_goes_to_declaration_order() {
    let r = router(&format!(
        "[[routes]]\nname = \"first\"\npath_prefix = \"/a\"\nmethods = [\"GET\"]\n{R}\
         [[routes]]\nname = \"second\"\npath_prefix = \"/a\"\nheaders = [{{ name = \"x\", present = true }}]\n{R}"
    ));
    assert_eq!(find(&r, "GET", "h", "/a", &[("x", "1")]), Some("first"));
    assert_eq!(find(&r, "PUT", "h", "/a", &[("x", "1")]), Some("second"));
}

#[test]
fn no_match_is_none() {
    let r = router(&format!(
        "[[routes]]\nname = \"a\"\npath_prefix = \"/a\"\n{R}"
    ));
    assert_eq!(find(&r, "GET", "h", "/b", &[]), None);
}

#[test]
fn duplicate_routes_are_reported_with_location() {
    let src = format!(
        "[[listeners]]\nname = \"main\"\naddress = \"127.0.0.1:0\"\n[[upstreams]]\nname = \"u\"\nendpoints = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"a\"\npath_pattern = \"/u/{{id}}\"\n{R}\
         [[routes]]\nname = \"b\"\npath_pattern = \"/u/{{name}}\"\n{R}"
    );
    let cfg = config::parse(Path::new("t.toml"), &src).unwrap_or_else(|e| panic!("{e}"));
    let err = Router::new(cfg.routes)
        .err()
        .unwrap_or_else(|| panic!("expected duplicate error"));
    let text = err.to_string();
    assert!(
        text.starts_with("t.toml:11:1: route `b` can never match: route `a` (line 7)"),
        "{text}"
    );
}

#[test]
fn rewrites() {
    let r = router(&format!(
        "[[routes]]\nname = \"strip\"\npath_prefix = \"/api\"\nstrip_prefix = \"/api\"\n{R}\
         [[routes]]\nname = \"tpl\"\npath_pattern = \"/users/{{id}}/files/{{*rest}}\"\nrewrite_path = \"/v2/u/{{id}}/{{rest}}\"\n{R}"
    ));
    let m = |p: &str| {
        let h = HeaderMap::new();
        let head = RequestHead {
            listener: "main",
            host: "h",
            path: p,
            query: None,
            method: &Method::GET,
            headers: &h,
        };
        let m = r
            .lookup(&head)
            .unwrap_or_else(|| panic!("no route for {p}"));
        rewrite_path(&m, p)
    };
    assert_eq!(m("/api/users").as_deref(), Some("/users"));
    assert_eq!(m("/api").as_deref(), Some("/"));
    assert_eq!(
        m("/users/7/files/a/b.txt").as_deref(),
        Some("/v2/u/7/a/b.txt")
    );
}

#[test]
fn dot_segments_are_removed() {
    assert_eq!(normalize_path("/a/../b").as_deref(), Some("/b"));
    assert_eq!(normalize_path("/a/./b/").as_deref(), Some("/a/b/"));
    assert_eq!(normalize_path("/../../x").as_deref(), Some("/x"));
    assert_eq!(normalize_path("/a/b/..").as_deref(), Some("/a/"));
    assert_eq!(normalize_path("*"), None);
}

#[test]
fn thousands_of_routes_build_and_match() {
    let mut s = String::new();
    for i in 0..5000 {
        s.push_str(&format!(
            "[[routes]]\nname = \"r{i}\"\npath_prefix = \"/svc{i}\"\n{R}"
        ));
    }
    let r = router(&s);
    assert_eq!(find(&r, "GET", "h", "/svc4321/x", &[]), Some("r4321"));
    assert_eq!(find(&r, "GET", "h", "/svc5000", &[]), None);
}
