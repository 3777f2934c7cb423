//! Slot leases: how relays share the outbox. Every row has a slot (a hash of its key, one
//! of [`SLOTS`]); a relay publishes only the rows of the slots it holds a lease on, so a
//! key's rows go out through one relay at a time, in order, while N relays publish in
//! parallel.
//!
//! Each relay, every `renew_every`: says it is alive (`outbox_relays`), renews its
//! leases, and takes its fair share of the slots (all of them divided by the relays
//! alive): it gives back what it holds beyond its share and claims free or expired slots
//! up to it (`FOR UPDATE SKIP LOCKED`, the fencing token growing with each new holder).
//! A relay that stops renewing — killed, frozen, cut off — loses its slots after
//! `lease`; the others then take them. No lock or transaction is ever held across Kafka
//! I/O: a relay checks its own lease before it sends, against its own clock (a frozen
//! process that wakes finds its lease run out), and marks rows published only while it
//! still holds their slot. What a relay sent and could not mark is sent again by the next
//! holder: at-least-once, which the consumers' inbox absorbs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use uuid::Uuid;

/// How many slots the outbox is divided into (fixed by the schema).
pub const SLOTS: i64 = 64;

/// The leases one relay holds.
pub(crate) struct Leases {
    /// This relay, as the leases and the registry name it.
    pub owner: Uuid,
    lease: Duration,
    /// Slot → (fencing token, valid until, by this process's clock).
    held: HashMap<i16, (i64, Instant)>,
}

/// A lease is trusted locally for this much less than its term.
const MARGIN: Duration = Duration::from_secs(1);

impl Leases {
    pub fn new(lease: Duration) -> Self {
        Self {
            owner: Uuid::new_v4(),
            lease,
            held: HashMap::new(),
        }
    }

    /// Whether this relay may send rows of `slot` now.
    pub fn holds(&self, slot: i16) -> bool {
        self.held
            .get(&slot)
            .is_some_and(|(_, until)| Instant::now() < *until)
    }

    /// The slots held now.
    pub fn slots(&self) -> Vec<i16> {
        let mut slots: Vec<i16> = self
            .held
            .iter()
            .filter(|(_, (_, until))| Instant::now() < *until)
            .map(|(slot, _)| *slot)
            .collect();
        slots.sort_unstable();
        slots
    }

    /// Says this relay is alive, renews its leases and takes its share of the slots.
    /// Returns the slots it gave up or lost.
    pub async fn renew(&mut self, pool: &PgPool) -> Result<Vec<i16>, sqlx::Error> {
        let asked = Instant::now();
        let until = asked + self.lease.saturating_sub(MARGIN);
        let term = self.lease.as_secs_f64();
        let live: i64 = sqlx::query_scalar(
            "WITH seen AS (
                 INSERT INTO outbox_relays (owner, seen_at) VALUES ($1, now())
                 ON CONFLICT (owner) DO UPDATE SET seen_at = now())
             SELECT 1 + count(*) FROM outbox_relays
             WHERE owner <> $1 AND seen_at > now() - make_interval(secs => $2)",
        )
        .bind(self.owner)
        .bind(term)
        .fetch_one(pool)
        .await?;
        let renewed: Vec<(i16, i64)> = sqlx::query_as(
            "UPDATE outbox_slots SET expires_at = now() + make_interval(secs => $2)
             WHERE owner = $1 RETURNING slot, fence",
        )
        .bind(self.owner)
        .bind(term)
        .fetch_all(pool)
        .await?;
        let before: Vec<i16> = self.held.keys().copied().collect();
        self.held = renewed.into_iter().map(|(s, f)| (s, (f, until))).collect();
        let mut gone: Vec<i16> = before
            .into_iter()
            .filter(|s| !self.held.contains_key(s))
            .collect();
        let share = (SLOTS + live - 1) / live.max(1);
        let held = self.held.len() as i64;
        if held > share {
            gone.extend(self.give_back(pool, held - share).await?);
        } else if held < share {
            self.claim(pool, share - held, until).await?;
        }
        metrics::gauge!("outbox_relay_slots").set(self.held.len() as f64);
        Ok(gone)
    }

    /// Gives back `count` of the slots held (the highest).
    async fn give_back(&mut self, pool: &PgPool, count: i64) -> Result<Vec<i16>, sqlx::Error> {
        let mut slots = self.slots();
        let extra: Vec<i16> = slots.split_off(slots.len().saturating_sub(count as usize));
        sqlx::query(
            "UPDATE outbox_slots SET owner = NULL, expires_at = '-infinity'
             WHERE owner = $1 AND slot = ANY($2)",
        )
        .bind(self.owner)
        .bind(&extra)
        .execute(pool)
        .await?;
        for slot in &extra {
            self.held.remove(slot);
        }
        tracing::debug!(slots = ?extra, "relay gave slots back");
        Ok(extra)
    }

    /// Claims up to `count` free or expired slots.
    async fn claim(
        &mut self,
        pool: &PgPool,
        count: i64,
        until: Instant,
    ) -> Result<(), sqlx::Error> {
        let claimed: Vec<(i16, i64)> = sqlx::query_as(
            "UPDATE outbox_slots SET owner = $1, fence = fence + 1,
                    expires_at = now() + make_interval(secs => $3)
             WHERE slot IN (SELECT slot FROM outbox_slots
                            WHERE owner IS NULL OR expires_at < now()
                            ORDER BY slot LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING slot, fence",
        )
        .bind(self.owner)
        .bind(count)
        .bind(self.lease.as_secs_f64())
        .fetch_all(pool)
        .await?;
        if !claimed.is_empty() {
            tracing::debug!(slots = claimed.len(), "relay claimed slots");
        }
        for (slot, fence) in claimed {
            self.held.insert(slot, (fence, until));
        }
        Ok(())
    }

    /// Gives every slot back (on a clean stop), so others take them at once.
    pub async fn release_all(&mut self, pool: &PgPool) {
        let released = sqlx::query(
            "UPDATE outbox_slots SET owner = NULL, expires_at = '-infinity' WHERE owner = $1",
        )
        .bind(self.owner)
        .execute(pool);
        let _ = tokio::time::timeout(Duration::from_secs(2), released).await;
        let gone = sqlx::query(
            "DELETE FROM outbox_relays WHERE owner = $1 OR seen_at < now() - interval '1 hour'",
        )
        .bind(self.owner)
        .execute(pool);
        let _ = tokio::time::timeout(Duration::from_secs(2), gone).await;
        self.held.clear();
    }
}
