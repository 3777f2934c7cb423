//! How every client reaches Kafka: the bootstrap servers, the security protocol (TLS,
//! SASL, both), the credentials, and any further librdkafka property the code does not
//! name. One [`Connection`], read from the environment at start, configures every client
//! a process makes: consumers, producers, admin clients, the dead-letter writer.
//!
//! A managed Kafka with SASL_SSL and SCRAM:
//!
//! ```text
//! KAFKA_BOOTSTRAP=b-1.example.net:9096,b-2.example.net:9096
//! KAFKA_SECURITY_PROTOCOL=SASL_SSL
//! KAFKA_SASL_MECHANISM=SCRAM-SHA-512
//! KAFKA_SASL_USERNAME=orders
//! KAFKA_SASL_PASSWORD=…            # never logged
//! KAFKA_SSL_CA_LOCATION=/etc/kafka/ca.pem   # if the brokers' CA is not a system one
//! KAFKA_PROPERTIES=client.rack=eu-west-1a,socket.keepalive.enable=true
//! ```
//!
//! Mutual TLS instead: `KAFKA_SECURITY_PROTOCOL=SSL` with `KAFKA_SSL_CERTIFICATE_LOCATION`
//! and `KAFKA_SSL_KEY_LOCATION`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::Error;

/// Where Kafka is and how to talk to it. Its `Debug` shows no password.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long = "kafka-bootstrap",
        alias = "bootstrap",
        env = "KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub bootstrap: String,

    /// How clients talk to the brokers: PLAINTEXT, SSL (TLS; mutual TLS with a client
    /// certificate and key), SASL_PLAINTEXT or SASL_SSL (SASL over TLS, as managed Kafka
    /// services offer).
    #[arg(
        long = "kafka-security-protocol",
        env = "KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true,
        default_value_t = SecurityProtocol::Plaintext
    )]
    pub security_protocol: SecurityProtocol,

    /// SASL mechanism with SASL_PLAINTEXT or SASL_SSL: PLAIN, SCRAM-SHA-256 or
    /// SCRAM-SHA-512.
    #[arg(
        long = "kafka-sasl-mechanism",
        env = "KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true
    )]
    pub sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// SASL password (never logged; prefer the environment to the command line).
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<Secret>,

    /// PEM file of the CA certificate(s) that signed the brokers' certificates, with SSL
    /// or SASL_SSL; the system's CA store when unset.
    #[arg(long = "kafka-ssl-ca-location", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<PathBuf>,

    /// PEM file of this client's certificate, for mutual TLS.
    #[arg(
        long = "kafka-ssl-certificate-location",
        env = "KAFKA_SSL_CERTIFICATE_LOCATION"
    )]
    pub ssl_certificate_location: Option<PathBuf>,

    /// PEM file of this client's private key, for mutual TLS.
    #[arg(long = "kafka-ssl-key-location", env = "KAFKA_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<PathBuf>,

    /// Password of the private key, if it is encrypted (never logged).
    #[arg(
        long = "kafka-ssl-key-password",
        env = "KAFKA_SSL_KEY_PASSWORD",
        hide_env_values = true
    )]
    pub ssl_key_password: Option<Secret>,

    /// Further librdkafka properties for every client, as name=value pairs separated by
    /// commas, e.g. `client.rack=eu1,socket.keepalive.enable=true,broker.address.family=v4`.
    /// Properties the platform sets itself for its guarantees (acks, idempotence, offset
    /// handling, group id, …) or that have a variable of their own are refused.
    #[arg(
        long = "kafka-properties",
        env = "KAFKA_PROPERTIES",
        default_value = "",
        hide_default_value = true
    )]
    pub properties: Properties,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    #[value(name = "PLAINTEXT")]
    Plaintext,
    #[value(name = "SSL")]
    Ssl,
    #[value(name = "SASL_PLAINTEXT")]
    SaslPlaintext,
    #[value(name = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// librdkafka's `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }

    fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "PLAIN")]
    Plain,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    /// librdkafka's `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// A value that is never shown: its `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, to hand to the client that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// librdkafka properties given by the user, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<(String, String)>);

impl Properties {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl FromStr for Properties {
    type Err = String;

    /// `name=value` pairs separated by commas; blanks around them are dropped. A value may
    /// contain `=` but not a comma.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut pairs = Vec::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!("{pair:?} is not name=value"));
            };
            let (name, value) = (name.trim(), value.trim());
            if name.is_empty() {
                return Err(format!("{pair:?} has no property name"));
            }
            if let Some(why) = reserved(name) {
                return Err(format!("{name} cannot be set here: {why}"));
            }
            pairs.push((name.to_owned(), value.to_owned()));
        }
        Ok(Self(pairs))
    }
}

/// Why a property may not be passed through, if it may not.
fn reserved(name: &str) -> Option<&'static str> {
    const OWN_VARIABLE: [(&str, &str); 9] = [
        ("bootstrap.servers", "use KAFKA_BOOTSTRAP"),
        ("metadata.broker.list", "use KAFKA_BOOTSTRAP"),
        ("security.protocol", "use KAFKA_SECURITY_PROTOCOL"),
        ("sasl.mechanism", "use KAFKA_SASL_MECHANISM"),
        ("sasl.mechanisms", "use KAFKA_SASL_MECHANISM"),
        ("sasl.username", "use KAFKA_SASL_USERNAME"),
        ("sasl.password", "use KAFKA_SASL_PASSWORD"),
        ("ssl.key.password", "use KAFKA_SSL_KEY_PASSWORD"),
        ("ssl.ca.location", "use KAFKA_SSL_CA_LOCATION"),
    ];
    const GUARANTEES: [&str; 12] = [
        "acks",
        "request.required.acks",
        "enable.idempotence",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "auto.offset.reset",
        "group.id",
        "group.instance.id",
        "isolation.level",
        "partition.assignment.strategy",
        "enable.partition.eof",
        "transactional.id",
    ];
    let name = name.to_ascii_lowercase();
    if let Some((_, why)) = OWN_VARIABLE.iter().find(|(n, _)| *n == name) {
        return Some(why);
    }
    match name.as_str() {
        "ssl.certificate.location" => Some("use KAFKA_SSL_CERTIFICATE_LOCATION"),
        "ssl.key.location" => Some("use KAFKA_SSL_KEY_LOCATION"),
        n if GUARANTEES.contains(&n) => Some("the platform sets it for its delivery guarantees"),
        _ => None,
    }
}

impl Connection {
    /// Plaintext to `bootstrap`, nothing else: the test kit's brokers, a local demo.
    pub fn plaintext(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            properties: Properties::default(),
        }
    }

    /// Whether the settings fit together and the files they name can be read: one
    /// sentence naming the variables when they do not.
    pub fn check(&self) -> Result<(), Error> {
        let protocol = self.security_protocol;
        let wrong = |why: String| Err(Error::Settings(why));
        if protocol.uses_sasl() {
            let missing: Vec<&str> = [
                ("KAFKA_SASL_MECHANISM", self.sasl_mechanism.is_none()),
                ("KAFKA_SASL_USERNAME", self.sasl_username.is_none()),
                ("KAFKA_SASL_PASSWORD", self.sasl_password.is_none()),
            ]
            .into_iter()
            .filter_map(|(name, absent)| absent.then_some(name))
            .collect();
            if !missing.is_empty() {
                return wrong(format!(
                    "KAFKA_SECURITY_PROTOCOL={} needs {}",
                    protocol_name(protocol),
                    missing.join(", ")
                ));
            }
        } else if self.sasl_mechanism.is_some()
            || self.sasl_username.is_some()
            || self.sasl_password.is_some()
        {
            return wrong(format!(
                "SASL settings are given but KAFKA_SECURITY_PROTOCOL={} does not use SASL \
                 (SASL_SSL or SASL_PLAINTEXT does)",
                protocol_name(protocol)
            ));
        }
        let files = [
            ("KAFKA_SSL_CA_LOCATION", &self.ssl_ca_location),
            (
                "KAFKA_SSL_CERTIFICATE_LOCATION",
                &self.ssl_certificate_location,
            ),
            ("KAFKA_SSL_KEY_LOCATION", &self.ssl_key_location),
        ];
        if !protocol.uses_tls() {
            if let Some((name, _)) = files.iter().find(|(_, path)| path.is_some()) {
                return wrong(format!(
                    "{name} is set but KAFKA_SECURITY_PROTOCOL={} does not use TLS \
                     (SSL or SASL_SSL does)",
                    protocol_name(protocol)
                ));
            }
        }
        if self.ssl_certificate_location.is_some() != self.ssl_key_location.is_some() {
            return wrong(
                "mutual TLS needs both KAFKA_SSL_CERTIFICATE_LOCATION and KAFKA_SSL_KEY_LOCATION"
                    .into(),
            );
        }
        for (name, path) in files {
            if let Some(path) = path {
                readable(name, path)?;
            }
        }
        Ok(())
    }

    /// Sets these settings on `config`: bootstrap, security, credentials, then the user's
    /// own properties.
    pub fn apply(&self, config: &mut ClientConfig) {
        config
            .set("bootstrap.servers", &self.bootstrap)
            .set("security.protocol", self.security_protocol.as_str());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.as_str());
        }
        if let Some(username) = &self.sasl_username {
            config.set("sasl.username", username);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password.expose());
        }
        let paths = [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (name, path) in paths {
            if let Some(path) = path {
                config.set(name, path.to_string_lossy());
            }
        }
        if let Some(password) = &self.ssl_key_password {
            config.set("ssl.key.password", password.expose());
        }
        for (name, value) in self.properties.iter() {
            config.set(name, value);
        }
    }

    /// Waits until the brokers answer a metadata request, for at most `limit`. Fails at
    /// once, with the brokers' reason, when they refuse this client: a wrong password, a
    /// certificate not trusted, a TLS handshake that fails. Otherwise the error says what
    /// the client last reported.
    pub async fn reach(&self, limit: Duration) -> Result<(), Error> {
        let mut config = ClientConfig::new();
        self.apply(&mut config);
        config.set("socket.timeout.ms", "10000");
        // A producer serves the client's error events, with their reasons, when polled.
        let client: BaseProducer<Witness> = config.create_with_context(Witness::default())?;
        let bootstrap = self.bootstrap.clone();
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            loop {
                let attempt = client
                    .client()
                    .fetch_metadata(None, Duration::from_millis(500));
                client.poll(Duration::ZERO);
                let (refusal, last) = client.context().seen();
                let unreachable = |why: String| Error::Unreachable {
                    bootstrap: bootstrap.clone(),
                    why,
                };
                match attempt {
                    Ok(metadata) if !metadata.brokers().is_empty() => return Ok(()),
                    _ if refusal.is_some() => return Err(unreachable(refusal.unwrap_or_default())),
                    attempt if started.elapsed() >= limit => {
                        let why = last.unwrap_or_else(|| {
                            attempt
                                .err()
                                .map_or("no broker answered".into(), |e| e.to_string())
                        });
                        return Err(unreachable(format!("no answer within {limit:?}: {why}")));
                    }
                    _ => {}
                }
            }
        })
        .await
        .map_err(|e| Error::Config(format!("reaching the brokers: {e}")))?
    }
}

/// The protocol as the variable spells it.
fn protocol_name(protocol: SecurityProtocol) -> &'static str {
    match protocol {
        SecurityProtocol::Plaintext => "PLAINTEXT",
        SecurityProtocol::Ssl => "SSL",
        SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
        SecurityProtocol::SaslSsl => "SASL_SSL",
    }
}

fn readable(name: &str, path: &Path) -> Result<(), Error> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| Error::Settings(format!("{name}={}: {e}", path.display())))
}

/// Errors a retry does not cure: the brokers refused this client. A TLS alert from the
/// broker (a client certificate required, a protocol refused) arrives as a transport
/// failure whose reason is OpenSSL's.
fn refused(code: RDKafkaErrorCode, reason: &str) -> bool {
    match code {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::SSL => true,
        RDKafkaErrorCode::BrokerTransportFailure => reason.contains("SSL routines::"),
        _ => false,
    }
}

/// What the client reported, for [`Connection::reach`]: the first refusal, and the last
/// error that says more than "all brokers are down".
#[derive(Default)]
struct Witness {
    seen: Mutex<(Option<String>, Option<String>)>,
}

impl Witness {
    fn seen(&self) -> (Option<String>, Option<String>) {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl ClientContext for Witness {
    fn error(&self, error: KafkaError, reason: &str) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        match error.rdkafka_error_code() {
            Some(code) if refused(code, reason) => {
                seen.0.get_or_insert_with(|| reason.to_owned());
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {}
            _ => seen.1 = Some(reason.to_owned()),
        }
    }
}

impl ProducerContext for Witness {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_are_name_value_pairs_in_order() {
        let parsed: Properties = " client.rack=eu1 , socket.keepalive.enable=true,"
            .parse()
            .unwrap();
        assert_eq!(
            parsed.iter().collect::<Vec<_>>(),
            [("client.rack", "eu1"), ("socket.keepalive.enable", "true")]
        );
        assert_eq!("".parse::<Properties>().unwrap(), Properties::default());
    }

    #[test]
    fn properties_the_platform_owns_are_refused_with_the_reason() {
        let err = "client.rack=eu1,acks=1".parse::<Properties>().unwrap_err();
        assert_eq!(
            err,
            "acks cannot be set here: the platform sets it for its delivery guarantees"
        );
        let err = "SASL.PASSWORD=x".parse::<Properties>().unwrap_err();
        assert_eq!(
            err,
            "SASL.PASSWORD cannot be set here: use KAFKA_SASL_PASSWORD"
        );
        assert_eq!(
            "client.rack".parse::<Properties>().unwrap_err(),
            "\"client.rack\" is not name=value"
        );
    }

    #[test]
    fn sasl_needs_a_mechanism_a_user_and_a_password() {
        let mut connection = Connection::plaintext("b:9092");
        connection.security_protocol = SecurityProtocol::SaslSsl;
        connection.sasl_username = Some("orders".into());
        let err = connection.check().unwrap_err().to_string();
        assert_eq!(
            err,
            "Kafka settings: KAFKA_SECURITY_PROTOCOL=SASL_SSL needs KAFKA_SASL_MECHANISM, \
             KAFKA_SASL_PASSWORD"
        );
        connection.sasl_mechanism = Some(SaslMechanism::ScramSha512);
        connection.sasl_password = Some(Secret::new("s3cret"));
        connection.check().unwrap();
    }

    #[test]
    fn settings_the_protocol_would_ignore_are_refused() {
        let mut connection = Connection::plaintext("b:9092");
        connection.sasl_username = Some("orders".into());
        assert!(connection
            .check()
            .unwrap_err()
            .to_string()
            .contains("does not use SASL"));
        let mut connection = Connection::plaintext("b:9092");
        connection.ssl_ca_location = Some("/etc/hostname".into());
        assert!(connection
            .check()
            .unwrap_err()
            .to_string()
            .contains("does not use TLS"));
        connection.security_protocol = SecurityProtocol::Ssl;
        connection.check().unwrap();
        connection.ssl_key_location = Some("/etc/hostname".into());
        assert!(connection
            .check()
            .unwrap_err()
            .to_string()
            .contains("needs both"));
        connection.ssl_certificate_location = Some("/nonexistent/cert.pem".into());
        assert!(connection
            .check()
            .unwrap_err()
            .to_string()
            .starts_with("Kafka settings: KAFKA_SSL_CERTIFICATE_LOCATION=/nonexistent/cert.pem: "));
    }

    #[test]
    fn no_password_is_shown_in_debug_output() {
        let mut connection = Connection::plaintext("b:9092");
        connection.sasl_password = Some(Secret::new("hunter2"));
        connection.ssl_key_password = Some(Secret::new("swordfish"));
        let shown = format!("{connection:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
    }

    #[test]
    fn applied_settings_reach_the_client_configuration() {
        let mut connection = Connection::plaintext("b:9092");
        connection.security_protocol = SecurityProtocol::SaslSsl;
        connection.sasl_mechanism = Some(SaslMechanism::ScramSha256);
        connection.sasl_username = Some("orders".into());
        connection.sasl_password = Some(Secret::new("pw"));
        connection.properties = "client.rack=eu1".parse().unwrap();
        let mut config = ClientConfig::new();
        connection.apply(&mut config);
        for (name, value) in [
            ("bootstrap.servers", "b:9092"),
            ("security.protocol", "sasl_ssl"),
            ("sasl.mechanism", "SCRAM-SHA-256"),
            ("sasl.username", "orders"),
            ("sasl.password", "pw"),
            ("client.rack", "eu1"),
        ] {
            assert_eq!(config.get(name), Some(value), "{name}");
        }
        assert_eq!(config.get("broker.address.family"), None, "not forced");
    }
}
