//! TLS to upstreams: the rustls client config of one upstream — trusted
//! roots (a CA bundle or the system's), an optional client certificate for
//! mutual TLS, ALPN from the upstream's protocol, and the explicitly unsafe
//! `insecure_skip_verify`.

use crate::config::{ConfigError, UpstreamTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// Builds the client config; failures name the `[upstreams.tls]` table.
pub fn client_config(
    upstream: &str,
    t: &UpstreamTls,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, ConfigError> {
    let err = |message: String, fix: &str| ConfigError {
        location: t.location.clone(),
        message,
        fix: fix.to_string(),
    };
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(format!("TLS setup failed: {e}"), "report this as a bug"))?;
    let builder = if t.insecure_skip_verify {
        tracing::warn!(
            upstream,
            "upstream TLS certificate verification is DISABLED (insecure_skip_verify = true): \
             anyone on the path can impersonate this upstream; use only for testing"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        builder.with_root_certificates(roots(t).map_err(|(m, f)| err(m, f))?)
    };
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let certs: Result<Vec<CertificateDer<'static>>, _> =
                CertificateDer::pem_file_iter(cert).and_then(|i| i.collect());
            let certs = match certs {
                Ok(c) if !c.is_empty() => c,
                Ok(_) => {
                    return Err(err(
                        format!("no certificate found in {}", cert.display()),
                        "give a PEM file with a CERTIFICATE block",
                    ))
                }
                Err(e) => {
                    return Err(err(
                        format!("cannot read client certificate {}: {e}", cert.display()),
                        "check the path and that the file is PEM",
                    ))
                }
            };
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                err(
                    format!("cannot read client key {}: {e}", key.display()),
                    "check the path and that the file holds a PEM private key",
                )
            })?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                err(
                    format!("client certificate and key do not match: {e}"),
                    "use the key that belongs to this certificate",
                )
            })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn roots(t: &UpstreamTls) -> Result<RootCertStore, (String, &'static str)> {
    let mut roots = RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(|i| i.collect())
                .map_err(|e| {
                    (
                        format!("cannot read CA bundle {}: {e}", ca.display()),
                        "check the path and that the file is PEM",
                    )
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err((
                    format!("no usable CA certificate in {}", ca.display()),
                    "give a PEM file with at least one CA CERTIFICATE block",
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading a system root certificate failed");
            }
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err((
                    "no system root certificates found".to_string(),
                    "install the system CA bundle (ca-certificates) or set ca = \"<file>\"",
                ));
            }
        }
    }
    Ok(roots)
}

/// `insecure_skip_verify`: any certificate is accepted, but handshake
/// signatures are still checked so the session keys stay sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
