//! Stopping is bounded and honest: a shutdown that runs out of time gives up within its
//! bound — closing the database included — and says so in its result, which becomes the
//! process's exit status.

use std::time::{Duration, Instant};

use crate::gateway_double::{answer_charges, approved, gateway};
use crate::helpers::{
    eventually, fresh_database, payment_config, produce_all, running_payment_service, topic_prefix,
    within, MINUTES_2,
};

#[tokio::test]
async fn a_shutdown_that_runs_out_of_time_gives_up_within_its_bound_and_says_so() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        // A charge that takes a minute: the batch in flight cannot finish in time.
        let gateway = gateway().await;
        answer_charges(&gateway, approved().set_delay(Duration::from_secs(60))).await;
        let db = fresh_database().await;
        let mut config = payment_config(
            &db,
            kafka.bootstrap(),
            &topic_prefix(),
            Some(&gateway.uri()),
        );
        config.gateway_timeout_ms = 120_000;
        config.service.shutdown_timeout_secs = 2;
        let mut payments = running_payment_service(db, config).await;
        produce_all(
            kafka.client(),
            &payments.topics.order_created,
            &testkit::scenario::order_created(1),
        )
        .await;
        eventually(MINUTES_2, "the charge is in flight", || async {
            !gateway
                .received_requests()
                .await
                .unwrap_or_default()
                .is_empty()
        })
        .await;

        let asked = Instant::now();
        let ended = payments.stop_and_wait().await;
        let took = asked.elapsed();
        let error = format!(
            "{:#}",
            ended.expect_err("a shutdown out of time is a failure")
        );
        assert!(error.contains("did not finish within 2s"), "{error}");
        // 2 s for the work, at most 5 s for closing the pool, and some slack.
        assert!(took < Duration::from_secs(10), "took {took:?}");
        assert_eq!(
            payments.count("payments").await,
            0,
            "nothing half-done was stored"
        );
    })
    .await;
}
