-- Consuming payment.completed: each event applied once, and the moment an order was paid.

CREATE TABLE processed_events (
    consumer      TEXT NOT NULL,
    event_id      UUID NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Set once, by the PENDING -> PAID transition; a redelivered event leaves it unchanged.
ALTER TABLE orders ADD COLUMN paid_at TIMESTAMPTZ;
