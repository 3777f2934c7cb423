-- Idempotency keys expire (ORDER_IDEMPOTENCY_KEY_RETENTION_HOURS): the clean-up finds
-- the old ones by age without reading the table.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
