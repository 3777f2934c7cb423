-- One payment per order: the unique order_id guards the money. The outbox that carries
-- payment.completed to Kafka, and the inbox of events already processed, are the outbox
-- crate's.

CREATE TABLE payments (
    id          UUID PRIMARY KEY,
    order_id    UUID NOT NULL UNIQUE,
    amount      NUMERIC(12, 2) NOT NULL CHECK (amount > 0 AND amount <= 1000000.00),
    currency    TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status      TEXT NOT NULL CHECK (status IN ('COMPLETED')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
