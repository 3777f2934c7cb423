//! The order API: what `POST /orders` stores, how bad input is refused, and how an
//! `Idempotency-Key` makes a retry safe. On a real PostgreSQL.

use serde_json::{json, Value};

use crate::helpers::{
    eventually, fresh_database, order_api, order_config, running_order_service, topic_prefix,
    within, RunningService, MINUTES_2, SECONDS_30,
};

#[tokio::test]
async fn an_order_is_stored_pending_with_its_order_created_event_in_the_outbox() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let response = service.post_order(&json!({"amount": 222.22}), None).await;
        assert_eq!(response.status(), 201);
        let order: Value = response.json().await.expect("json");
        assert_eq!(order["amount"], json!(222.22));
        assert_eq!(order["currency"], "USD");
        assert_eq!(order["status"], "PENDING");
        assert!(order["created_at"].is_string());
        let id = order["id"].as_str().expect("id");

        let (payload, topic, key): (Vec<u8>, String, String) =
            sqlx::query_as("SELECT payload, topic, message_key FROM outbox")
                .fetch_one(service.db.pool())
                .await
                .expect("one outbox row");
        assert!(topic.ends_with(".order.created"), "{topic}"); // after the test's prefix
        assert_eq!(key, id);
        let event: events::Envelope<events::OrderCreated> =
            serde_json::from_slice(&payload).expect("an order.created envelope");
        assert_eq!(event.payload.order_id.to_string(), id);
        assert_eq!(event.payload.amount.to_string(), "222.22");
        assert_eq!(event.correlation_id.to_string(), id);

        let fetched: Value = service
            .get(&format!("/orders/{id}"))
            .await
            .json()
            .await
            .expect("json");
        assert_eq!(fetched, order);
    })
    .await;
}

#[tokio::test]
async fn amounts_are_kept_exactly() {
    within(MINUTES_2, async {
        let service = order_api().await;
        for (sent, kept) in [
            ("0.1", "0.10"),
            ("999999.99", "999999.99"),
            ("1000000", "1000000.00"),
            // Any notation JSON allows, at its exact value.
            ("1.5e2", "150.00"),
        ] {
            let body = format!(r#"{{"amount": {sent}, "currency": "EUR"}}"#);
            let response = service.post_raw(body, "application/json", None).await;
            assert_eq!(response.status(), 201, "{sent}");
            let text = response.text().await.expect("body");
            assert!(
                text.contains(&format!(r#""amount":{kept}"#)),
                "{sent} → {text}"
            );
        }
        let stored: Vec<String> =
            sqlx::query_scalar("SELECT amount::text FROM orders ORDER BY orders.amount")
                .fetch_all(service.db.pool())
                .await
                .expect("amounts");
        assert_eq!(stored, ["0.10", "150.00", "999999.99", "1000000.00"]);
    })
    .await;
}

/// A bad request body: what it is, the body, its content type, the status it must get and
/// what the problem's detail must say.
type BadBody = (&'static str, String, &'static str, u16, &'static str);

fn bad_bodies() -> Vec<BadBody> {
    let json = "application/json";
    vec![
        ("malformed JSON", r#"{"amount": 1"#.into(), json, 400, "EOF"),
        (
            "not JSON at all",
            "amount=1".into(),
            json,
            400,
            "expected value",
        ),
        (
            "wrong content type",
            r#"{"amount": 1}"#.into(),
            "text/plain",
            415,
            "application/json",
        ),
        (
            "missing amount",
            r#"{"currency": "USD"}"#.into(),
            json,
            422,
            "missing field `amount`",
        ),
        (
            "extra field",
            r#"{"amount": 1, "note": "x"}"#.into(),
            json,
            422,
            "unknown field `note`",
        ),
        (
            "zero",
            r#"{"amount": 0}"#.into(),
            json,
            422,
            "greater than zero",
        ),
        (
            "negative",
            r#"{"amount": -5}"#.into(),
            json,
            422,
            "greater than zero",
        ),
        (
            "too large",
            r#"{"amount": 1000000.01}"#.into(),
            json,
            422,
            "at most 1000000.00",
        ),
        (
            "three decimals",
            r#"{"amount": 1.005}"#.into(),
            json,
            422,
            "two decimal places",
        ),
        (
            "amount as text",
            r#"{"amount": "lots"}"#.into(),
            json,
            422,
            "JSON number",
        ),
        (
            "amount as a string of digits",
            r#"{"amount": "+5"}"#.into(),
            json,
            422,
            "not a string",
        ),
        (
            "amount as bool",
            r#"{"amount": true}"#.into(),
            json,
            422,
            "JSON number",
        ),
        (
            "amount given twice",
            r#"{"amount": 1, "amount": 2}"#.into(),
            json,
            422,
            "duplicate field `amount`",
        ),
        (
            "currency given twice",
            r#"{"amount": 1, "currency": "EUR", "currency": "USD"}"#.into(),
            json,
            422,
            "duplicate field `currency`",
        ),
        (
            "exponent too large",
            r#"{"amount": 1e400}"#.into(),
            json,
            422,
            "at most 1000000.00",
        ),
        (
            "unknown currency",
            r#"{"amount": 1, "currency": "XYZ"}"#.into(),
            json,
            422,
            "unknown currency",
        ),
        (
            "array body",
            r#"[5, "USD"]"#.into(),
            json,
            422,
            "expected a JSON object",
        ),
        (
            "oversized body",
            format!(r#"{{"amount": 1, "pad": "{}"}}"#, "x".repeat(20_000)),
            json,
            413,
            "at most",
        ),
    ]
}

/// `response` is an RFC 9457 problem with `status`, our problem type, and a detail that
/// says `says`.
async fn assert_refused_readably(case: &str, response: reqwest::Response, status: u16, says: &str) {
    assert_eq!(response.status().as_u16(), status, "{case}");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "{case}"
    );
    let problem: Value = response.json().await.expect("problem json");
    assert_eq!(problem["status"], json!(status), "{case}");
    let kind = problem["type"].as_str().unwrap_or_default();
    assert!(
        kind.starts_with("urn:order-platform:problem:"),
        "{case}: {kind}"
    );
    let detail = problem["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(says),
        "{case}: {detail:?} should say {says:?}"
    );
}

/// A valid order after bad requests: once its event is on the topic, anything the bad
/// requests had queued would be there before it. Exactly one record, and it is this
/// order's.
async fn only_the_valid_orders_event_is_published(service: &RunningService) {
    let good = service.post_order(&json!({"amount": 3.5}), None).await;
    assert_eq!(good.status(), 201);
    let good: Value = good.json().await.expect("json");
    let kafka = testkit::kafka::broker().await.expect("kafka").client();
    crate::helpers::eventually(MINUTES_2, "the valid order's event published", || async {
        kafka
            .record_count(&service.topics.order_created)
            .await
            .unwrap_or(0)
            > 0
    })
    .await;
    let published = kafka
        .read_all(&service.topics.order_created, MINUTES_2)
        .await
        .expect("read");
    assert_eq!(published.len(), 1, "nothing published for the bad requests");
    let event: Value =
        serde_json::from_slice(published[0].payload.as_deref().unwrap_or_default()).expect("event");
    assert_eq!(event["payload"]["order_id"], good["id"]);
    assert_eq!(service.row_counts().await, (1, 1), "one order, one event");
}

#[tokio::test]
async fn bad_input_gets_a_readable_4xx_and_leaves_nothing_behind() {
    within(MINUTES_2, async {
        let service = order_api().await;
        for (case, body, content_type, status, says) in bad_bodies() {
            let response = service.post_raw(body, content_type, None).await;
            assert_refused_readably(case, response, status, says).await;
        }
        // Idempotency-Keys outside the documented pattern.
        let long = "k".repeat(256);
        for key in ["with\ttab", long.as_str()] {
            let response = service
                .post_raw(r#"{"amount": 1}"#, "application/json", Some(key))
                .await;
            assert_eq!(response.status(), 400, "Idempotency-Key {key:?}");
            let problem: Value = response.json().await.expect("problem json");
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains("Idempotency-Key"), "{detail}");
        }
        assert_eq!(
            service.row_counts().await,
            (0, 0),
            "no order row and no event"
        );
        only_the_valid_orders_event_is_published(&service).await;
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_return_the_original_order_and_write_nothing_new() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let body = json!({"amount": 10.50, "currency": "GBP"});

        let first = service.post_order(&body, Some("retry-me")).await;
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.expect("json");

        let again = service.post_order(&body, Some("retry-me")).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let again: Value = again.json().await.expect("json");
        assert_eq!(again, first);

        assert_eq!(service.row_counts().await, (1, 1), "one order, one event");
    })
    .await;
}

#[tokio::test]
async fn idempotency_keys_are_forgotten_after_their_retention_and_a_later_retry_makes_a_new_order()
{
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let db = fresh_database().await;
        let mut config = order_config(&db, kafka.bootstrap(), &topic_prefix());
        config.service.retention.cleanup_interval_secs = 1;
        let service = running_order_service(db, config).await.ready().await;
        let body = json!({"amount": 3});
        let post = |key: &'static str| {
            let service = &service;
            let body = &body;
            async move {
                let response = service.post_order(body, Some(key)).await;
                assert_eq!(response.status(), 201, "{key}");
                let replayed = response.headers().contains_key("idempotent-replayed");
                let order: Value = response.json().await.expect("json");
                (order["id"].as_str().expect("id").to_owned(), replayed)
            }
        };
        let (old, _) = post("old-key").await;
        let (recent, _) = post("recent-key").await;

        // "old-key" was used 25 hours ago (the retention is 24), and 2,500 more keys too:
        // more than one batch of the clean-up.
        sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old-key'")
            .execute(service.db.pool())
            .await
            .expect("age the key");
        sqlx::query(
            "INSERT INTO idempotency_keys (key, fingerprint, order_id, created_at)
             SELECT 'aged-' || i, 'x', $1, now() - interval '25 hours' FROM generate_series(1, 2500) i",
        )
        .bind(uuid::Uuid::parse_str(&old).expect("uuid"))
        .execute(service.db.pool())
        .await
        .expect("aged keys");
        eventually(SECONDS_30, "the expired keys removed", || async {
            service.count("idempotency_keys").await == 1
        })
        .await;
        let kept: String = sqlx::query_scalar("SELECT key FROM idempotency_keys")
            .fetch_one(service.db.pool())
            .await
            .expect("the key kept");
        assert_eq!(kept, "recent-key");

        // Within the retention a retry is a replay; after it, the key makes a new order.
        assert_eq!(post("recent-key").await, (recent, true));
        let (again, replayed) = post("old-key").await;
        assert!(!replayed, "a forgotten key is not replayed");
        assert_ne!(again, old, "a new order");
        assert_eq!(service.row_counts().await, (3, 3), "three orders, three events");
    })
    .await;
}

#[tokio::test]
async fn concurrent_retries_with_one_key_create_one_order() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let body = json!({"amount": 7});
        let attempts = (0..10).map(|_| service.post_order(&body, Some("burst")));
        let responses = futures::future::join_all(attempts).await;
        let mut ids = Vec::new();
        for response in responses {
            assert_eq!(response.status(), 201);
            let order: Value = response.json().await.expect("json");
            ids.push(order["id"].as_str().expect("id").to_owned());
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "every attempt returns the same order");
        assert_eq!(service.row_counts().await, (1, 1));
    })
    .await;
}

#[tokio::test]
async fn the_same_idempotency_key_with_a_different_body_is_refused() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let first = service.post_order(&json!({"amount": 5}), Some("k1")).await;
        assert_eq!(first.status(), 201);

        let other = service.post_order(&json!({"amount": 6}), Some("k1")).await;
        assert_eq!(other.status(), 422);
        let problem: Value = other.json().await.expect("json");
        assert!(problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("different request"));
        assert_eq!(service.row_counts().await, (1, 1));
    })
    .await;
}

#[tokio::test]
async fn orders_are_listed_newest_first_in_pages_and_unknown_ids_are_404() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let mut created = Vec::new();
        for amount in 1..=5 {
            let order: Value = service
                .post_order(&json!({"amount": amount}), None)
                .await
                .json()
                .await
                .expect("json");
            created.push(order["id"].as_str().expect("id").to_owned());
        }
        created.reverse(); // newest first

        let page: Vec<Value> = service
            .get("/orders?limit=3")
            .await
            .json()
            .await
            .expect("json");
        let ids: Vec<&str> = page
            .iter()
            .map(|o| o["id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(ids, created[..3]);
        let next: Vec<Value> = service
            .get(&format!("/orders?limit=3&before={}", ids[2]))
            .await
            .json()
            .await
            .expect("json");
        let next: Vec<&str> = next
            .iter()
            .map(|o| o["id"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(next, created[3..]);

        assert_eq!(service.get("/orders?limit=0").await.status(), 400);
        assert_eq!(service.get("/orders?limit=201").await.status(), 400);
        let missing = service
            .get(&format!("/orders/{}", uuid::Uuid::now_v7()))
            .await;
        assert_eq!(missing.status(), 404);
        assert_eq!(service.get("/orders/not-a-uuid").await.status(), 400);
    })
    .await;
}

#[tokio::test]
async fn the_openapi_spec_and_swagger_ui_are_served() {
    within(MINUTES_2, async {
        let service = order_api().await;
        let spec: Value = service
            .get("/api-docs/openapi.json")
            .await
            .json()
            .await
            .expect("json");
        assert!(spec["paths"]["/orders"]["post"].is_object());
        assert!(spec["paths"]["/orders/{id}"]["get"].is_object());
        // The documents say what the service does: paging in the query, optional and
        // bounded; errors as problem+json; the body's rules.
        let list = &spec["paths"]["/orders"]["get"];
        let limit = list["parameters"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "limit"))
            .expect("a limit parameter");
        assert_eq!(limit["in"], "query", "{limit}");
        assert_ne!(limit["required"], true, "{limit}");
        assert_eq!(limit["schema"]["minimum"], 1, "{limit}");
        assert_eq!(limit["schema"]["maximum"], 200, "{limit}");
        assert!(
            list["responses"]["400"]["content"]["application/problem+json"].is_object(),
            "{}",
            list["responses"]["400"]
        );
        let body = &spec["components"]["schemas"]["CreateOrder"]["properties"];
        assert_eq!(body["amount"]["maximum"], 1000000, "{body}");
        let currencies = body["currency"]["enum"].as_array().expect("currency enum");
        assert!(currencies.contains(&json!("EUR")) && !currencies.contains(&Value::Null));
        for page in ["/swagger-ui/", "/swagger-ui/index.html"] {
            let ui = service.get(page).await;
            assert_eq!(ui.status(), 200, "{page}");
            assert!(ui.text().await.expect("html").contains("swagger"), "{page}");
        }
    })
    .await;
}
