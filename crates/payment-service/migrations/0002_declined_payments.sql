-- A declined charge is stored as a FAILED payment, so the order is never charged again;
-- the gateway's reference (approved) or reason (declined) is kept with it.

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('COMPLETED', 'FAILED'));
ALTER TABLE payments ADD COLUMN gateway_reference TEXT;
ALTER TABLE payments ADD COLUMN decline_reason TEXT;
ALTER TABLE payments ADD CONSTRAINT payments_outcome_check CHECK (
    (status = 'COMPLETED' AND decline_reason IS NULL)
    OR (status = 'FAILED' AND decline_reason IS NOT NULL)
);
