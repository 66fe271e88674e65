-- Every saga lifecycle event, as recorded by the notification worker.
CREATE TABLE notifications (
    event_id    uuid        PRIMARY KEY,          -- dedup of redelivered events
    saga_id     uuid        NOT NULL,
    saga        text        NOT NULL,
    kind        text        NOT NULL,
    step        integer,
    message     text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_saga ON notifications (saga_id, occurred_at);
CREATE INDEX notifications_kind ON notifications (kind, occurred_at);
CREATE INDEX notifications_recorded ON notifications (recorded_at DESC, event_id DESC);
