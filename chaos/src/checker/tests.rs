//! The checker on made-up histories: a healthy run passes, and each rule catches the
//! failure it is for.

use super::*;

const EXPECT: Expectations = Expectations {
    rate: 1.0,
    flow_during_fault: true,
    grace: Duration::from_secs(0),
    recover_within: Duration::from_secs(60),
};

const START_MS: i64 = 1_000_000;

fn acknowledged(seq: u64, order_id: Uuid) -> Request {
    Request {
        seq,
        idempotency_key: format!("k-{seq}"),
        amount: "1.00".into(),
        started_ms: seq * 10,
        ended_ms: seq * 10 + 5,
        attempts: 1,
        outcome: Outcome::Acknowledged { order_id },
    }
}

fn order(id: Uuid, second: i64) -> OrderState {
    OrderState {
        id,
        status: "PAID".into(),
        amount: "12.50".into(),
        currency: "EUR".into(),
        created_ms: START_MS + second * 1000,
        paid_ms: Some(START_MS + second * 1000 + 40),
    }
}

fn payment(order_id: Uuid) -> PaymentState {
    PaymentState {
        order_id,
        status: "COMPLETED".into(),
        amount: "12.50".into(),
        currency: "EUR".into(),
    }
}

fn charge(order_id: Uuid, status: &str) -> Charge {
    Charge {
        id: Uuid::now_v7(),
        idempotency_key: order_id.to_string(),
        order_id: order_id.to_string(),
        amount: "12.5".into(),
        currency: "EUR".into(),
        status: status.into(),
        at_ms: 0,
    }
}

fn post(seq: u64, key: Uuid, started_ms: i64, ended_ms: i64) -> RequestRecord {
    RequestRecord {
        seq,
        method: "POST".into(),
        idempotency_key: key.to_string(),
        order_id: Some(key.to_string()),
        amount: Some("12.50".into()),
        currency: Some("EUR".into()),
        started_ms,
        ended_ms: Some(ended_ms),
        answer: "approved".into(),
        created: None,
    }
}

/// A healthy run of ten orders, one a second: each acknowledged, paid once, charged
/// once; a fault from 3 s to 5 s.
fn healthy() -> Observed {
    let ids: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let orders: Vec<OrderState> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| order(*id, i as i64))
        .collect();
    Observed {
        requests: ids
            .iter()
            .enumerate()
            .map(|(i, id)| acknowledged(i as u64, *id))
            .collect(),
        planned: 10,
        existing: ids.iter().copied().collect(),
        keys: ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("k-{i}"), *id))
            .collect(),
        payments: ids.iter().map(|id| payment(*id)).collect(),
        charges: ids.iter().map(|id| charge(*id, "approved")).collect(),
        gateway_requests: ids
            .iter()
            .enumerate()
            .map(|(i, id)| post(i as u64, *id, i as i64 * 1000, i as i64 * 1000 + 30))
            .collect(),
        transitions: ids
            .iter()
            .map(|id| Transition {
                order_id: *id,
                from: "PENDING".into(),
                to: "PAID".into(),
            })
            .collect(),
        timeline: vec![
            Second {
                accepted: 1,
                paid: 1
            };
            10
        ],
        fault: Some(Window {
            start_s: 3,
            grace_from_s: 3,
            heal_s: 5,
        }),
        started_ms: START_MS,
        orders: orders.clone(),
        ..Observed::default()
    }
}

fn failures(observed: &Observed, expect: &Expectations) -> Vec<String> {
    check(observed, expect).failures()
}

#[test]
fn a_healthy_run_passes() {
    let verdict = check(&healthy(), &EXPECT);
    assert!(verdict.passed(), "{:?}", verdict.failures());
    assert_eq!((verdict.acknowledged, verdict.paid), (10, 10));
    assert_eq!(verdict.latency_p50_ms, Some(40));
    assert_eq!(verdict.charge_requests_max, 1);
}

#[test]
fn a_lost_order_is_caught() {
    let mut observed = healthy();
    observed.orders.remove(1);
    let verdict = check(&observed, &EXPECT);
    assert_eq!(verdict.lost.len(), 1, "{:?}", verdict.lost);

    let mut observed = healthy();
    observed.orders[0].status = "PENDING".into();
    assert_eq!(check(&observed, &EXPECT).lost.len(), 1);
}

#[test]
fn a_paid_order_with_no_charge_is_caught() {
    let mut observed = healthy();
    observed.charges.remove(2);
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("PAID with 0 approved charges")),
        "{f:?}"
    );
}

#[test]
fn a_paid_order_charged_twice_or_with_two_payments_is_caught() {
    let mut observed = healthy();
    let id = observed.orders[1].id;
    observed.charges.push(charge(id, "approved"));
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("PAID with 2 approved charges")),
        "{f:?}"
    );

    let mut observed = healthy();
    let id = observed.orders[1].id;
    observed.payments.push(payment(id));
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("PAID with 2 payments")),
        "{f:?}"
    );
}

#[test]
fn an_approved_charge_for_a_failed_or_pending_order_is_caught() {
    let mut observed = healthy();
    observed.orders[3].status = "PAYMENT_FAILED".into();
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter()
            .any(|l| l.contains("PAYMENT_FAILED with 1 approved")),
        "{f:?}"
    );

    // Declined, and no approved charge: as it should be.
    let mut observed = healthy();
    let id = observed.orders[3].id;
    observed.orders[3].status = "PAYMENT_FAILED".into();
    observed.charges.retain(|c| c.order_id != id.to_string());
    observed.charges.push(charge(id, "declined"));
    observed.payments.retain(|p| p.order_id != id);
    assert!(
        check(&observed, &EXPECT).passed(),
        "{:?}",
        failures(&observed, &EXPECT)
    );
}

#[test]
fn a_charged_amount_that_differs_from_the_order_is_caught() {
    let mut observed = healthy();
    observed.charges[4].amount = "12.51".into();
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("was charged 12.51 EUR")),
        "{f:?}"
    );

    let mut observed = healthy();
    observed.charges[4].currency = "USD".into();
    assert!(!check(&observed, &EXPECT).passed());
}

#[test]
fn a_charge_for_an_order_that_does_not_exist_is_caught() {
    let mut observed = healthy();
    observed.charges.push(charge(Uuid::now_v7(), "approved"));
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("which does not exist")),
        "{f:?}"
    );
}

#[test]
fn a_run_whose_gateway_recorded_no_charge_fails() {
    let mut observed = healthy();
    observed.charges.clear();
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter()
            .any(|l| l.contains("the payment path was not used")),
        "{f:?}"
    );
}

#[test]
fn overlapping_requests_of_one_key_are_caught() {
    let mut observed = healthy();
    let key = observed.orders[5].id;
    observed.gateway_requests.push(post(99, key, 5_010, 5_050));
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter().any(|l| l.contains("in flight at the same time")),
        "{f:?}"
    );
}

#[test]
fn one_order_paid_during_a_long_tolerated_fault_is_not_progress() {
    let mut observed = healthy();
    observed.fault = Some(Window {
        start_s: 0,
        grace_from_s: 0,
        heal_s: 10,
    });
    let expect = Expectations {
        rate: 10.0,
        ..EXPECT
    };
    // Ten offered a second, one paid a second: far below half the offered rate.
    for second in &mut observed.timeline {
        second.accepted = 10;
    }
    let f = failures(&observed, &expect);
    assert!(
        f.iter().any(|l| l.contains("half the offered rate")),
        "{f:?}"
    );
}

#[test]
fn quiet_seconds_of_a_long_fault_after_the_load_ended_and_all_was_paid_are_no_stall() {
    let mut observed = healthy();
    observed.fault = Some(Window {
        start_s: 0,
        grace_from_s: 0,
        heal_s: 20,
    });
    // Everything offered was paid in the first ten seconds; the fault lasts ten more.
    observed.timeline.extend(vec![Second::default(); 10]);
    let expect = Expectations {
        rate: 1.0,
        ..EXPECT
    };
    let f = failures(&observed, &expect);
    assert!(
        !f.iter().any(|l| l.contains("half the offered rate")),
        "{f:?}"
    );
}

#[test]
fn orders_left_unpaid_after_the_load_ended_during_a_long_fault_are_a_stall() {
    let mut observed = healthy();
    observed.fault = Some(Window {
        start_s: 0,
        grace_from_s: 0,
        heal_s: 20,
    });
    // Ten accepted in the first second, none paid until the fault is over.
    observed.timeline = vec![Second::default(); 30];
    observed.timeline[0].accepted = 10;
    observed.timeline[25].paid = 10;
    let expect = Expectations {
        rate: 10.0,
        ..EXPECT
    };
    let f = failures(&observed, &expect);
    assert!(
        f.iter()
            .any(|l| l.contains("0 orders paid from 0 s to 5 s")),
        "{f:?}"
    );
}

#[test]
fn a_stall_that_begins_at_the_heal_of_a_tolerated_fault_while_load_goes_on_is_caught() {
    let mut observed = healthy();
    observed.fault = Some(Window {
        start_s: 0,
        grace_from_s: 0,
        heal_s: 5,
    });
    // Ten offered and paid a second, except for five seconds right after the heal: the
    // fault's own windows are fine, the stall lies after them.
    observed.timeline = vec![Second::default(); 20];
    for (s, second) in observed.timeline.iter_mut().enumerate() {
        second.accepted = 10;
        second.paid = if (5..10).contains(&s) { 0 } else { 10 };
    }
    let expect = Expectations {
        rate: 10.0,
        ..EXPECT
    };
    let f = failures(&observed, &expect);
    assert!(
        f.iter()
            .any(|l| l.contains("0 orders paid from 5 s to 10 s")),
        "{f:?}"
    );
}

#[test]
fn a_grace_counted_from_the_last_action_tolerates_a_stall_after_it_and_no_later_one() {
    let mut observed = healthy();
    // The last of the fault's actions at 10 s, each a failover of its own (5 s grace).
    observed.fault = Some(Window {
        start_s: 0,
        grace_from_s: 10,
        heal_s: 12,
    });
    observed.timeline = vec![Second::default(); 30];
    for (s, second) in observed.timeline.iter_mut().enumerate() {
        second.accepted = 10;
        let stalled = (10..15).contains(&s) || (20..25).contains(&s);
        second.paid = if stalled { 0 } else { 10 };
    }
    let expect = Expectations {
        rate: 10.0,
        grace: Duration::from_secs(5),
        ..EXPECT
    };
    let f = failures(&observed, &expect);
    assert!(
        !f.iter().any(|l| l.contains("from 10 s to 15 s")),
        "within the grace of the last action: {f:?}"
    );
    assert!(
        f.iter()
            .any(|l| l.contains("0 orders paid from 20 s to 25 s")),
        "after it: {f:?}"
    );
}

#[test]
fn a_key_reused_with_another_body_is_caught() {
    let mut observed = healthy();
    let key = observed.orders[6].id;
    let mut reused = post(98, key, 9_000, 9_010);
    reused.answer = "422".into();
    observed.gateway_requests.push(reused);
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter()
            .any(|l| l.contains("used before with another body")),
        "{f:?}"
    );
}

#[test]
fn a_stall_after_the_recovery_budget_is_caught() {
    let mut observed = healthy();
    // The last order waits 30 s, well after the fault (3 s to 5 s) and a 1 s budget.
    let last = observed.orders.len() - 1;
    observed.orders[last].paid_ms = Some(observed.orders[last].created_ms + 30_000);
    let expect = Expectations {
        recover_within: Duration::from_secs(1),
        ..EXPECT
    };
    let f = failures(&observed, &expect);
    assert!(f.iter().any(|l| l.contains("had waited")), "{f:?}");
}

#[test]
fn a_refused_request_fails_the_run() {
    let mut observed = healthy();
    observed.requests[0].outcome = Outcome::Refused {
        status: 422,
        detail: "no".into(),
    };
    let f = failures(&observed, &EXPECT);
    assert!(f.iter().any(|l| l.contains("was refused")), "{f:?}");
}

#[test]
fn an_unanswered_request_fails_the_run_unless_order_service_was_down_then() {
    let mut observed = healthy();
    observed.requests[2].outcome = Outcome::Indeterminate {
        last_error: "timed out".into(),
    };
    let f = failures(&observed, &EXPECT);
    assert!(
        f.iter()
            .any(|l| l.contains("never answered while order-service was up")),
        "{f:?}"
    );

    observed.orders_down = vec![(START_MS, START_MS + 1_000)];
    let verdict = check(&observed, &EXPECT);
    assert!(verdict.passed(), "{:?}", verdict.failures());
    assert_eq!(
        (verdict.indeterminate, verdict.indeterminate_existing),
        (1, 1)
    );
}

#[test]
fn fewer_requests_than_planned_fail_the_run() {
    let mut observed = healthy();
    observed.planned = 12;
    let f = failures(&observed, &EXPECT);
    assert!(f.iter().any(|l| l.contains("12 planned")), "{f:?}");
}

#[test]
fn a_stuck_consumer_or_relay_is_caught() {
    let mut observed = healthy();
    observed.lag.push(Lag {
        group: "payment-service".into(),
        topic: "order.created".into(),
        partition: 4,
        lag: 17,
    });
    let verdict = check(&observed, &EXPECT);
    assert_eq!((verdict.stuck.len(), verdict.max_lag), (1, 17));
    let mut observed = healthy();
    observed.unpublished = 3;
    assert!(!check(&observed, &EXPECT).passed());
}

#[test]
fn a_status_going_backwards_is_caught() {
    let mut observed = healthy();
    observed.transitions.push(Transition {
        order_id: observed.orders[0].id,
        from: "PAID".into(),
        to: "PENDING".into(),
    });
    assert_eq!(check(&observed, &EXPECT).wrong_order.len(), 1);
}

#[test]
fn a_run_that_did_nothing_fails() {
    let observed = Observed {
        timeline: vec![Second::default(); 5],
        ..Observed::default()
    };
    assert!(
        !check(&observed, &EXPECT).passed(),
        "a run that did nothing must never pass"
    );
}
