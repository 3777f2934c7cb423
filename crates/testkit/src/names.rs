//! Unique names, so that tests running in parallel never share a topic, group or database.

/// `prefix` followed by a short random suffix: `orders-3f9a1c2b7d10`.
///
/// The result is a valid Kafka topic, consumer group and PostgreSQL identifier as long as
/// `prefix` is (ASCII letters, digits, `_` and `-`; PostgreSQL names should avoid `-`).
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_keep_their_prefix() {
        let a = unique_name("orders");
        let b = unique_name("orders");
        assert_ne!(a, b);
        assert!(a.starts_with("orders-"));
        assert_eq!(a.len(), "orders-".len() + 12);
    }
}
