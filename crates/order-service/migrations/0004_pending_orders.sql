-- The orders still waiting for their payment, oldest first: for the
-- orders_pending_oldest_age_seconds gauge and `pending-orders`, without reading the table.
-- (An order leaving PENDING is then no HOT update: one more index entry per payment.)
CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'PENDING';
