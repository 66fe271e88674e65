-- The W3C trace context of a saga (its start) and of each outbox message, so that one saga
-- stays one trace across the outbox, the broker and restarts (see platform::telemetry).
ALTER TABLE sagas ADD COLUMN traceparent text;
ALTER TABLE outbox ADD COLUMN traceparent text;
