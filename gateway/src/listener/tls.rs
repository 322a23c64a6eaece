//! TLS termination: certificates loaded from PEM files and chosen by SNI
//! (exact names first, then `*.` wildcards covering one label, then the
//! default), ALPN `h2` and `http/1.1`.

use crate::config::{ConfigError, TlsConfig};
use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.wildcard.get(parent) {
                return Some(c.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// Loads every certificate of a listener and builds its rustls config.
/// Failures name the certificate's place in the config file.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<ServerConfig>, Vec<ConfigError>> {
    let provider = Arc::new(ring::default_provider());
    let mut errors = Vec::new();
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    let mut first = None;
    for c in &tls.certificates {
        let err = |message: String, fix: &str| ConfigError {
            location: c.location.clone(),
            message,
            fix: fix.to_string(),
        };
        let certs: Result<Vec<CertificateDer<'static>>, _> =
            CertificateDer::pem_file_iter(&c.cert).and_then(|i| i.collect());
        let certs = match certs {
            Ok(certs) if !certs.is_empty() => certs,
            Ok(_) => {
                errors.push(err(
                    format!("no certificate found in {}", c.cert.display()),
                    "give a PEM file with a CERTIFICATE block",
                ));
                continue;
            }
            Err(e) => {
                errors.push(err(
                    format!("cannot read certificate {}: {e}", c.cert.display()),
                    "check the path and that the file is PEM",
                ));
                continue;
            }
        };
        let key = match PrivateKeyDer::from_pem_file(&c.key) {
            Ok(k) => k,
            Err(e) => {
                errors.push(err(
                    format!("cannot read private key {}: {e}", c.key.display()),
                    "check the path and that the file holds a PEM private key",
                ));
                continue;
            }
        };
        let ck = match CertifiedKey::from_der(certs, key, &provider) {
            Ok(ck) => Arc::new(ck),
            Err(e) => {
                let fix = "use the key that belongs to this certificate";
                errors.push(err(
                    format!(
                        "certificate {} and key {} do not match: {e}",
                        c.cert.display(),
                        c.key.display()
                    ),
                    fix,
                ));
                continue;
            }
        };
        for n in &c.server_names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_string(), ck.clone()),
                None => exact.insert(n.clone(), ck.clone()),
            };
        }
        if c.default {
            default = Some(ck.clone());
        }
        first.get_or_insert(ck);
    }
    let Some(default) = default.or(first) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let resolver = SniResolver {
        exact,
        wildcard,
        default,
    };
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            vec![ConfigError {
                location: tls.certificates[0].location.clone(),
                message: e.to_string(),
                fix: String::new(),
            }]
        })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
