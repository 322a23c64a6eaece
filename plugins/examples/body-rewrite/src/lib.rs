//! `body-rewrite`: find-and-replace on whole bodies (like nginx's
//! `sub_filter`), and refusal of request bodies that contain a given text.
//! It uses the body phases, so the gateway buffers the bodies it asks for
//! (up to the plugin's `max_body_bytes`); with an empty rule list for a
//! direction it does not ask for that body at all.
//!
//! Config:
//! ```json
//! { "request": [{ "from": "colour", "to": "color" }],
//!   "response": [{ "from": "internal.example", "to": "api.example.com" }],
//!   "deny_request_containing": "DROP TABLE", "deny_status": 400 }
//! ```
//! Every key is optional. The response gets `x-body-rewrites: <n>` with the
//! number of replacements made in it.

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    from: String,
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Vec<Rule>,
    #[serde(default)]
    response: Vec<Rule>,
    deny_request_containing: Option<String>,
    #[serde(default = "default_status")]
    deny_status: u16,
}

fn default_status() -> u16 {
    400
}

struct BodyRewrite(Config);

impl Plugin for BodyRewrite {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let rules = config.request.iter().chain(&config.response);
        if let Some(rule) = rules.into_iter().find(|r| r.from.is_empty()) {
            return Err(format!("rule to {:?} has an empty `from`", rule.to));
        }
        if config.deny_request_containing.as_deref() == Some("") {
            return Err("deny_request_containing must not be empty".into());
        }
        if !(200..=599).contains(&config.deny_status) {
            return Err(format!(
                "deny_status {} is not in 200..=599",
                config.deny_status
            ));
        }
        Ok(BodyRewrite(config))
    }

    fn phases(&self) -> Phases {
        let mut phases = Phases::empty();
        if !self.0.request.is_empty() || self.0.deny_request_containing.is_some() {
            phases |= Phases::REQUEST_BODY;
        }
        if !self.0.response.is_empty() {
            phases |= Phases::RESPONSE_BODY;
        }
        phases
    }

    fn on_request_body(&mut self, _req: &Request, body: Vec<u8>) -> BodyAction {
        if let Some(needle) = &self.0.deny_request_containing {
            if find(&body, needle.as_bytes(), 0).is_some() {
                return Response::new(self.0.deny_status)
                    .text("request body refused")
                    .into();
            }
        }
        match rewrite(&body, &self.0.request) {
            (_, 0) => BodyAction::Continue,
            (new, _) => BodyAction::Replace(new),
        }
    }

    fn on_response_body(&mut self, resp: &ResponseHead, body: Vec<u8>) -> BodyAction {
        let (new, count) = rewrite(&body, &self.0.response);
        resp.set_header_str("x-body-rewrites", &count.to_string())
            .log_err("x-body-rewrites");
        if count == 0 {
            BodyAction::Continue
        } else {
            BodyAction::Replace(new)
        }
    }
}

/// Applies the rules one after another; returns the body and the number of
/// replacements.
fn rewrite(body: &[u8], rules: &[Rule]) -> (Vec<u8>, usize) {
    let mut out = body.to_vec();
    let mut count = 0;
    for rule in rules {
        let (from, to) = (rule.from.as_bytes(), rule.to.as_bytes());
        let mut next = Vec::with_capacity(out.len());
        let mut at = 0;
        while let Some(i) = find(&out, from, at) {
            next.extend_from_slice(&out[at..i]);
            next.extend_from_slice(to);
            at = i + from.len();
            count += 1;
        }
        next.extend_from_slice(&out[at..]);
        out = next;
    }
    (out, count)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

export_plugin!(BodyRewrite);
