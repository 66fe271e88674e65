DROP TABLE processed_replies;
DROP TABLE outbox;
DROP TABLE saga_history;
DROP TABLE sagas;
