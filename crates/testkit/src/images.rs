//! Which images the test kit runs, and how a Kafka node is started in them.
//!
//! Defaults are the official images; `OP_POSTGRES_IMAGE` and `OP_KAFKA_IMAGE` override them
//! (`just images-offline` builds look-alikes with no registry and prints those variables).
//! Both kinds are started through the same entry paths, so one code path serves both.

/// The official PostgreSQL image.
pub const DEFAULT_POSTGRES_IMAGE: &str = "postgres:17";
/// The official Apache Kafka image.
pub const DEFAULT_KAFKA_IMAGE: &str = "apache/kafka:4.4.0";

/// The script that formats storage and starts one KRaft node, configured by
/// `KAFKA_CFG_*` variables. docker-compose.yml mounts the very same file.
pub const KAFKA_LAUNCH_SCRIPT: &str = include_str!("../launch/kafka.sh");

/// An image reference split the way the engine API wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    pub name: String,
    pub tag: String,
}

impl ImageRef {
    /// Splits `registry:5000/name:tag`; a reference with no tag means `latest`.
    pub fn parse(reference: &str) -> Self {
        let slash = reference.rfind('/').map_or(0, |i| i + 1);
        match reference[slash..].rfind(':') {
            Some(colon) => Self {
                name: reference[..slash + colon].to_owned(),
                tag: reference[slash + colon + 1..].to_owned(),
            },
            None => Self {
                name: reference.to_owned(),
                tag: "latest".to_owned(),
            },
        }
    }

    fn from_env(variable: &str, default: &str) -> Self {
        match std::env::var(variable) {
            Ok(value) if !value.trim().is_empty() => Self::parse(value.trim()),
            _ => Self::parse(default),
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// `OP_POSTGRES_IMAGE`, or the official image.
pub fn postgres_image() -> ImageRef {
    ImageRef::from_env("OP_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE)
}

/// `OP_KAFKA_IMAGE`, or the official image.
pub fn kafka_image() -> ImageRef {
    ImageRef::from_env("OP_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_name_and_tag() {
        let parsed = ImageRef::parse("localhost:5000/order-platform/kafka:4.4.0");
        assert_eq!(parsed.name, "localhost:5000/order-platform/kafka");
        assert_eq!(parsed.tag, "4.4.0");
        assert_eq!(ImageRef::parse("postgres").tag, "latest");
        assert_eq!(
            ImageRef::parse("localhost:5000/pg").name,
            "localhost:5000/pg"
        );
        assert_eq!(
            ImageRef::parse("apache/kafka:4.1.1").to_string(),
            "apache/kafka:4.1.1"
        );
    }
}
