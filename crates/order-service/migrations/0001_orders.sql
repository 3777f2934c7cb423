-- Orders, the idempotency keys that make POST /orders safe to retry, and the outbox that
-- carries each order's events to Kafka in the same transaction as the order itself.

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

CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,       -- publication order
    topic         TEXT NOT NULL,
    message_key   TEXT NOT NULL,
    payload       BYTEA NOT NULL,              -- the exact bytes to publish
    headers       JSONB NOT NULL DEFAULT '{}', -- name -> text value
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- Wakes the relay as soon as a transaction that wrote events commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
