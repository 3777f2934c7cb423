//! The platform's services as tests, benchmarks and drills configure them.

use service_kit::ServiceConfig;

/// A service's settings for a test: its defaults, listening on a free port of the
/// loopback, on `database_url`, `bootstrap` and topics named with `prefix`, stopping
/// without a drain (no load balancer sends it requests).
pub fn test_config<C: ServiceConfig>(database_url: &str, bootstrap: &str, prefix: &str) -> C {
    let mut config = C::load_from([C::NAMING.consumer_group]);
    let service = config.service_mut();
    service.database_url = database_url.to_owned();
    service.kafka.connection = ::kafka::Connection::plaintext(bootstrap);
    service.kafka.topic_prefix = prefix.to_owned();
    service.listen = ([127, 0, 0, 1], 0).into();
    service.shutdown_drain_secs = 0;
    config
}
