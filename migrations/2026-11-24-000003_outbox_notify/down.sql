DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION sagaflow_outbox_notify();
