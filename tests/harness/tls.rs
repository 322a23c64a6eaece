//! A throw-away PKI for TLS tests: one CA, leaf certificates for chosen
//! names written as PEM files, client configs trusting the CA, and a probe
//! that reports which certificate a server presents for a given SNI.
//!
//! rustls is used with the `ring` provider passed explicitly, so no process
//! default provider needs installing.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// ALPN lists for client configs.
pub const ALPN_H2_H1: &[&[u8]] = &[b"h2", b"http/1.1"];
pub const ALPN_H1: &[&[u8]] = &[b"http/1.1"];

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A CA and a directory its leaf certificates are written to.
pub struct Pki {
    dir: tempfile::TempDir,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate on disk.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// PEM certificate chain (leaf, then CA).
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    pub names: Vec<String>,
}

impl Pki {
    pub fn new() -> Result<Pki> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "wasmgate e2e test CA");
        let ca = params.self_signed(&key)?;
        Ok(Pki {
            dir: tempfile::tempdir()?,
            ca_der: ca.der().clone(),
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a certificate for `names` and writes `<stem>.pem` and
    /// `<stem>.key` into the PKI's directory.
    pub fn leaf(&self, stem: &str, names: &[&str]) -> Result<Leaf> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = self.dir.path().join(format!("{stem}.pem"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, format!("{}{}", cert.pem(), self.ca_pem))?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(Leaf {
            cert: cert_path,
            key: key_path,
            der: cert.der().clone(),
            names,
        })
    }

    /// A client config that trusts only this CA and offers `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl Pki {
    /// The CA certificate as a PEM file in the PKI's directory (for
    /// `[upstreams.tls] ca`).
    pub fn ca_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }

    /// A server config presenting `leaf`, offering `alpn`; with
    /// `require_client_cert`, clients must present a certificate issued by
    /// this CA (mutual TLS).
    pub fn server_config(
        &self,
        leaf: &Leaf,
        alpn: &[&[u8]],
        require_client_cert: bool,
    ) -> Result<Arc<rustls::ServerConfig>> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivateKeyDer;
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(&leaf.cert)?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(&leaf.key)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let builder = if require_client_cert {
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let mut config = builder.with_single_cert(certs, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// DNS subject alt names of a DER certificate.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(|e| anyhow::anyhow!("bad subjectAltName: {e}"))?
    {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    Ok(names)
}

/// Accepts any server certificate (signatures are still checked), so the
/// probe can see which certificate a server picks even when it would not
/// verify for the requested name.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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

/// Connects to `addr` with the given SNI (`None`: send no SNI) and returns
/// the DNS names of the certificate the server presents.
pub async fn peer_names(addr: SocketAddr, sni: Option<&str>) -> Result<Vec<String>> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    config.enable_sni = sni.is_some();
    let (tls, _) =
        crate::client::tls_connect(addr, sni.unwrap_or("no-sni.invalid"), Arc::new(config)).await?;
    let certs = tls
        .get_ref()
        .1
        .peer_certificates()
        .context("server presented no certificate")?;
    dns_names(certs.first().context("empty certificate chain")?)
}
