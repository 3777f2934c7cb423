-- The moment an order was paid: set once, by the PENDING -> PAID transition; a
-- redelivered event leaves it unchanged.

ALTER TABLE orders ADD COLUMN paid_at TIMESTAMPTZ;
