ALTER TABLE outbox DROP COLUMN traceparent;
ALTER TABLE sagas DROP COLUMN traceparent;
