-- Orders, each driven by one order saga; the order's status is derived from its saga's.
CREATE TABLE orders (
    id               uuid        PRIMARY KEY,
    user_id          uuid        NOT NULL REFERENCES users (id),
    lines            jsonb       NOT NULL,
    total_cents      bigint      NOT NULL CHECK (total_cents > 0),
    shipping_address jsonb       NOT NULL,
    saga_id          uuid        NOT NULL UNIQUE REFERENCES sagas (id),
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_user ON orders (user_id, id);
