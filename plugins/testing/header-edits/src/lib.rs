//! `header-edits` (test plugin): runs a script of header changes and reads
//! in each head phase, to test that changes apply in order, that a read
//! sees the changes made before it, and that the next plugin sees them all.
//!
//! Config: `{ "request": [step, ...], "response": [step, ...] }`, a step
//! being one of `["set", name, value]`, `["append", name, value]`,
//! `["remove", name]` or `["copy", from, to]` (appends every value `from`
//! has at that point to `to`).

use serde::Deserialize;
use wasmgate_plugin::prelude::*;

enum Step {
    Set(String, String),
    Append(String, String),
    Remove(String),
    Copy(String, String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    request: Vec<Vec<String>>,
    #[serde(default)]
    response: Vec<Vec<String>>,
}

fn steps(script: &[Vec<String>]) -> Result<Vec<Step>, String> {
    script
        .iter()
        .map(|step| {
            let s = |i: usize| step[i].clone();
            match step.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["set", _, _] => Ok(Step::Set(s(1), s(2))),
                ["append", _, _] => Ok(Step::Append(s(1), s(2))),
                ["remove", _] => Ok(Step::Remove(s(1))),
                ["copy", _, _] => Ok(Step::Copy(s(1), s(2))),
                _ => Err(format!("unknown step {step:?}")),
            }
        })
        .collect()
}

struct HeaderEdits {
    request: Vec<Step>,
    response: Vec<Step>,
}

/// The header calls both heads have.
trait Head {
    fn set(&self, name: &str, value: &[u8]) -> Result<(), String>;
    fn append(&self, name: &str, value: &[u8]) -> Result<(), String>;
    fn remove(&self, name: &str);
    fn all(&self, name: &str) -> Vec<Vec<u8>>;
}

macro_rules! head {
    ($t:ty) => {
        impl Head for $t {
            fn set(&self, name: &str, value: &[u8]) -> Result<(), String> {
                self.set_header(name, value)
            }
            fn append(&self, name: &str, value: &[u8]) -> Result<(), String> {
                self.append_header(name, value)
            }
            fn remove(&self, name: &str) {
                self.remove_header(name)
            }
            fn all(&self, name: &str) -> Vec<Vec<u8>> {
                self.header_all(name)
            }
        }
    };
}
head!(Request);
head!(ResponseHead);

fn run(head: &impl Head, steps: &[Step]) {
    for step in steps {
        match step {
            Step::Set(name, value) => head.set(name, value.as_bytes()).log_err(name),
            Step::Append(name, value) => head.append(name, value.as_bytes()).log_err(name),
            Step::Remove(name) => head.remove(name),
            Step::Copy(from, to) => {
                for value in head.all(from) {
                    head.append(to, &value).log_err(to);
                }
            }
        }
    }
}

impl Plugin for HeaderEdits {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(HeaderEdits {
            request: steps(&config.request)?,
            response: steps(&config.response)?,
        })
    }

    fn on_request(&mut self, req: &Request) -> Action {
        run(req, &self.request);
        Action::Continue
    }

    fn on_response(&mut self, resp: &ResponseHead) -> Action {
        run(resp, &self.response);
        Action::Continue
    }
}

export_plugin!(HeaderEdits);
