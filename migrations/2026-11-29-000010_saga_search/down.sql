DROP INDEX sagas_payload_user;
DROP INDEX sagas_payload_order;
DROP INDEX sagas_payload_campaign;
DROP INDEX sagas_status_updated;
DROP INDEX idempotency_keys_key;
