//! TLS to upstreams: a custom CA, SNI override, mutual TLS, HTTP/2 over TLS
//! chosen by ALPN (multiplexed on one connection), and
//! `insecure_skip_verify`.

use anyhow::{ensure, Result};
use std::time::Duration;
use wasmgate_e2e::client::Http1;
use wasmgate_e2e::tls::Pki;
use wasmgate_e2e::upstream::{controlled_tls, Mode};
use wasmgate_e2e::Gateway;

fn tls_config(addr: std::net::SocketAddr, protocol: &str, tls: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "secure"
endpoints = ["{addr}"]
protocol = "{protocol}"
[upstreams.retry]
max_retries = 0
[upstreams.tls]
{tls}
[[routes]]
name = "api"
upstream = "secure"
"#
    )
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string().replace('\\', "/")
}

#[tokio::test]
async fn custom_ca_and_sni_override() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("upstream", &["upstream.test"])?;
    let server = pki.server_config(&leaf, &[b"http/1.1"], false)?;
    let up = controlled_tls("secure-1", server).await?;
    let ca = path(&pki.ca_file()?);
    // The certificate names upstream.test, not 127.0.0.1: SNI must say so.
    let gw = Gateway::start(&tls_config(
        up.addr(),
        "http1",
        &format!("ca = \"{ca}\"\nsni = \"upstream.test\""),
    ))
    .await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(
        resp.status == 200 && resp.text() == "secure-1",
        "{} {}",
        resp.status,
        resp.text()
    );
    drop(gw);
    let gw = Gateway::start(&tls_config(up.addr(), "http1", &format!("ca = \"{ca}\""))).await?;
    Http1::new()
        .get(&gw.url("main", "/"))
        .await?
        .expect_gateway_error(502)?;
    Ok(())
}

#[tokio::test]
async fn mtls_upstream_rejects_a_missing_client_cert_and_accepts_one() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("upstream", &["upstream.test"])?;
    let client_leaf = pki.leaf("gateway-client", &["gateway.test"])?;
    let server = pki.server_config(&leaf, &[b"http/1.1"], true)?;
    let up = controlled_tls("mtls", server).await?;
    let ca = path(&pki.ca_file()?);
    let base = format!("ca = \"{ca}\"\nsni = \"upstream.test\"");

    let gw = Gateway::start(&tls_config(up.addr(), "http1", &base)).await?;
    Http1::new()
        .get(&gw.url("main", "/"))
        .await?
        .expect_gateway_error(502)?;
    ensure!(
        up.traffic() == 0,
        "a request got through without a client cert"
    );
    drop(gw);

    let with_cert = format!(
        "{base}\ncert = \"{}\"\nkey = \"{}\"",
        path(&client_leaf.cert),
        path(&client_leaf.key)
    );
    let gw = Gateway::start(&tls_config(up.addr(), "http1", &with_cert)).await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(
        resp.status == 200 && resp.text() == "mtls",
        "{} {}",
        resp.status,
        resp.text()
    );
    Ok(())
}

#[tokio::test]
async fn h2_over_tls_multiplexes_on_one_connection() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("upstream", &["upstream.test"])?;
    let server = pki.server_config(&leaf, &[b"h2"], false)?;
    let up = controlled_tls("h2", server).await?;
    up.set_mode(Mode::Slow(Duration::from_millis(300)));
    let ca = path(&pki.ca_file()?);
    let gw = Gateway::start(&tls_config(
        up.addr(),
        "h2",
        &format!("ca = \"{ca}\"\nsni = \"upstream.test\""),
    ))
    .await?;
    let n = 10;
    let mut tasks = Vec::new();
    for _ in 0..n {
        let url = gw.url("main", "/");
        tasks.push(tokio::spawn(
            async move { Http1::unpooled().get(&url).await },
        ));
    }
    for t in tasks {
        let resp = t.await??;
        ensure!(
            resp.status == 200 && resp.text() == "h2",
            "{} {}",
            resp.status,
            resp.text()
        );
    }
    ensure!(up.connections() == 1, "{} connections", up.connections());
    ensure!(
        up.max_active() == n,
        "at most {} requests at once",
        up.max_active()
    );
    ensure!(up.seen().iter().all(|s| s.version == "HTTP/2.0"));
    Ok(())
}

#[tokio::test]
async fn insecure_skip_verify_works_and_warns() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("upstream", &["upstream.test"])?;
    let server = pki.server_config(&leaf, &[b"http/1.1"], false)?;
    let up = controlled_tls("anything", server).await?;
    let mut gw = Gateway::start(&tls_config(
        up.addr(),
        "http1",
        "insecure_skip_verify = true",
    ))
    .await?;
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(resp.status == 200, "{}", resp.status);
    gw.wait_stderr(&["verification is DISABLED"], Duration::from_secs(5))
        .await?;
    Ok(())
}

#[tokio::test]
async fn resolved_endpoints_keep_their_host_name_as_sni() -> Result<()> {
    let pki = Pki::new()?;
    let leaf = pki.leaf("upstream", &["localhost"])?;
    let server = pki.server_config(&leaf, &[b"http/1.1"], false)?;
    let up = controlled_tls("by-name", server).await?;
    let ca = path(&pki.ca_file()?);
    let toml = tls_config(up.addr(), "http1", &format!("ca = \"{ca}\"")).replace(
        &format!("endpoints = [\"{}\"]", up.addr()),
        &format!(
            "endpoints = [\"localhost:{}\"]\ndns_refresh = \"50ms\"",
            up.addr().port()
        ),
    );
    let gw = Gateway::start(&toml).await?;
    // Wait until DNS replaced the name with the address.
    let want = format!("127.0.0.1:{}", up.addr().port());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let json = gw.admin_get("/upstreams").await?.json()?;
        if json["upstreams"][0]["endpoints"][0]["address"] == want.as_str() {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "never resolved: {json}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = Http1::new().get(&gw.url("main", "/")).await?;
    ensure!(
        resp.status == 200 && resp.text() == "by-name",
        "{} {}",
        resp.status,
        resp.text()
    );
    Ok(())
}
