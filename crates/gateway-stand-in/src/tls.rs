//! TLS for the stand-in: a private certificate authority made at test time, and a
//! server certificate it signed for `localhost` and `127.0.0.1`, so a test can point
//! payment-service at `https://localhost:…` with `PAYMENT_GATEWAY_CA_FILE`.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// What the stand-in serves TLS with.
#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
}

/// A private certificate authority and a server certificate it signed.
pub struct PrivateCa {
    /// The authority's certificate, PEM: what a client is told to trust.
    pub ca_pem: String,
    /// The stand-in's side.
    pub server: ServerTls,
}

/// A fresh authority, named `name`, and a server certificate for `localhost` and
/// `127.0.0.1` signed by it.
pub fn private_ca(name: &str) -> anyhow::Result<PrivateCa> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let authority = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

    let mut leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    leaf.distinguished_name
        .push(DnType::CommonName, "stand-in gateway");
    let key = KeyPair::generate()?;
    let certificate = leaf.signed_by(&key, &authority)?;

    let chain = vec![
        certificate.der().clone(),
        CertificateDer::from(authority.der().to_vec()),
    ];
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    Ok(PrivateCa {
        ca_pem: authority.pem(),
        server: ServerTls {
            config: Arc::new(config),
        },
    })
}
