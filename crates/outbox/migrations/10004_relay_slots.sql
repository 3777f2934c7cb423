-- Relays publish in parallel, each the rows of the slots it holds a lease on. A row's
-- slot is a hash of its key (md5, which never changes between PostgreSQL versions), so
-- every row of a key is published by one relay at a time, in order.
CREATE FUNCTION outbox_slot(key text) RETURNS smallint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT ((('x' || substr(md5(key), 1, 8))::bit(32)::int & 63)::smallint) $$;

ALTER TABLE outbox
    ADD COLUMN slot smallint NOT NULL GENERATED ALWAYS AS (outbox_slot(message_key)) STORED;

DROP INDEX IF EXISTS outbox_pending;
CREATE INDEX outbox_pending ON outbox (slot, id) WHERE published_at IS NULL AND parked_at IS NULL;

-- One lease per slot: its holder (a relay, by the id it took at start), a fencing token
-- that grows with every new holder, and when the lease runs out unless renewed.
CREATE TABLE outbox_slots (
    slot        smallint PRIMARY KEY,
    owner       uuid,
    fence       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO outbox_slots (slot) SELECT generate_series(0, 63);

-- Relays alive (seen recently), so each takes its share of the slots.
CREATE TABLE outbox_relays (
    owner    uuid PRIMARY KEY,
    seen_at  timestamptz NOT NULL
);
