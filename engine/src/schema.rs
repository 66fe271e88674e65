//! diesel table definitions of the engine's tables (kept in step with `migrations/`).

diesel::table! {
    sagas (id) {
        id -> Uuid,
        definition -> Text,
        status -> Text,
        current_step -> Int4,
        payload -> Jsonb,
        state -> Jsonb,
        version -> Int8,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        quarantine -> Nullable<Text>,
        started_by -> Nullable<Text>,
        traceparent -> Nullable<Text>,
        definition_version -> Int4,
        status_changed_at -> Timestamptz,
    }
}

// One row per saga that has a timer: when its state next needs looking at.
diesel::table! {
    saga_timers (saga_id) {
        saga_id -> Uuid,
        fire_at -> Timestamptz,
    }
}

diesel::table! {
    saga_history (id) {
        id -> Int8,
        saga_id -> Uuid,
        kind -> Text,
        step -> Nullable<Int4>,
        attempt -> Nullable<Int4>,
        status -> Text,
        detail -> Jsonb,
        recorded_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        topic -> Text,
        message_key -> Text,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        traceparent -> Nullable<Text>,
    }
}

diesel::table! {
    processed_replies (reply_id) {
        reply_id -> Uuid,
        saga_id -> Uuid,
        outcome -> Text,
        processed_at -> Timestamptz,
    }
}

diesel::joinable!(saga_history -> sagas (saga_id));
diesel::allow_tables_to_appear_in_same_query!(
    sagas,
    saga_timers,
    saga_history,
    outbox,
    processed_replies
);

diesel::table! {
    idempotency_keys (caller, key) {
        caller -> Text,
        key -> Text,
        fingerprint -> Text,
        status -> Int2,
        response -> Jsonb,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    dead_letters (id) {
        id -> Int8,
        dlq_partition -> Int4,
        dlq_offset -> Int8,
        origin_topic -> Nullable<Text>,
        origin_partition -> Nullable<Int4>,
        origin_offset -> Nullable<Int8>,
        consumer_group -> Nullable<Text>,
        error -> Text,
        message_key -> Nullable<Text>,
        payload -> Bytea,
        received_at -> Timestamptz,
        state -> Text,
        settled_by -> Nullable<Text>,
        settled_reason -> Nullable<Text>,
        settled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    bulk_jobs (id) {
        id -> Uuid,
        action -> Text,
        filter -> Jsonb,
        reason -> Nullable<Text>,
        requested_by -> Text,
        created_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    bulk_job_items (job_id, saga_id) {
        job_id -> Uuid,
        saga_id -> Uuid,
        outcome -> Text,
        detail -> Nullable<Text>,
    }
}

diesel::joinable!(bulk_job_items -> bulk_jobs (job_id));
diesel::allow_tables_to_appear_in_same_query!(bulk_jobs, bulk_job_items);

diesel::table! {
    saga_definitions (name, version) {
        name -> Text,
        version -> Int4,
        document -> Jsonb,
        created_by -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    saga_definition_defaults (name) {
        name -> Text,
        version -> Int4,
        set_by -> Text,
        set_at -> Timestamptz,
    }
}

diesel::table! {
    saga_definition_retirements (name, version) {
        name -> Text,
        version -> Int4,
        reason -> Text,
        retired_by -> Text,
        retired_at -> Timestamptz,
    }
}

diesel::table! {
    saga_definition_tombstones (name, version) {
        name -> Text,
        version -> Int4,
        document_sha256 -> Text,
        removed_by -> Text,
        removed_at -> Timestamptz,
    }
}

diesel::allow_tables_to_appear_in_same_query!(saga_definitions, saga_definition_retirements);

// Written by the notification worker (a participant process), read by the operator API.
diesel::table! {
    notifications (event_id) {
        event_id -> Uuid,
        saga_id -> Uuid,
        saga -> Text,
        kind -> Text,
        step -> Nullable<Int4>,
        message -> Text,
        occurred_at -> Timestamptz,
        recorded_at -> Timestamptz,
    }
}
