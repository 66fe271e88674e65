-- Operators find sagas by the business keys in their input (GET /v1/sagas?user_id=...),
-- and stuck ones by their last change (status + updated_before).
CREATE INDEX sagas_payload_user ON sagas ((payload->>'user_id'));
CREATE INDEX sagas_payload_order ON sagas ((payload->>'order_id'));
CREATE INDEX sagas_payload_campaign ON sagas ((payload->>'campaign_id'));
CREATE INDEX sagas_status_updated ON sagas (status, updated_at);
CREATE INDEX idempotency_keys_key ON idempotency_keys (key);
