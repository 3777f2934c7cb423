//! The stand-in's book: the charges it made and every request it received.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A charge the stand-in made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub id: Uuid,
    pub idempotency_key: String,
    pub order_id: String,
    /// The amount as the request wrote it (a JSON number).
    pub amount: String,
    pub currency: String,
    /// `approved` or `declined`.
    pub status: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// In order of arrival, from 0.
    pub seq: u64,
    /// `POST` (a charge) or `GET` (an inquiry).
    pub method: String,
    pub idempotency_key: String,
    /// The order the body names (a charge request).
    pub order_id: Option<String>,
    pub amount: Option<String>,
    pub currency: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_ms: i64,
    /// When it ended (answered, or the connection gone); `None` while in flight.
    pub ended_ms: Option<i64>,
    /// What it was answered: `approved`, `declined`, `none`, `409`, `422`, `503`, `401`,
    /// `hung`, `lost` (charged, then the connection dropped), …
    pub answer: String,
    /// The charge it created, if it created one.
    pub created: Option<Uuid>,
}

/// Charges and requests, optionally written through to a file as requests end.
pub(crate) struct Book {
    charges: Vec<Charge>,
    /// Key → the latest charge made under it, and when (for forgetting keys).
    by_key: HashMap<String, (usize, Instant, String)>,
    requests: Vec<RequestRecord>,
    /// Requests in flight per key.
    in_flight: HashMap<String, u32>,
    file: Option<std::io::BufWriter<std::fs::File>>,
}

/// What a charge request finds.
pub(crate) enum Found {
    /// A charge under this key, made for the same request.
    Same(Charge),
    /// A charge under this key, for another request.
    Other,
    /// No charge remembered under this key.
    Nothing,
}

impl Book {
    pub fn new(path: Option<&Path>) -> std::io::Result<Self> {
        let file = match path {
            Some(path) => Some(std::io::BufWriter::new(std::fs::File::create(path)?)),
            None => None,
        };
        Ok(Self {
            charges: Vec::new(),
            by_key: HashMap::new(),
            requests: Vec::new(),
            in_flight: HashMap::new(),
            file,
        })
    }

    /// Records the start of a request; returns its sequence number.
    pub fn begin(&mut self, mut request: RequestRecord) -> u64 {
        request.seq = self.requests.len() as u64;
        *self
            .in_flight
            .entry(request.idempotency_key.clone())
            .or_default() += 1;
        let seq = request.seq;
        self.requests.push(request);
        seq
    }

    /// Other requests of `key` in flight besides one.
    pub fn others_in_flight(&self, key: &str) -> bool {
        self.in_flight.get(key).copied().unwrap_or(0) > 1
    }

    /// Records how request `seq` ended, and writes it through.
    pub fn end(&mut self, seq: u64, answer: &str, created: Option<Uuid>) {
        let Some(request) = self.requests.get_mut(seq as usize) else {
            return;
        };
        if request.ended_ms.is_some() {
            return;
        }
        request.ended_ms = Some(now_ms());
        request.answer = answer.to_owned();
        if created.is_some() {
            request.created = created;
        }
        if let Some(n) = self.in_flight.get_mut(&request.idempotency_key) {
            *n = n.saturating_sub(1);
        }
        let line = serde_json::to_string(&*request).unwrap_or_default();
        if let Some(file) = self.file.as_mut() {
            let _ = writeln!(file, "{line}").and_then(|()| file.flush());
        }
    }

    /// The charge remembered under `key` (unless forgotten after `retention`), compared
    /// with the request's `fingerprint`.
    pub fn find(&self, key: &str, fingerprint: &str, retention: Option<Duration>) -> Found {
        match self.by_key.get(key) {
            Some((_, at, _)) if retention.is_some_and(|r| at.elapsed() > r) => Found::Nothing,
            Some((index, _, print)) if print == fingerprint => {
                Found::Same(self.charges[*index].clone())
            }
            Some(_) => Found::Other,
            None => Found::Nothing,
        }
    }

    /// The latest charge made under `key`, forgotten or not (providers keep charges).
    pub fn charge_of(&self, key: &str) -> Option<Charge> {
        self.charges
            .iter()
            .rev()
            .find(|c| c.idempotency_key == key)
            .cloned()
    }

    pub fn add_charge(&mut self, charge: Charge, fingerprint: String) {
        self.by_key.insert(
            charge.idempotency_key.clone(),
            (self.charges.len(), Instant::now(), fingerprint),
        );
        self.charges.push(charge);
    }

    pub fn charges(&self) -> Vec<Charge> {
        self.charges.clone()
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.requests.clone()
    }
}

/// Pairs of charge requests (`POST`) of one key that were in flight at the same time, as
/// `(earlier, later)` sequence numbers. A request still in flight counts as ending now.
pub fn overlapping(requests: &[RequestRecord]) -> Vec<(u64, u64)> {
    let mut by_key: HashMap<&str, Vec<&RequestRecord>> = HashMap::new();
    for request in requests.iter().filter(|r| r.method == "POST") {
        by_key
            .entry(request.idempotency_key.as_str())
            .or_default()
            .push(request);
    }
    let now = now_ms();
    let mut pairs = Vec::new();
    for list in by_key.values_mut() {
        list.sort_by_key(|r| (r.started_ms, r.seq));
        for (i, a) in list.iter().enumerate() {
            let a_end = a.ended_ms.unwrap_or(now);
            for b in &list[i + 1..] {
                if b.started_ms < a_end {
                    pairs.push((a.seq, b.seq));
                }
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(seq: u64, key: &str, started_ms: i64, ended_ms: Option<i64>) -> RequestRecord {
        RequestRecord {
            seq,
            method: "POST".into(),
            idempotency_key: key.into(),
            order_id: Some(key.into()),
            amount: None,
            currency: None,
            started_ms,
            ended_ms,
            answer: "approved".into(),
            created: None,
        }
    }

    #[test]
    fn requests_of_one_key_that_were_in_flight_together_overlap() {
        let requests = [
            post(0, "a", 100, Some(200)),
            // Starts before the first ended.
            post(1, "a", 150, Some(160)),
            // Starts as the first ends: no overlap.
            post(2, "a", 200, Some(300)),
            // Another key at the same time.
            post(3, "b", 150, Some(400)),
        ];
        assert_eq!(overlapping(&requests), vec![(0, 1)]);
    }
}
