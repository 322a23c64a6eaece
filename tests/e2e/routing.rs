//! Route selection and path/host rewriting, seen through the gateway.
//!
//! Most routes here answer with a `direct_response` whose body is the
//! route's name, so each assertion reads "this request picked that route".
//! Routes are declared in an order that defeats a first-match router.

use anyhow::Result;
use http::Request;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::{upstream, Gateway};

/// A route answering locally with its own name.
fn named(name: &str, matchers: &str) -> String {
    format!(
        r#"
[[routes]]
name = "{name}"
{matchers}
[routes.direct_response]
status = 200
body = "{name}"
"#
    )
}

const MAIN: &str = r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
"#;

/// Which route answered `GET path` with the given extra headers.
async fn pick(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<String> {
    let mut req = Request::builder().method(method).uri(gw.url("main", path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = Http1::new().fetch(req.body(client::empty())?).await?;
    Ok(format!("{} {}", resp.status.as_u16(), resp.text()))
}

#[tokio::test]
async fn host_exact_beats_longest_wildcard_beats_any() -> Result<()> {
    let config = [
        MAIN.to_string(),
        named("any", ""),
        named("wild", r#"hosts = ["*.example.com"]"#),
        named("wild-long", r#"hosts = ["*.b.example.com"]"#),
        named("exact", r#"hosts = ["a.example.com"]"#),
    ]
    .concat();
    let gw = Gateway::start(&config).await?;
    let cases = [
        ("a.example.com", "200 exact"),
        ("z.example.com", "200 wild"),
        ("q.b.example.com", "200 wild-long"),
        ("deep.q.b.example.com", "200 wild-long"),
        ("other.test", "200 any"),
        // Host names are case-insensitive and may carry a port.
        ("A.Example.COM", "200 exact"),
        ("a.example.com:8080", "200 exact"),
    ];
    for (host, want) in cases {
        assert_eq!(
            pick(&gw, "GET", "/", &[("host", host)]).await?,
            want,
            "host {host}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn path_exact_beats_pattern_beats_prefix() -> Result<()> {
    let config = [
        MAIN.to_string(),
        named("root", r#"path_prefix = "/""#),
        named("users-prefix", r#"path_prefix = "/users""#),
        named("static", r#"path_prefix = "/static""#),
        named("static-img", r#"path_prefix = "/static/img""#),
        named("user-any", r#"path_pattern = "/users/{id}/{kind}/{*rest}""#),
        named(
            "user-files",
            r#"path_pattern = "/users/{id}/files/{*rest}""#,
        ),
        named("user-id", r#"path_pattern = "/users/{id}""#),
        named("me", r#"path = "/users/me""#),
    ]
    .concat();
    let gw = Gateway::start(&config).await?;
    let cases = [
        ("/users/me", "200 me"),
        ("/users/42", "200 user-id"),
        ("/users/42/files/a/b.txt", "200 user-files"),
        ("/users/42/photos/a.jpg", "200 user-any"),
        ("/users", "200 users-prefix"),
        ("/static/img/a.png", "200 static-img"),
        ("/static/img", "200 static-img"),
        ("/static/css/a.css", "200 static"),
        ("/static", "200 static"),
        // Prefixes are segment-aware.
        ("/staticx", "200 root"),
        ("/static-img/a", "200 root"),
        ("/", "200 root"),
    ];
    for (path, want) in cases {
        assert_eq!(pick(&gw, "GET", path, &[]).await?, want, "path {path}");
    }
    Ok(())
}

/// Method, path, extra headers, expected `status route`.
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a str);

#[tokio::test]
async fn more_conditions_win_then_declaration_order() -> Result<()> {
    let config = [
        MAIN.to_string(),
        named("plain", r#"path_prefix = "/c""#),
        named("post", "path_prefix = \"/c\"\nmethods = [\"POST\"]"),
        named(
            "beta",
            "path_prefix = \"/c\"\nheaders = [{ name = \"x-env\", exact = \"beta\" }]",
        ),
        named(
            "two",
            "path_prefix = \"/c\"\nheaders = [{ name = \"x-v\", regex = \"v[0-9]+\" }, { name = \"x-p\", present = true }]",
        ),
        named(
            "debug",
            "path_prefix = \"/c\"\nquery = [{ name = \"debug\", exact = \"1\" }]",
        ),
    ]
    .concat();
    let gw = Gateway::start(&config).await?;
    let cases: &[Case] = &[
        ("GET", "/c", &[], "200 plain"),
        ("GET", "/c/sub", &[], "200 plain"),
        ("POST", "/c", &[], "200 post"),
        ("GET", "/c", &[("x-env", "beta")], "200 beta"),
        ("GET", "/c", &[("x-env", "alpha")], "200 plain"),
        ("GET", "/c", &[("x-v", "v12"), ("x-p", "yes")], "200 two"),
        // The regex must match the whole value.
        ("GET", "/c", &[("x-v", "v12x"), ("x-p", "yes")], "200 plain"),
        ("GET", "/c", &[("x-v", "v12")], "200 plain"),
        // Two matchers beat one.
        (
            "GET",
            "/c",
            &[("x-env", "beta"), ("x-v", "v1"), ("x-p", "")],
            "200 two",
        ),
        ("GET", "/c?debug=1", &[], "200 debug"),
        ("GET", "/c?a=b&debug=1", &[], "200 debug"),
        ("GET", "/c?debug=2", &[], "200 plain"),
        // Equally specific: the one declared first.
        ("POST", "/c", &[("x-env", "beta")], "200 post"),
    ];
    for (method, path, headers, want) in cases {
        assert_eq!(
            pick(&gw, method, path, headers).await?,
            *want,
            "{method} {path} {headers:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn routes_apply_only_to_their_listeners() -> Result<()> {
    let config = format!(
        r#"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[listeners]]
name = "other"
address = "127.0.0.1:0"
{}{}"#,
        named("other-only", "listeners = [\"other\"]"),
        named("main-m", "listeners = [\"main\"]\npath = \"/m\""),
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    assert_eq!(http.get(&gw.url("main", "/")).await?.status, 404);
    assert_eq!(http.get(&gw.url("other", "/")).await?.text(), "other-only");
    assert_eq!(http.get(&gw.url("main", "/m")).await?.text(), "main-m");
    assert_eq!(http.get(&gw.url("other", "/m")).await?.text(), "other-only");
    Ok(())
}

#[tokio::test]
async fn direct_response_status_body_and_content_type() -> Result<()> {
    let config = format!(
        r#"{MAIN}
[[routes]]
name = "teapot"
path = "/tea"
[routes.direct_response]
status = 418
body = "short and stout"
content_type = "text/x-teapot"
"#
    );
    let gw = Gateway::start(&config).await?;
    let resp = Http1::new().get(&gw.url("main", "/tea")).await?;
    assert_eq!(resp.status, 418);
    assert_eq!(resp.text(), "short and stout");
    assert_eq!(resp.header("content-type"), Some("text/x-teapot"));
    assert!(resp.header("x-request-id").is_some_and(|v| !v.is_empty()));
    Ok(())
}

#[tokio::test]
async fn dot_segments_are_normalised_before_routing_and_forwarding() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = format!(
        r#"{MAIN}
[[upstreams]]
name = "echo"
endpoints = ["{}"]
[[routes]]
name = "public"
path_prefix = "/public"
upstream = "echo"
{}"#,
        echo.addr(),
        named("secret", r#"path_prefix = "/secret""#)
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    // A prefix route cannot be bypassed by climbing out of it …
    let resp = http.get(&gw.url("main", "/public/../secret/x")).await?;
    assert_eq!(resp.text(), "secret");
    assert_eq!(
        echo.count(),
        0,
        "/public/../secret reached the public upstream"
    );
    // … and the upstream sees the normalised path.
    let resp = http.get(&gw.url("main", "/secret/../public/a")).await?;
    assert_eq!(resp.json()?["path"], "/public/a");
    let resp = http.get(&gw.url("main", "/public/./a/../b?q=1")).await?;
    assert_eq!(resp.json()?["path"], "/public/b?q=1");
    Ok(())
}

#[tokio::test]
async fn strip_prefix_rewrite_path_and_host_rewrite_reach_the_upstream() -> Result<()> {
    let echo = upstream::echo().await?;
    let config = format!(
        r#"{MAIN}
[[upstreams]]
name = "echo"
endpoints = ["{}"]

[[routes]]
name = "api"
path_prefix = "/api"
strip_prefix = "/api"
upstream = "echo"

[[routes]]
name = "files"
path_pattern = "/users/{{id}}/files/{{*rest}}"
rewrite_path = "/v2/{{id}}/{{rest}}"
upstream = "echo"

[[routes]]
name = "internal"
hosts = ["api.test"]
path_prefix = "/host"
host_rewrite = "internal.test"
upstream = "echo"

[[routes]]
name = "keep"
path_prefix = "/host"
upstream = "echo"
"#,
        echo.addr()
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    let get = |path: &str, host: &str| {
        let req = Request::get(gw.url("main", path))
            .header("host", host)
            .body(client::empty());
        let http = http.clone();
        async move { http.fetch(req?).await?.json() }
    };

    assert_eq!(get("/api/x/y?q=1", "a.test").await?["path"], "/x/y?q=1");
    assert_eq!(get("/api", "a.test").await?["path"], "/");
    assert_eq!(
        get("/users/7/files/a/b.txt?x=1", "a.test").await?["path"],
        "/v2/7/a/b.txt?x=1"
    );

    let j = get("/host/p", "api.test").await?;
    assert_eq!(j["path"], "/host/p");
    assert_eq!(j["headers"]["host"], serde_json::json!(["internal.test"]));
    assert_eq!(
        j["headers"]["x-forwarded-host"],
        serde_json::json!(["api.test"])
    );

    // Without host_rewrite the client's Host is kept.
    let j = get("/host/p", "keep.test").await?;
    assert_eq!(j["headers"]["host"], serde_json::json!(["keep.test"]));
    Ok(())
}

#[tokio::test]
async fn upstream_endpoints_take_turns() -> Result<()> {
    let a = upstream::echo().await?;
    let b = upstream::echo().await?;
    let config = format!(
        r#"{MAIN}
[[upstreams]]
name = "pair"
endpoints = ["{}", "{}"]
[[routes]]
name = "api"
upstream = "pair"
"#,
        a.addr(),
        b.addr()
    );
    let gw = Gateway::start(&config).await?;
    let http = Http1::new();
    for _ in 0..10 {
        assert_eq!(http.get(&gw.url("main", "/rr")).await?.status, 200);
    }
    assert_eq!(
        (a.count(), b.count()),
        (5, 5),
        "round-robin over two endpoints"
    );
    Ok(())
}
