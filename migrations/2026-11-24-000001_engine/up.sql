-- The saga engine: instances, their timeline, the outbox and the reply inbox.

CREATE TABLE sagas (
    id              uuid PRIMARY KEY,             -- v7: time-ordered
    definition      text        NOT NULL,
    status          text        NOT NULL,
    current_step    integer     NOT NULL DEFAULT 0,
    payload         jsonb       NOT NULL,         -- the saga's input
    state           jsonb       NOT NULL,         -- the pure core's state (steps, attempts, outputs)
    version         bigint      NOT NULL DEFAULT 0, -- optimistic concurrency guard
    idempotency_key text,
    next_timer_at   timestamptz,                  -- earliest deadline or retry; NULL when none
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One saga per (definition, idempotency key): concurrent duplicate starts collapse into one.
CREATE UNIQUE INDEX sagas_idempotency_key ON sagas (definition, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- The timer loop's scan.
CREATE INDEX sagas_next_timer ON sagas (next_timer_at) WHERE next_timer_at IS NOT NULL;
-- The API's list, newest first, with optional filters.
CREATE INDEX sagas_created ON sagas (created_at DESC, id DESC);
CREATE INDEX sagas_status_created ON sagas (status, created_at DESC, id DESC);
CREATE INDEX sagas_definition_created ON sagas (definition, created_at DESC, id DESC);

-- Append-only timeline of every input and transition.
CREATE TABLE saga_history (
    id          bigserial   PRIMARY KEY,
    saga_id     uuid        NOT NULL REFERENCES sagas (id) ON DELETE CASCADE,
    kind        text        NOT NULL,
    step        integer,
    attempt     integer,
    status      text        NOT NULL,             -- saga status after this entry
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX saga_history_saga ON saga_history (saga_id, id);

-- Messages written in the same transaction as the state they describe; the relay
-- publishes them and only then marks them published.
CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,         -- publication order
    topic        text        NOT NULL,
    message_key  text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Replies already applied (dedup of redelivered replies).
CREATE TABLE processed_replies (
    reply_id     uuid        PRIMARY KEY,
    saga_id      uuid        NOT NULL,
    outcome      text        NOT NULL,            -- applied | ignored: <reason>
    processed_at timestamptz NOT NULL DEFAULT now()
);
