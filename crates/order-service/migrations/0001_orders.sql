-- Orders, and the idempotency keys that make POST /orders safe to retry. The outbox that
-- carries each order's events to Kafka in the same transaction is the outbox crate's.

CREATE TABLE orders (
    id          UUID PRIMARY KEY,              -- UUIDv7: time-ordered, so "newest first" is ORDER BY id DESC
    amount      NUMERIC(12, 2) NOT NULL CHECK (amount > 0 AND amount <= 1000000.00),
    currency    TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      TEXT NOT NULL CHECK (status IN ('PENDING', 'PAID')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    -- The request's meaning (amount and currency), to refuse the same key with another body.
    fingerprint  TEXT NOT NULL,
    order_id     UUID NOT NULL REFERENCES orders (id) DEFERRABLE INITIALLY DEFERRED,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
