//! Config: the TOML file → raw serde structs → one validated, immutable model.
//!
//! Pipeline: [`validate::load`] reads the file, `toml` parses it into
//! [`raw`] structs (unknown keys rejected with their location), and the
//! validator turns those into the [`model`], collecting every problem as
//! `file:line:col: what is wrong — how to fix it`. Runtime objects (TLS
//! resolvers, the router, upstream pools) are built from the model by the
//! application, which reports their failures in the same form.

pub mod error;
pub mod model;
pub mod raw;
pub mod validate;

pub use error::{ConfigError, ConfigErrors, Location};
pub use model::*;
pub use validate::{load, parse};
