//! A single-broker Kafka that only speaks securely, as a managed Kafka does: a SASL_SSL
//! listener (SCRAM-SHA-256 and SCRAM-SHA-512, users created when the storage is
//! formatted) and a mutual-TLS listener (a client certificate is required). Its
//! certificates are made when it starts; its CA is the only one that signs them.

use std::sync::Arc;
use std::time::Duration;

use ::kafka::{Connection, SaslMechanism, Secret, SecurityProtocol};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage};

use crate::images::kafka_image;
use crate::kafka::{KafkaClient, Node, SecureListeners};
use crate::runtime::{on_testkit, spawn_detached};
use crate::tls::{one_line, Certificates};
use crate::{engine, Error, Result};

/// The SCRAM user the broker knows, and its password.
pub const USER: &str = "orders";
pub const PASSWORD: &str = "orders-secret";

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The broker, its certificates, and connections to each of its listeners.
pub struct SecureKafka {
    certificates: Certificates,
    sasl_ssl: String,
    mtls: String,
    _container: Arc<ContainerAsync<GenericImage>>,
}

impl Drop for SecureKafka {
    fn drop(&mut self) {
        let container = self._container.clone();
        spawn_detached(async move { drop(container) });
    }
}

impl SecureKafka {
    /// Starts one and waits until it answers over SASL_SSL.
    pub async fn start() -> Result<Self> {
        on_testkit(async {
            engine::docker().await?;
            let certificates = Certificates::new("order-platform test CA")?;
            let (sasl_ssl_port, mtls_port) = (engine::free_port()?, engine::free_port()?);
            let node = Node::single(
                sasl_ssl_port,
                Some(SecureListeners {
                    sasl_ssl_port,
                    mtls_port,
                    properties: broker_properties(&certificates),
                    scram_users: ["SCRAM-SHA-256", "SCRAM-SHA-512"]
                        .map(|m| format!("{m}=[name={USER},password={PASSWORD}]"))
                        .join(";"),
                }),
            );
            let container = node
                .request(None)
                .start()
                .await
                .map_err(|source| Error::Start {
                    what: "Kafka (SASL_SSL and mutual TLS)".into(),
                    image: kafka_image().to_string(),
                    source,
                })?;
            let kafka = Self {
                certificates,
                sasl_ssl: format!("127.0.0.1:{sasl_ssl_port}"),
                mtls: format!("127.0.0.1:{mtls_port}"),
                _container: Arc::new(container),
            };
            kafka
                .client(kafka.sasl_ssl(SaslMechanism::ScramSha512, PASSWORD))
                .wait_for_brokers(1, READY_TIMEOUT)
                .await?;
            Ok(kafka)
        })
        .await
    }

    /// The SASL_SSL listener as [`USER`] with `password`, trusting the broker's CA.
    pub fn sasl_ssl(&self, mechanism: SaslMechanism, password: &str) -> Connection {
        let mut connection = Connection::plaintext(&self.sasl_ssl);
        connection.security_protocol = SecurityProtocol::SaslSsl;
        connection.sasl_mechanism = Some(mechanism);
        connection.sasl_username = Some(USER.into());
        connection.sasl_password = Some(Secret::new(password));
        connection.ssl_ca_location = Some(self.certificates.ca_file());
        connection
    }

    /// The mutual-TLS listener with the client certificate, trusting the broker's CA.
    pub fn mtls(&self) -> Connection {
        let (certificate, key) = self.certificates.client_files();
        let mut connection = Connection::plaintext(&self.mtls);
        connection.security_protocol = SecurityProtocol::Ssl;
        connection.ssl_ca_location = Some(self.certificates.ca_file());
        connection.ssl_certificate_location = Some(certificate);
        connection.ssl_key_location = Some(key);
        connection
    }

    /// Test-kit helpers over `connection`.
    pub fn client(&self, connection: Connection) -> KafkaClient {
        KafkaClient::over(connection)
    }

    pub fn certificates(&self) -> &Certificates {
        &self.certificates
    }
}

/// The broker's certificate and trust, SCRAM on the SASL_SSL listener, a client
/// certificate required on the mutual-TLS one.
fn broker_properties(certificates: &Certificates) -> String {
    let scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
    [
        "ssl.keystore.type=PEM".to_owned(),
        format!(
            "ssl.keystore.certificate.chain={}",
            one_line(&certificates.server.certificate)
        ),
        format!("ssl.keystore.key={}", one_line(&certificates.server.key)),
        "ssl.truststore.type=PEM".to_owned(),
        format!("ssl.truststore.certificates={}", one_line(&certificates.ca)),
        "listener.name.secure.sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512".to_owned(),
        format!("listener.name.secure.scram-sha-256.sasl.jaas.config={scram}"),
        format!("listener.name.secure.scram-sha-512.sasl.jaas.config={scram}"),
        "listener.name.mtls.ssl.client.auth=required".to_owned(),
    ]
    .join("\n")
}
