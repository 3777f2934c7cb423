-- The outbox: events a service published, written in the same transaction as its
-- business rows, waiting for the relay to send them to Kafka.

CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,       -- publication order
    topic         TEXT NOT NULL,
    message_key   TEXT NOT NULL,
    payload       BYTEA NOT NULL,              -- the exact bytes to publish
    headers       JSONB NOT NULL DEFAULT '{}', -- name -> text value
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ,
    -- Failed tries, the last error, and when the relay gave up: a parked row waits for
    -- `outbox requeue`, and later rows of its key wait behind it.
    attempts      INT NOT NULL DEFAULT 0,
    last_error    TEXT,
    parked_at     TIMESTAMPTZ
);

CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL AND parked_at IS NULL;
CREATE INDEX outbox_parked ON outbox (message_key, id)
    WHERE parked_at IS NOT NULL AND published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wakes the relay as soon as a transaction that wrote events commits.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
