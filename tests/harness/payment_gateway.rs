//! Charging through the payment gateway, a third party played by `wiremock` or the
//! stand-in gateway: every answer read for what it means (`docs/payment-gateway.md`).
//! A gateway that fails, hangs or loses its answer never loses an order and never
//! charges twice; only an answer about the order itself condemns it.

use std::time::Duration;

use gateway_stand_in::{overlapping, Fault, StandIn};
use kafka::dead_letter::headers;
use serde_json::Value;
use wiremock::ResponseTemplate;

use crate::gateway_double::{
    answer_charges, answer_charges_containing, answer_inquiry, approved, breaker_state,
    charges_containing, declined, gateway, inquiries_about, payment_service_at,
    payment_service_through, post_orders, stand_in,
};
use crate::helpers::{
    dead_letters, eventually, fresh_database, header_text, key_text, order_service, payment_config,
    produce_all, records_on, running_payment_service, topic_prefix, within, RunningService,
    MINUTES_2, MINUTES_5,
};

/// `records` on a fresh `prefix` topic, then payment-service charging through `gateway`:
/// it finds them all there.
async fn produced_then_started(
    gateway: &wiremock::MockServer,
    kafka: &testkit::kafka::KafkaBroker,
    prefix: &str,
    records: &[testkit::Record],
) -> RunningService {
    let topics = events::Topics::with_prefix(prefix);
    kafka
        .client()
        .create_topic(&topics.order_created, 6, 1)
        .await
        .expect("topic");
    produce_all(kafka.client(), &topics.order_created, records).await;
    payment_service_through(gateway, kafka.bootstrap(), prefix).await
}

/// Both services, payment-service charging through `gateway`.
async fn platform_through(
    gateway: &StandIn,
    kafka: &testkit::kafka::KafkaBroker,
) -> (RunningService, RunningService) {
    let prefix = topic_prefix();
    let orders = order_service(kafka.bootstrap(), &prefix).await;
    let payments = payment_service_at(&gateway.url(), kafka.bootstrap(), &prefix).await;
    (orders, payments)
}

/// Every order of `ids` is `PAID`, and charged exactly once at `gateway` with its own
/// amount; no two charge requests of one key overlapped; nothing was dead-lettered.
async fn every_order_paid_once(
    kafka: &testkit::kafka::KafkaBroker,
    gateway: &StandIn,
    orders: &RunningService,
    payments: &RunningService,
    ids: &[String],
) {
    eventually(MINUTES_2, "every order PAID", || async {
        orders.orders_with("PAID").await == ids.len() as i64
    })
    .await;
    assert_eq!(orders.count("orders").await, ids.len() as i64);
    for id in ids {
        let charges = gateway.charges_of(id);
        assert_eq!(charges.len(), 1, "one charge for order {id}: {charges:?}");
        assert_eq!(charges[0].status, "approved");
        let order: Value = orders
            .get(&format!("/orders/{id}"))
            .await
            .json()
            .await
            .expect("order");
        assert_eq!(charges[0].amount, order["amount"].to_string(), "{id}");
    }
    assert_eq!(
        overlapping(&gateway.requests()),
        vec![],
        "same-key requests overlapped"
    );
    let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
    assert_eq!(
        records_on(kafka.client(), &dlt).await,
        0,
        "nothing dead-lettered"
    );
}

/// The gateway down for everyone in the way `fault` says, for 30 s, while orders
/// arrive one at a time, one a second: nothing is dead-lettered, the breaker opens, and
/// once the gateway is back every order is paid, charged once.
async fn down_for_everyone_while_orders_arrive_one_a_second(fault: Fault) {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        let (orders, payments) = platform_through(&gateway, kafka).await;
        let first = post_orders(&orders, 1, Duration::from_millis(1)).await;
        eventually(MINUTES_2, "an order paid before the outage", || async {
            orders.orders_with("PAID").await == 1
        })
        .await;

        gateway.set_fault(fault);
        let watching = async {
            eventually(MINUTES_2, "the breaker opens", || async {
                !breaker_state(&payments).await.0
            })
            .await;
        };
        let (mut ids, ()) =
            tokio::join!(post_orders(&orders, 30, Duration::from_secs(1)), watching);
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            0,
            "an outage dead-letters nothing"
        );
        assert_eq!(
            orders.orders_with("PAID").await,
            1,
            "nothing paid during the outage"
        );

        gateway.set_fault(Fault::None);
        ids.extend(first);
        every_order_paid_once(kafka, &gateway, &orders, &payments, &ids).await;
        assert!(breaker_state(&payments).await.0, "the breaker closed again");
    })
    .await;
}

#[tokio::test]
async fn a_gateway_refusing_connections_for_everyone_dead_letters_nothing_and_all_orders_are_paid_once_after(
) {
    down_for_everyone_while_orders_arrive_one_a_second(Fault::Refuse).await;
}

#[tokio::test]
async fn a_gateway_answering_503_to_everyone_dead_letters_nothing_and_all_orders_are_paid_once_after(
) {
    down_for_everyone_while_orders_arrive_one_a_second(Fault::Unavailable).await;
}

#[tokio::test]
async fn a_gateway_hanging_past_the_timeout_for_everyone_dead_letters_nothing_and_all_orders_are_paid_once_after(
) {
    down_for_everyone_while_orders_arrive_one_a_second(Fault::Hang).await;
}

#[tokio::test]
async fn a_gateway_refusing_our_credentials_for_20_seconds_opens_the_breaker_dead_letters_nothing_and_all_are_paid_after(
) {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        let (orders, payments) = platform_through(&gateway, kafka).await;
        gateway.set_fault(Fault::Unauthorized);
        let (ids, ()) = tokio::join!(post_orders(&orders, 20, Duration::from_secs(1)), async {
            eventually(MINUTES_2, "the breaker opens", || async {
                !breaker_state(&payments).await.0
            })
            .await;
        });
        let unauthorized = gateway
            .requests()
            .iter()
            .filter(|r| r.answer == "401")
            .count();
        assert!(
            unauthorized >= 5,
            "the gateway answered 401 ({unauthorized} times)"
        );
        gateway.set_fault(Fault::None);
        every_order_paid_once(kafka, &gateway, &orders, &payments, &ids).await;
    })
    .await;
}

#[tokio::test]
async fn one_order_the_gateway_keeps_failing_while_others_succeed_is_retried_asked_about_then_dead_lettered(
) {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        let (orders, payments) = platform_through(&gateway, kafka).await;
        // The gateway fails every charge of the first order, and only of it.
        let stuck_order = orders
            .post_raw(r#"{"amount": 66.60}"#, "application/json", None)
            .await;
        assert_eq!(stuck_order.status(), 201);
        let stuck: Value = stuck_order.json().await.expect("json");
        let stuck = stuck["id"].as_str().expect("id").to_owned();
        gateway.fail_order(&stuck, Some(500));
        // Others arrive one at a time meanwhile, and go through.
        let others = post_orders(&orders, 15, Duration::from_millis(300)).await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        assert_eq!(key_text(&letters[0]), stuck);
        assert_eq!(
            header_text(&letters[0], headers::ERROR_CLASS),
            "gateway.unavailable"
        );
        assert_eq!(
            header_text(&letters[0], headers::ATTEMPTS),
            "3",
            "the configured attempts"
        );
        assert!(gateway.charges_of(&stuck).is_empty(), "never charged");
        let asked = gateway
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.idempotency_key == stuck)
            .count();
        assert!(
            asked >= 3,
            "asked about after each failed charge, before the dead letter: {asked}"
        );
        eventually(MINUTES_2, "the others paid", || async {
            orders.orders_with("PAID").await == others.len() as i64
        })
        .await;
        for id in &others {
            assert_eq!(gateway.charges_of(id).len(), 1, "{id}");
        }
        assert_eq!(
            orders.orders_with("PENDING").await,
            1,
            "only the dead-lettered one"
        );
    })
    .await;
}

#[tokio::test]
async fn a_charge_whose_answer_is_lost_is_learned_by_asking_and_never_made_twice() {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        let (orders, payments) = platform_through(&gateway, kafka).await;
        // It charges, then answers too late (past the 500 ms timeout)…
        gateway.set_fault(Fault::LateAnswers);
        let mut ids = post_orders(&orders, 3, Duration::from_millis(200)).await;
        eventually(MINUTES_2, "the three paid", || async {
            orders.orders_with("PAID").await == 3
        })
        .await;
        // …or charges, then drops the connection.
        gateway.set_fault(Fault::LoseAnswers { one_in: 1 });
        ids.extend(post_orders(&orders, 3, Duration::from_millis(200)).await);
        eventually(MINUTES_2, "the six paid", || async {
            orders.orders_with("PAID").await == 6
        })
        .await;
        gateway.set_fault(Fault::None);
        every_order_paid_once(kafka, &gateway, &orders, &payments, &ids).await;
        for id in &ids {
            assert_eq!(
                gateway.charge_requests_of(id),
                1,
                "charged once, then asked: {id}"
            );
        }
        let lost = gateway
            .requests()
            .iter()
            .filter(|r| r.answer == "late" || r.answer == "lost")
            .count();
        assert_eq!(lost, 6, "every answer was lost");
    })
    .await;
}

#[tokio::test]
async fn a_charge_in_progress_elsewhere_waits_without_using_an_attempt_and_is_paid_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let records = testkit::scenario::order_created(1);
        let order_id = key_text(&records[0]);
        let gateway = gateway().await;
        let in_progress =
            ResponseTemplate::new(409).set_body_string("a request with this key is in progress");
        answer_charges_containing(&gateway, &order_id, in_progress, Some(2)).await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.uri()));
        // One attempt: were a 409 to use one up, the order would be dead-lettered.
        config.service.consumer.max_attempts = 1;
        let mut payments = running_payment_service(db, config).await.ready().await;
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        eventually(MINUTES_2, "the order is paid", || async {
            payments.payments_with("COMPLETED").await == 1
        })
        .await;
        assert_eq!(charges_containing(&gateway, &order_id).await.len(), 3);
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(records_on(kafka.client(), &dlt).await, 0);
        let stats = payments.shut_down().await;
        assert!(stats.retried.is_empty(), "no attempt used: {stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_gateway_error_then_success_is_retried_and_charges_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let records = testkit::scenario::order_created(1);
        let order_id = key_text(&records[0]);
        let gateway = gateway().await;
        answer_charges_containing(&gateway, &order_id, ResponseTemplate::new(500), Some(1)).await;
        answer_charges(&gateway, approved()).await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &topic_prefix()).await;
        produce_all(kafka.client(), &payments.topics.order_created, &records).await;

        eventually(MINUTES_2, "the order is paid", || async {
            payments.payments_with("COMPLETED").await == 1
        })
        .await;
        let charges = charges_containing(&gateway, &order_id).await;
        assert_eq!(charges.len(), 2, "one failed attempt, one that succeeded");
        for charge in &charges {
            let key = charge
                .headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok());
            assert_eq!(
                key,
                Some(order_id.as_str()),
                "every attempt carries the order's key"
            );
        }
        assert_eq!(
            inquiries_about(&gateway, &order_id).await,
            1,
            "a 5xx may have charged: asked before charging again"
        );
        assert_eq!(payments.count("payments").await, 1);
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(
            records_on(kafka.client(), &dlt).await,
            0,
            "nothing dead-lettered"
        );
    })
    .await;
}

#[tokio::test]
async fn a_charge_the_gateway_refuses_is_dead_lettered_at_once() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges(
            &gateway,
            ResponseTemplate::new(400).set_body_string("unsupported currency"),
        )
        .await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &topic_prefix()).await;
        produce_all(
            kafka.client(),
            &payments.topics.order_created,
            &testkit::scenario::order_created(1),
        )
        .await;

        let letters = dead_letters(kafka.client(), &payments.topics.order_created, 1).await;
        assert_eq!(
            header_text(&letters[0], headers::ERROR_CLASS),
            "gateway.refused"
        );
        let reason = header_text(&letters[0], headers::ERROR_MESSAGE);
        assert!(reason.contains("unsupported currency"), "{reason}");
        assert_eq!(
            header_text(&letters[0], headers::ATTEMPTS),
            "1",
            "a refusal is not retried"
        );
        assert_eq!(
            gateway.received_requests().await.unwrap_or_default().len(),
            1
        );
        assert_eq!(payments.count("payments").await, 0);
    })
    .await;
}

#[tokio::test]
async fn a_declined_charge_fails_the_payment_and_the_order() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        answer_charges_containing(
            &gateway,
            r#""amount":13.13"#,
            declined("insufficient funds"),
            None,
        )
        .await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let orders = order_service(kafka.bootstrap(), &prefix).await;
        let payments = payment_service_through(&gateway, kafka.bootstrap(), &prefix).await;

        let mut ids = Vec::new();
        for amount in ["13.13", "20.00"] {
            let response = orders
                .post_raw(
                    format!(r#"{{"amount": {amount}}}"#),
                    "application/json",
                    None,
                )
                .await;
            assert_eq!(response.status(), 201);
            let order: Value = response.json().await.expect("json");
            ids.push(order["id"].as_str().expect("id").to_owned());
        }

        eventually(MINUTES_2, "one order failed, the other paid", || async {
            orders.orders_with("PAYMENT_FAILED").await == 1 && orders.orders_with("PAID").await == 1
        })
        .await;
        let json =
            |response: reqwest::Response| async { response.json::<Value>().await.expect("json") };
        let declined = json(orders.get(&format!("/orders/{}", ids[0])).await).await;
        assert_eq!(declined["status"], "PAYMENT_FAILED");
        let paid = json(orders.get(&format!("/orders/{}", ids[1])).await).await;
        assert_eq!(paid["status"], "PAID");
        let payment = json(payments.get(&format!("/payments/{}", ids[0])).await).await;
        assert_eq!(payment["status"], "FAILED");
        assert_eq!(payment["decline_reason"], "insufficient funds");

        let failed = kafka
            .client()
            .read_topic(&payments.topics.payment_failed, 1, MINUTES_2)
            .await
            .expect("payment.failed");
        let event: Value =
            serde_json::from_slice(failed[0].payload.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(event["event_type"], "payment.failed");
        assert_eq!(event["payload"]["order_id"], ids[0].as_str());
        assert_eq!(event["payload"]["reason"], "insufficient funds");
        assert_eq!(
            records_on(kafka.client(), &payments.topics.payment_failed).await,
            1
        );
    })
    .await;
}

#[tokio::test]
async fn a_gateway_outage_longer_than_the_poll_interval_keeps_the_group_and_charges_each_order_once(
) {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        gateway.set_fault(Fault::Unavailable);
        let records = testkit::scenario::order_created(5);
        let prefix = topic_prefix();
        let topics = events::Topics::with_prefix(&prefix);
        kafka
            .client()
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        produce_all(kafka.client(), &topics.order_created, &records).await;
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.url()));
        // The smallest the broker allows for a session: an outage of 15 s outlasts it
        // twice over.
        config.service.consumer.max_poll_interval_ms = 6_000;
        let mut payments = running_payment_service(db, config).await;

        eventually(
            MINUTES_2,
            "every order tried: the outage has begun",
            || async {
                records
                    .iter()
                    .all(|r| gateway.charge_requests_of(&key_text(r)) >= 1)
            },
        )
        .await;
        tokio::time::sleep(Duration::from_secs(15)).await;
        gateway.set_fault(Fault::None);
        eventually(MINUTES_2, "all five paid", || async {
            payments.payments_with("COMPLETED").await == 5
        })
        .await;
        for record in &records {
            assert_eq!(gateway.charges_of(&key_text(record)).len(), 1);
        }
        let stats = payments.shut_down().await;
        assert_eq!(
            stats.revocations, 0,
            "the group never took the partitions away: {stats:?}"
        );
        assert!(stats.outage_retries > 5, "{stats:?}");
        assert!(stats.retried.is_empty(), "no attempt used up: {stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_decline_reason_the_database_cannot_store_is_cleaned_and_every_order_settles() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        let records = testkit::scenario::order_created(4);
        let odd = key_text(&records[1]);
        // U+0000 cannot be stored in a TEXT column; control characters are removed.
        answer_charges_containing(&gateway, &odd, declined("card\u{0} blocked\u{7}"), None).await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        eventually(MINUTES_2, "every order settled", || async {
            payments.count("payments").await == 4
        })
        .await;
        assert_eq!(payments.payments_with("COMPLETED").await, 3);
        let reason: String =
            sqlx::query_scalar("SELECT decline_reason FROM payments WHERE status = 'FAILED'")
                .fetch_one(payments.db.pool())
                .await
                .expect("reason");
        assert_eq!(reason, "card blocked");
        let dlt = kafka::dead_letter_topic(&payments.topics.order_created);
        assert_eq!(records_on(kafka.client(), &dlt).await, 0);
    })
    .await;
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_not_read_and_the_gateway_is_asked_what_it_did() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = gateway().await;
        let records = testkit::scenario::order_created(4);
        let huge = key_text(&records[2]);
        let body = format!(
            r#"{{"status": "approved", "reference": "{}"}}"#,
            "r".repeat(payment_service::gateway::MAX_ANSWER_BYTES)
        );
        answer_charges_containing(
            &gateway,
            &huge,
            ResponseTemplate::new(200).set_body_raw(body, "application/json"),
            None,
        )
        .await;
        answer_inquiry(&gateway, &huge, approved()).await;
        answer_charges(&gateway, approved()).await;
        let prefix = topic_prefix();
        let payments = produced_then_started(&gateway, kafka, &prefix, &records).await;

        eventually(MINUTES_2, "all four paid", || async {
            payments.payments_with("COMPLETED").await == 4
        })
        .await;
        assert_eq!(
            charges_containing(&gateway, &huge).await.len(),
            1,
            "its answer unread, it was asked about, not charged again"
        );
        assert_eq!(inquiries_about(&gateway, &huge).await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_gateway_over_https_with_a_private_ca_is_trusted_only_with_that_ca() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let tls = gateway_stand_in::tls::private_ca("order-platform test CA").expect("CA");
        let gateway = StandIn::start_with(
            gateway_stand_in::Settings::strict(),
            ([127, 0, 0, 1], 0).into(),
            Some(tls.server.clone()),
            None,
        )
        .await
        .expect("stand-in over TLS");
        assert!(gateway.url().starts_with("https://localhost:"));
        let ca_file = std::env::temp_dir().join(format!("{}.pem", testkit::unique_name("ca")));
        std::fs::write(&ca_file, &tls.ca_pem).expect("CA file");

        // Without the CA: the certificate is not trusted, nothing reaches the gateway.
        let prefix = topic_prefix();
        let db = fresh_database().await;
        let config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.url()));
        let untrusting = running_payment_service(db, config).await.ready().await;
        let records = testkit::scenario::order_created(1);
        produce_all(kafka.client(), &untrusting.topics.order_created, &records).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(gateway.requests().is_empty(), "no request got through TLS");
        assert_eq!(untrusting.count("payments").await, 0);
        drop(untrusting);

        // With it: paid.
        let prefix = topic_prefix();
        let db = fresh_database().await;
        let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.url()));
        config.gateway_ca_file = Some(ca_file.clone());
        let trusting = running_payment_service(db, config).await.ready().await;
        produce_all(kafka.client(), &trusting.topics.order_created, &records).await;
        eventually(MINUTES_2, "the order paid over HTTPS", || async {
            trusting.payments_with("COMPLETED").await == 1
        })
        .await;
        assert_eq!(gateway.charges().len(), 1);
        let _ = std::fs::remove_file(ca_file);
    })
    .await;
}

#[tokio::test]
async fn instances_added_and_removed_mid_flow_never_charge_one_key_concurrently_and_pay_each_order_once(
) {
    within(MINUTES_5, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        // A charge takes a while, as at a card network: a batch is long enough to be in
        // flight when its partitions move.
        gateway.configure(|s| s.charge_delay = Some(Duration::from_millis(200)));
        let prefix = topic_prefix();
        let topics = events::Topics::with_prefix(&prefix);
        kafka
            .client()
            .create_topic(&topics.order_created, 6, 1)
            .await
            .expect("topic");
        let db = fresh_database().await;
        let instance = |db: testkit::TestDatabase| {
            let mut config = payment_config(&db, kafka.bootstrap(), &prefix, Some(&gateway.url()));
            config.gateway_timeout_ms = 5_000;
            async move { running_payment_service(db, config).await.ready().await }
        };
        let mut first = instance(db.shared()).await;
        let mut second = instance(db.shared()).await;

        let records = testkit::scenario::order_created(600);
        let producing = async {
            for chunk in records.chunks(10) {
                produce_all(kafka.client(), &topics.order_created, chunk).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        };
        let changing = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let third = instance(db.shared()).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
            let stopped = first.shut_down().await;
            (third, stopped)
        };
        let ((), (mut third, stopped)) = tokio::join!(producing, changing);

        eventually(MINUTES_2, "all 600 paid", || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM payments WHERE status = 'COMPLETED'")
                .fetch_one(db.pool())
                .await
                .unwrap_or(0)
                == 600
        })
        .await;
        let requests = gateway.requests();
        assert_eq!(
            overlapping(&requests),
            vec![],
            "two charge requests of one key at once"
        );
        for record in &records {
            assert_eq!(gateway.charges_of(&key_text(record)).len(), 1);
        }
        let dlt = kafka::dead_letter_topic(&topics.order_created);
        assert_eq!(records_on(kafka.client(), &dlt).await, 0);
        let revocations = stopped.revocations
            + second.shut_down().await.revocations
            + third.shut_down().await.revocations;
        assert!(
            revocations >= 2,
            "partitions moved twice at least: {revocations}"
        );
        assert!(stopped.processed > 0, "the removed instance had work");
    })
    .await;
}

#[tokio::test]
async fn a_dead_letter_replayed_after_the_gateway_forgot_its_key_is_asked_about_and_never_charged_twice(
) {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let gateway = stand_in().await;
        // Providers forget idempotency keys after about a day; this one after a second.
        gateway.configure(|s| s.key_retention = Some(Duration::from_secs(1)));
        let prefix = topic_prefix();
        let topics = events::Topics::with_prefix(&prefix);
        let dlt = kafka::dead_letter_topic(&topics.order_created);
        for topic in [&topics.order_created, &dlt] {
            kafka
                .client()
                .create_topic(topic, 6, 1)
                .await
                .expect("topic");
        }
        let record = testkit::scenario::order_created(1).remove(0);
        let order_id = key_text(&record);
        let event: Value =
            serde_json::from_slice(record.payload.as_deref().unwrap_or_default()).expect("event");
        // The gateway charged the order, but its answer never came back, and the order
        // was dead-lettered (as a payment-service that took a lost answer for "not
        // charged" would have done).
        let charged = reqwest::Client::new()
            .post(format!("{}/charges", gateway.url()))
            .header("idempotency-key", &order_id)
            .json(&event["payload"])
            .send()
            .await
            .expect("charge");
        assert_eq!(charged.status(), 200);
        let letter = record
            .clone()
            .header(headers::ORIGINAL_TOPIC, topics.order_created.as_str())
            .header(headers::ORIGINAL_PARTITION, "0")
            .header(headers::ORIGINAL_OFFSET, "0")
            .header(headers::ERROR_CLASS, "gateway.unavailable");
        produce_all(kafka.client(), &dlt, &[letter]).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;

        let payments = payment_service_at(&gateway.url(), kafka.bootstrap(), &prefix).await;
        let letters = redrive::read(
            kafka.connection(),
            &dlt,
            &redrive::Filter::default(),
            Duration::from_secs(30),
        )
        .await
        .expect("read the DLT");
        assert_eq!(letters.len(), 1);
        redrive::replay(kafka.connection(), &letters, None, |_| {})
            .await
            .expect("replay");
        eventually(MINUTES_2, "the replayed order is paid", || async {
            payments.payments_with("COMPLETED").await == 1
        })
        .await;
        assert_eq!(
            gateway.charges_of(&order_id).len(),
            1,
            "never charged twice"
        );
        assert_eq!(
            gateway.charge_requests_of(&order_id),
            1,
            "asked about, not charged again"
        );
    })
    .await;
}
