//! Certificates made at test time, for servers that require TLS (a Kafka listener, a
//! PostgreSQL with `ssl=on`) and clients that prove who they are (mutual TLS): a CA, a
//! server certificate for `localhost` and `127.0.0.1` signed by it, and a client
//! certificate signed by it. Their PEM files live in a folder of their own, removed on
//! drop.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{Error, Result};

/// A certificate with its private key, as PEM.
#[derive(Clone)]
pub struct Pem {
    pub certificate: String,
    pub key: String,
}

/// A CA and what it signed, written to PEM files.
pub struct Certificates {
    /// The CA's certificate, which clients and servers trust.
    pub ca: String,
    /// For `localhost` and `127.0.0.1`.
    pub server: Pem,
    /// Common name `client`, for mutual TLS.
    pub client: Pem,
    dir: PathBuf,
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Certificates {
    /// A new CA (named `authority`) and the certificates it signs, written to a new folder.
    pub fn new(authority: &str) -> Result<Self> {
        let fail = |e: rcgen::Error| Error::Unsupported(format!("making certificates: {e}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, authority);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;
        let sign = |names: Vec<String>, common: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names).map_err(fail)?;
            params.distinguished_name.push(DnType::CommonName, common);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().map_err(fail)?;
            let certificate = params.signed_by(&key, &ca).map_err(fail)?;
            Ok::<_, Error>(Pem {
                certificate: certificate.pem(),
                key: key.serialize_pem(),
            })
        };
        let server = sign(
            vec!["localhost".into(), "127.0.0.1".into()],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let client = sign(Vec::new(), "client", ExtendedKeyUsagePurpose::ClientAuth)?;
        let dir = std::env::temp_dir().join(crate::unique_name("certificates"));
        let certificates = Self {
            ca: ca.pem(),
            server,
            client,
            dir,
        };
        certificates.write()?;
        Ok(certificates)
    }

    fn write(&self) -> Result<()> {
        let io = |e: std::io::Error| Error::Unsupported(format!("writing certificates: {e}"));
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        for (name, text) in [
            ("ca.pem", &self.ca),
            ("server.pem", &self.server.certificate),
            ("server.key", &self.server.key),
            ("client.pem", &self.client.certificate),
            ("client.key", &self.client.key),
        ] {
            std::fs::write(self.dir.join(name), text).map_err(io)?;
        }
        Ok(())
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The client certificate's and key's files.
    pub fn client_files(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    /// The folder of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `text` on one line of a Java properties file: its newlines as `\n`.
pub fn one_line(text: &str) -> String {
    text.trim_end().replace('\n', "\\n")
}
