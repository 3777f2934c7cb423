//! Slow and idle clients cannot exhaust a service: connections that send nothing, or stop
//! halfway through a body, are closed after a bounded time, and meanwhile a normal
//! request is still answered promptly.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// order-service with a 1 s header timeout and a 2 s request timeout.
async fn impatient_order_service() -> RunningService {
    let kafka = testkit::kafka::broker().await.expect("kafka");
    let db = fresh_database().await;
    let mut config = order_config(&db, kafka.bootstrap(), &topic_prefix());
    config.service.http.header_timeout_secs = 1;
    config.service.http.request_timeout_secs = 2;
    running_order_service(db, config).await
}

fn address(service: &RunningService) -> String {
    service.base_url.trim_start_matches("http://").to_owned()
}

/// A `POST /orders` that declares a 100-byte body and sends only `sent` of it.
async fn stalled_post(service: &RunningService, sent: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(address(service)).await.expect("connect");
    let mut request = b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
        Content-Length: 100\r\n\r\n"
        .to_vec();
    request.extend_from_slice(sent);
    stream.write_all(&request).await.expect("write");
    stream
}

/// Reads until the server closes the connection (or `limit` passes); what it sent.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    match tokio::time::timeout(limit, stream.read_to_end(&mut answer)).await {
        Ok(_) => Some(String::from_utf8_lossy(&answer).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_do_not_block_others() {
    within(MINUTES_2, async {
        let service = impatient_order_service().await;
        let address = address(&service);
        // 300 connections that say nothing, and 20 that stop in the middle of their
        // headers.
        let mut idle = Vec::new();
        for _ in 0..300 {
            idle.push(TcpStream::connect(&address).await.expect("connect"));
        }
        for _ in 0..20 {
            let mut stream = TcpStream::connect(&address).await.expect("connect");
            stream
                .write_all(b"GET /orders HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
            idle.push(stream);
        }

        let started = Instant::now();
        let response = service.get("/orders?limit=1").await;
        assert_eq!(response.status(), 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a normal request waited {:?} behind idle connections",
            started.elapsed()
        );

        // Every idle connection is closed by the server, within the header timeout (1 s)
        // and some slack.
        let started = Instant::now();
        for (i, stream) in idle.iter_mut().enumerate() {
            let answer = read_until_closed(stream, Duration::from_secs(5)).await;
            assert!(answer.is_some(), "idle connection {i} still open after 5 s");
        }
        assert!(started.elapsed() < Duration::from_secs(6));
    })
    .await;
}

#[tokio::test]
async fn a_body_that_stops_arriving_gets_408_and_leaves_nothing_behind() {
    within(MINUTES_2, async {
        let service = impatient_order_service().await;
        // Declares 100 bytes, sends 12, then nothing.
        let mut stream = stalled_post(&service, b"{\"amount\": 1").await;
        let started = Instant::now();
        let answer = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .expect("the server closes a stalled request within 10 s");
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "a stalled body is answered 408: {answer}"
        );
        assert!(answer.contains("application/problem+json"), "{answer}");
        assert!(answer.contains("HTTP_REQUEST_TIMEOUT_SECS"), "{answer}");
        assert!(started.elapsed() >= Duration::from_secs(1));
        assert_eq!(service.row_counts().await, (0, 0), "no order and no event");

        // The service still takes orders.
        let response = service.post_order(&json!({"amount": 5}), None).await;
        assert_eq!(response.status(), 201);
    })
    .await;
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_a_traceparent() {
    within(MINUTES_2, async {
        let service = impatient_order_service().await;
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let response = service
            .http
            .get(format!("{}/orders?limit=1", service.base_url))
            .header("traceparent", given)
            .header("x-request-id", "my-request-1")
            .send()
            .await
            .expect("GET");
        assert_eq!(response.headers()["x-request-id"], "my-request-1");
        let traceparent = response.headers()["traceparent"].to_str().expect("ascii");
        assert!(
            traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "the caller's trace continues: {traceparent}"
        );
        assert_ne!(traceparent, given, "with a span of this service's own");

        // Without them, both are made up; an unusable request id is replaced.
        let response = service
            .http
            .get(format!("{}/nowhere", service.base_url))
            .header("x-request-id", "has spaces in it")
            .send()
            .await
            .expect("GET");
        assert_eq!(response.status(), 404);
        let id = response.headers()["x-request-id"].to_str().expect("ascii");
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
        assert_eq!(response.headers()["traceparent"].len(), given.len());
    })
    .await;
}

#[tokio::test]
async fn requests_beyond_the_in_flight_bound_get_503_at_once_and_later_ones_are_served() {
    within(MINUTES_2, async {
        let kafka = testkit::kafka::broker().await.expect("kafka");
        let db = fresh_database().await;
        let mut config = order_config(&db, kafka.bootstrap(), &topic_prefix());
        config.service.http.request_timeout_secs = 2;
        config.service.http.max_in_flight = 1;
        let service = running_order_service(db, config).await;
        // One request in flight that never finishes its body holds the only place.
        let mut stalled = stalled_post(&service, b"{").await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        let started = Instant::now();
        let busy = service.get("/orders?limit=1").await;
        assert_eq!(busy.status(), 503, "beyond HTTP_MAX_IN_FLIGHT");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered at once"
        );
        assert_eq!(busy.headers()["retry-after"], "1");
        assert_eq!(busy.headers()["content-type"], "application/problem+json");

        // Once the stalled request is answered 408, the place is free again.
        let answer = read_until_closed(&mut stalled, Duration::from_secs(10))
            .await
            .expect("the stalled request ends");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(service.get("/orders?limit=1").await.status(), 200);
    })
    .await;
}
