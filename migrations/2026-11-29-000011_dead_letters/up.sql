-- Every message of the dead-letter topic, recorded by the orchestrator so that operators can
-- list them, replay them onto their origin topic, or discard them with a reason.
CREATE TABLE dead_letters (
    id bigserial PRIMARY KEY,
    -- Where it sits in the dead-letter topic: recording it twice changes nothing.
    dlq_partition integer NOT NULL,
    dlq_offset bigint NOT NULL,
    origin_topic text,
    origin_partition integer,
    origin_offset bigint,
    consumer_group text,
    error text NOT NULL,
    message_key text,
    payload bytea NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'replayed', 'discarded')),
    settled_by text,
    settled_reason text,
    settled_at timestamptz,
    UNIQUE (dlq_partition, dlq_offset)
);
CREATE INDEX dead_letters_state ON dead_letters (state, id);
