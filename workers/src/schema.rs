//! diesel table definitions of the workers' data (kept in step with `migrations/`).

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
