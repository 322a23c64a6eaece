//! Load balancing over several endpoints: the share each balancer gives
//! each endpoint, and consistent hashing's stickiness when an endpoint
//! leaves.

use anyhow::{ensure, Result};
use http::Request;
use std::collections::HashMap;
use std::time::Duration;
use wasmgate_e2e::client::{self, Http1};
use wasmgate_e2e::upstream::{controlled, Controlled};
use wasmgate_e2e::Gateway;

/// Admin, listener `main`, upstream `backend` with the given endpoint list
/// (TOML array items) and extra upstream keys, route `api` to it.
pub fn config(endpoints: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[admin]
address = "127.0.0.1:0"
[[listeners]]
name = "main"
address = "127.0.0.1:0"
[[upstreams]]
name = "backend"
endpoints = [{endpoints}]
{upstream_extra}
[[routes]]
name = "api"
upstream = "backend"
"#
    )
}

/// `n` controlled upstreams named `e0`, `e1`, …
pub async fn endpoints(n: usize) -> Result<Vec<Controlled>> {
    let mut out = Vec::new();
    for i in 0..n {
        out.push(controlled(&format!("e{i}")).await?);
    }
    Ok(out)
}

pub fn list(eps: &[Controlled]) -> String {
    eps.iter()
        .map(|e| format!("\"{}\"", e.addr()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Sends `n` GETs one after another; counts who served them (all must be 200).
async fn spread(gw: &Gateway, n: usize) -> Result<HashMap<String, usize>> {
    let client = Http1::new();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let resp = client.get(&gw.url("main", "/")).await?;
        ensure!(
            resp.status == 200,
            "status {}: {}",
            resp.status,
            resp.text()
        );
        *seen.entry(resp.text()).or_insert(0) += 1;
    }
    Ok(seen)
}

fn share(seen: &HashMap<String, usize>, name: &str) -> usize {
    seen.get(name).copied().unwrap_or(0)
}

#[tokio::test]
async fn round_robin_gives_every_endpoint_the_same_share() -> Result<()> {
    let eps = endpoints(4).await?;
    let gw = Gateway::start(&config(&list(&eps), "")).await?;
    let seen = spread(&gw, 400).await?;
    for e in &eps {
        assert_eq!(share(&seen, e.name()), 100, "{seen:?}");
    }
    Ok(())
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights_exactly() -> Result<()> {
    let eps = endpoints(3).await?;
    let list = format!(
        r#"{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = 2 }}, {{ address = "{}", weight = 5 }}"#,
        eps[0].addr(),
        eps[1].addr(),
        eps[2].addr()
    );
    let gw = Gateway::start(&config(&list, r#"balancer = "weighted-round-robin""#)).await?;
    let seen = spread(&gw, 800).await?;
    assert_eq!(share(&seen, "e0"), 100, "{seen:?}");
    assert_eq!(share(&seen, "e1"), 200, "{seen:?}");
    assert_eq!(share(&seen, "e2"), 500, "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn random_follows_the_weights_within_tolerance() -> Result<()> {
    let eps = endpoints(2).await?;
    let list = format!(
        r#"{{ address = "{}", weight = 1 }}, {{ address = "{}", weight = 3 }}"#,
        eps[0].addr(),
        eps[1].addr()
    );
    let gw = Gateway::start(&config(&list, r#"balancer = "random""#)).await?;
    let n = 2000;
    let seen = spread(&gw, n).await?;
    let heavy = share(&seen, "e1") as f64 / n as f64;
    // Binomial(2000, 0.75): sd ≈ 0.0097; ±0.05 is over five sd.
    ensure!(
        (0.70..=0.80).contains(&heavy),
        "e1 got {heavy:.3} of {n}: {seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn least_request_sends_less_traffic_to_a_slow_endpoint() -> Result<()> {
    let eps = endpoints(4).await?;
    eps[0].set_delay(Duration::from_millis(200));
    let gw = Gateway::start(&config(&list(&eps), r#"balancer = "least-request""#)).await?;
    let url = gw.url("main", "/");
    // 8 clients, 25 requests each: the slow endpoint holds its requests
    // longer, so power-of-two-choices mostly prefers the others. (It still
    // gets a request when both draws land on it: 1/16 of the picks.)
    let (clients, each) = (8, 25);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = Http1::new();
            let mut names = Vec::new();
            for _ in 0..each {
                let resp = client.get(&url).await?;
                ensure!(resp.status == 200, "status {}", resp.status);
                names.push(resp.text());
            }
            Ok::<_, anyhow::Error>(names)
        }));
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for name in t.await?? {
            *seen.entry(name).or_insert(0) += 1;
        }
    }
    let total = clients * each;
    let slow = share(&seen, "e0");
    // Round-robin would give it 25%.
    ensure!(
        slow * 100 < total * 15,
        "slow endpoint got {slow} of {total}: {seen:?}"
    );
    Ok(())
}

/// Which endpoint each of `users` lands on (asked twice: must be stable).
async fn placement(gw: &Gateway, users: usize) -> Result<HashMap<usize, String>> {
    let client = Http1::new();
    let mut out = HashMap::new();
    for round in 0..2 {
        for u in 0..users {
            let req = Request::get(gw.url("main", "/"))
                .header("x-user", format!("user-{u}"))
                .body(client::empty())?;
            let resp = client.fetch(req).await?;
            ensure!(resp.status == 200, "status {}", resp.status);
            let name = resp.text();
            if round == 0 {
                out.insert(u, name);
            } else {
                ensure!(out[&u] == name, "user-{u} moved from {} to {name}", out[&u]);
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn consistent_hash_is_sticky_and_stable_when_an_endpoint_leaves() -> Result<()> {
    let eps = endpoints(4).await?;
    let extra = r#"balancer = "consistent-hash"
hash_on = { header = "x-user" }"#;
    let gw = Gateway::start(&config(&list(&eps), extra)).await?;
    let users = 400;
    let before = placement(&gw, users).await?;
    for e in &eps {
        let n = before.values().filter(|v| *v == e.name()).count();
        ensure!(n >= 50, "{} got only {n} of {users} users", e.name());
    }
    // e3 leaves the endpoint list.
    gw.write_config(&config(&list(&eps[..3]), extra))?;
    let (status, body) = gw.reload_admin().await?;
    ensure!(status == 200, "reload: {body}");
    let after = placement(&gw, users).await?;
    let stayed = before.iter().filter(|(_, v)| *v != "e3").count();
    let moved = before
        .iter()
        .filter(|(u, v)| *v != "e3" && after[*u] != **v)
        .count();
    // Maglev: all but a few percent of the keys on remaining endpoints stay.
    ensure!(
        moved * 100 <= stayed * 5,
        "{moved} of {stayed} users on remaining endpoints moved"
    );
    ensure!(after.values().all(|v| v != "e3"));
    Ok(())
}

#[tokio::test]
async fn consistent_hash_on_cookie_query_and_client_ip() -> Result<()> {
    let eps = endpoints(3).await?;
    for hash_on in [
        r#"{ cookie = "session" }"#,
        r#"{ query = "user" }"#,
        r#""client-ip""#,
    ] {
        let extra = format!("balancer = \"consistent-hash\"\nhash_on = {hash_on}");
        let gw = Gateway::start(&config(&list(&eps), &extra)).await?;
        let client = Http1::new();
        let mut names = std::collections::HashSet::new();
        for _ in 0..20 {
            let req = Request::get(gw.url("main", "/?user=alice&x=1"))
                .header("cookie", "a=b; session=s-42; c=d")
                .body(client::empty())?;
            let resp = client.fetch(req).await?;
            ensure!(resp.status == 200, "status {}", resp.status);
            names.insert(resp.text());
        }
        ensure!(names.len() == 1, "hash_on {hash_on}: spread over {names:?}");
    }
    Ok(())
}
