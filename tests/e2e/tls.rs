//! TLS listeners: certificate choice by SNI, ALPN to HTTP/2 or HTTP/1.1.

use anyhow::Result;
use http::{Request, Version};
use wasmgate_e2e::client;
use wasmgate_e2e::tls::{self, Leaf, Pki};
use wasmgate_e2e::{upstream, Gateway};

pub fn cert_entry(leaf: &Leaf, default: bool) -> String {
    let names: Vec<String> = leaf.names.iter().map(|n| format!("\"{n}\"")).collect();
    format!(
        r#"
[[listeners.tls.certificates]]
cert = "{}"
key = "{}"
server_names = [{}]
default = {default}
"#,
        leaf.cert.display(),
        leaf.key.display(),
        names.join(", ")
    )
}

pub fn tls_config(echo: std::net::SocketAddr, certs: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "tls"
address = "127.0.0.1:0"
{certs}
[[upstreams]]
name = "echo"
endpoints = ["{echo}"]
[[routes]]
name = "api"
upstream = "echo"
"#
    )
}

#[tokio::test]
async fn sni_picks_exact_then_wildcard_then_default_certificate() -> Result<()> {
    let pki = Pki::new()?;
    let a = pki.leaf("a", &["a.test"])?;
    let wild = pki.leaf("wild", &["*.wild.test"])?;
    let exact = pki.leaf("exact", &["exact.wild.test"])?;
    let dflt = pki.leaf("default", &["default.test"])?;
    let echo = upstream::echo().await?;
    // The default is deliberately not the first certificate.
    let certs = [
        cert_entry(&a, false),
        cert_entry(&wild, false),
        cert_entry(&exact, false),
        cert_entry(&dflt, true),
    ]
    .concat();
    let gw = Gateway::start(&tls_config(echo.addr(), &certs)).await?;
    let addr = gw.addr("tls");
    let cases = [
        (Some("a.test"), "a.test"),
        (Some("x.wild.test"), "*.wild.test"),
        (Some("exact.wild.test"), "exact.wild.test"),
        (Some("nomatch.test"), "default.test"),
        (None, "default.test"),
    ];
    for (sni, want) in cases {
        assert_eq!(tls::peer_names(addr, sni).await?, [want], "SNI {sni:?}");
    }
    Ok(())
}

#[tokio::test]
async fn without_a_default_the_first_certificate_is_served() -> Result<()> {
    let pki = Pki::new()?;
    let first = pki.leaf("first", &["first.test"])?;
    let second = pki.leaf("second", &["second.test"])?;
    let echo = upstream::echo().await?;
    let certs = [cert_entry(&first, false), cert_entry(&second, false)].concat();
    let gw = Gateway::start(&tls_config(echo.addr(), &certs)).await?;
    assert_eq!(
        tls::peer_names(gw.addr("tls"), Some("second.test")).await?,
        ["second.test"]
    );
    assert_eq!(
        tls::peer_names(gw.addr("tls"), Some("other.test")).await?,
        ["first.test"]
    );
    assert_eq!(tls::peer_names(gw.addr("tls"), None).await?, ["first.test"]);
    Ok(())
}

#[tokio::test]
async fn http2_over_tls_by_alpn() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("api", &["api.test"])?;
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&tls_config(echo.addr(), &cert_entry(&leaf, true))).await?;
    let h2 = client::h2_tls(
        gw.addr("tls"),
        "api.test",
        pki.client_config(tls::ALPN_H2_H1)?,
    )
    .await?;
    let resp = h2
        .fetch(Request::get("https://api.test/secure").body(client::empty())?)
        .await?;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, Version::HTTP_2);
    let j = resp.json()?;
    assert_eq!(j["path"], "/secure");
    assert_eq!(
        j["headers"]["x-forwarded-proto"],
        serde_json::json!(["https"])
    );
    assert_eq!(j["headers"]["host"], serde_json::json!(["api.test"]));
    let fwd = j["headers"]["forwarded"][0].as_str().unwrap_or_default();
    assert!(fwd.contains("proto=https"), "Forwarded: {fwd:?}");
    Ok(())
}

#[tokio::test]
async fn http1_over_tls_by_alpn() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("api", &["api.test"])?;
    let echo = upstream::echo().await?;
    let gw = Gateway::start(&tls_config(echo.addr(), &cert_entry(&leaf, true))).await?;
    let mut h1 =
        client::h1_tls(gw.addr("tls"), "api.test", pki.client_config(tls::ALPN_H1)?).await?;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    for i in 0..3 {
        let resp = h1
            .fetch(
                Request::get(format!("/secure/{i}"))
                    .header("host", "api.test")
                    .body(client::empty())?,
            )
            .await?;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.version, Version::HTTP_11);
        let j = resp.json()?;
        assert_eq!(j["path"], format!("/secure/{i}"));
        assert_eq!(
            j["headers"]["x-forwarded-proto"],
            serde_json::json!(["https"])
        );
    }
    Ok(())
}
