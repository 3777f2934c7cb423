//! PostgreSQL that requires TLS, as managed databases do: with `sslmode=verify-full` and
//! `sslrootcert` in its database URL, order-service connects over TLS (every one of its
//! connections, as the server sees them) and takes orders; a server whose certificate
//! another CA signed is refused at start, with the reason.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::tls::Certificates;
use testkit::PostgresServer;
use tokio::sync::OnceCell;

use crate::helpers::{order_config, running_order_service, topic_prefix, within, MINUTES_5};

/// The TLS server of this binary and the certificates it presents.
async fn tls_postgres() -> &'static (Certificates, PostgresServer) {
    static SERVER: OnceCell<(Certificates, PostgresServer)> = OnceCell::const_new();
    SERVER
        .get_or_init(|| async {
            let certificates = Certificates::new("order-platform test CA").expect("certificates");
            let server = PostgresServer::with_tls(&certificates.server)
                .await
                .expect("postgres with ssl=on");
            (certificates, server)
        })
        .await
}

/// `url` with `sslmode=verify-full` and `ca` as the root certificate.
fn verify_full(url: &str, ca: &std::path::Path) -> String {
    let join = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{join}sslmode=verify-full&sslrootcert={}",
        ca.display()
    )
}

#[tokio::test]
async fn with_verify_full_and_the_servers_ca_order_service_works_over_tls_only() {
    within(MINUTES_5, async {
        let (certificates, server) = tls_postgres().await;
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let db = server.fresh_database().await.expect("database");
        let mut config = order_config(&db, kafka.bootstrap(), &topic_prefix());
        config.service.database_url = format!(
            "{}&application_name=tls-test",
            verify_full(&db.url, &certificates.ca_file())
        );
        let orders = running_order_service(db, config).await.ready().await;
        for amount in [10, 20, 30] {
            let response = orders.post_order(&json!({ "amount": amount }), None).await;
            assert_eq!(response.status(), 201);
        }
        assert_eq!(orders.count("orders").await, 3);

        // As the server sees the service's connections (named by the URL): every one over
        // TLS.
        let (over_tls, all): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.application_name = 'tls-test'",
        )
        .bind(&orders.db.name)
        .fetch_one(orders.db.pool())
        .await
        .expect("pg_stat_ssl");
        assert!(all > 0, "the service holds connections");
        assert_eq!(over_tls, all, "every connection over TLS");
    })
    .await;
}

#[tokio::test]
async fn a_server_certificate_signed_by_another_ca_is_refused_at_start() {
    within(MINUTES_5, async {
        let (_, server) = tls_postgres().await;
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let other = Certificates::new("another CA").expect("certificates");
        let db = server.fresh_database().await.expect("database");
        let mut config = order_config(&db, kafka.bootstrap(), &topic_prefix());
        config.service.database_url = verify_full(&db.url, &other.ca_file());
        let started = Instant::now();
        let error = match order_service::build(config).await {
            Ok(_) => panic!("order-service trusted a server another CA signed"),
            Err(error) => format!("{error:#}"),
        };
        assert!(started.elapsed() < Duration::from_secs(30), "{error}");
        assert!(error.contains("certificate"), "says why: {error}");
    })
    .await;
}
