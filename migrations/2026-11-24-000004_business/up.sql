-- The participants' data. Every resource a lock protects carries `fence`: the largest
-- fencing token that wrote it. A write with a smaller token (a holder whose lease expired)
-- is refused, so an expired lock cannot cause a lost update.

CREATE TABLE products (
    sku         text        PRIMARY KEY,
    name        text        NOT NULL,
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    stock       integer     NOT NULL CHECK (stock >= 0),
    fence       bigint      NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- What each order saga reserved, so a release returns exactly that, once.
CREATE TABLE reservations (
    saga_id     uuid        NOT NULL,
    sku         text        NOT NULL REFERENCES products (sku),
    quantity    integer     NOT NULL CHECK (quantity > 0),
    released_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, sku)
);

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL,
    balance_cents bigint      NOT NULL CHECK (balance_cents >= 0),
    fence         bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One payment per saga: charged at most once, refunded at most once.
CREATE TABLE payments (
    saga_id      uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id),
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    charged_at   timestamptz NOT NULL DEFAULT now(),
    refunded_at  timestamptz
);

CREATE TABLE shipments (
    saga_id         uuid        PRIMARY KEY,
    tracking_number text        NOT NULL UNIQUE,
    address         jsonb       NOT NULL,
    prepared_at     timestamptz NOT NULL DEFAULT now(),
    cancelled_at    timestamptz
);

CREATE TABLE vendors (
    id              uuid        PRIMARY KEY,
    name            text        NOT NULL,
    balance_cents   bigint      NOT NULL DEFAULT 0 CHECK (balance_cents >= 0),
    -- A vendor whose payouts are disabled (e.g. verification pending) rejects payouts.
    payouts_enabled boolean     NOT NULL DEFAULT true,
    fence         bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per payout; a vendor's balance always equals the sum of its ledger.
CREATE TABLE vendor_ledger (
    id           bigserial   PRIMARY KEY,
    vendor_id    uuid        NOT NULL REFERENCES vendors (id),
    saga_id      uuid        NOT NULL UNIQUE,
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vendor_ledger_vendor ON vendor_ledger (vendor_id, id);

CREATE TABLE coupon_campaigns (
    id             uuid        PRIMARY KEY,
    vendor_id      uuid        NOT NULL REFERENCES vendors (id),
    kind           text        NOT NULL,
    title          text        NOT NULL,
    value_cents    bigint      NOT NULL CHECK (value_cents > 0),
    total_quantity integer     NOT NULL CHECK (total_quantity BETWEEN 1 AND 100),
    claimed        integer     NOT NULL DEFAULT 0 CHECK (claimed >= 0 AND claimed <= total_quantity),
    valid_from     timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL CHECK (valid_until > valid_from),
    fence          bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX coupon_campaigns_kind ON coupon_campaigns (kind);

CREATE TABLE coupon_claims (
    id           bigserial   PRIMARY KEY,
    campaign_id  uuid        NOT NULL REFERENCES coupon_campaigns (id),
    user_id      uuid        NOT NULL REFERENCES users (id),
    saga_id      uuid        UNIQUE,               -- NULL for the direct (synchronous) variant
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    unclaimed_at timestamptz
);
-- One live claim per user per campaign.
CREATE UNIQUE INDEX coupon_claims_one_per_user ON coupon_claims (campaign_id, user_id)
    WHERE unclaimed_at IS NULL;
CREATE INDEX coupon_claims_user ON coupon_claims (user_id, id);

-- Participants' inbox: a redelivered command re-sends the stored reply and does nothing else.
CREATE TABLE processed_commands (
    command_id   uuid        PRIMARY KEY,
    saga_id      uuid        NOT NULL,
    role         text        NOT NULL,
    reply        jsonb       NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Steps whose compensation ran (even with nothing to undo). A forward command that arrives
-- after its compensation is refused, so no reservation or charge is left hanging.
CREATE TABLE compensated_steps (
    saga_id        uuid        NOT NULL,
    step           integer     NOT NULL,
    compensated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step)
);
