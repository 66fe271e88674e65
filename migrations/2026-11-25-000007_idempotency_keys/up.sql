-- Idempotency keys of the API: the response a key answered with, and a fingerprint of the
-- request that used it. Written in the same transaction as the request's effect, so a key
-- is recorded exactly when its effect is. The same key with another request is refused.
CREATE TABLE idempotency_keys (
    caller      text        NOT NULL,             -- who used the key ('' while the API is open)
    key         text        NOT NULL,
    fingerprint text        NOT NULL,             -- sha256 of method, path and canonical body
    status      smallint    NOT NULL,             -- the response's status code
    response    jsonb       NOT NULL,             -- the response's body
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);
-- Expiry: keys older than the retention are ignored, then deleted.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
