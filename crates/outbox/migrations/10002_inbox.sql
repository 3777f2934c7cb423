-- The inbox: the events each consumer applied, so that each is applied once.

CREATE TABLE processed_events (
    consumer      TEXT NOT NULL,
    event_id      UUID NOT NULL,
    processed_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- For the clean-up, which removes records older than the inbox's retention.
CREATE INDEX processed_events_age ON processed_events (processed_at);
