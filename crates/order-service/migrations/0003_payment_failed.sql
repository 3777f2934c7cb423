-- A declined payment moves its order to PAYMENT_FAILED (the saga's compensating step).

ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('PENDING', 'PAID', 'PAYMENT_FAILED'));
