//! diesel table definitions of the shop's data and of the participant runtime's inbox and
//! fences (kept in step with `migrations/`). The notification worker writes the engine's
//! `notifications` table ([`engine::schema::notifications`]).

diesel::table! {
    products (sku) {
        sku -> Text,
        name -> Text,
        price_cents -> Int8,
        stock -> Int4,
        fence -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    reservations (saga_id, sku) {
        saga_id -> Uuid,
        sku -> Text,
        quantity -> Int4,
        released_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        name -> Text,
        balance_cents -> Int8,
        fence -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    payments (saga_id) {
        saga_id -> Uuid,
        user_id -> Uuid,
        amount_cents -> Int8,
        charged_at -> Timestamptz,
        refunded_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    shipments (saga_id) {
        saga_id -> Uuid,
        tracking_number -> Text,
        address -> Jsonb,
        prepared_at -> Timestamptz,
        cancelled_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    vendors (id) {
        id -> Uuid,
        name -> Text,
        balance_cents -> Int8,
        payouts_enabled -> Bool,
        fence -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    vendor_ledger (id) {
        id -> Int8,
        vendor_id -> Uuid,
        saga_id -> Uuid,
        amount_cents -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    coupon_campaigns (id) {
        id -> Uuid,
        vendor_id -> Uuid,
        kind -> Text,
        title -> Text,
        value_cents -> Int8,
        total_quantity -> Int4,
        claimed -> Int4,
        valid_from -> Timestamptz,
        valid_until -> Timestamptz,
        fence -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    coupon_claims (id) {
        id -> Int8,
        campaign_id -> Uuid,
        user_id -> Uuid,
        saga_id -> Nullable<Uuid>,
        claimed_at -> Timestamptz,
        unclaimed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    processed_commands (command_id) {
        command_id -> Uuid,
        saga_id -> Uuid,
        role -> Text,
        reply -> Jsonb,
        processed_at -> Timestamptz,
    }
}

diesel::table! {
    step_fences (saga_id, step) {
        saga_id -> Uuid,
        step -> Int4,
        fenced_at -> Nullable<Timestamptz>,
        applied_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(reservations -> products (sku));
diesel::joinable!(payments -> users (user_id));
diesel::joinable!(vendor_ledger -> vendors (vendor_id));
diesel::joinable!(coupon_campaigns -> vendors (vendor_id));
diesel::joinable!(coupon_claims -> coupon_campaigns (campaign_id));
diesel::joinable!(coupon_claims -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(
    products,
    reservations,
    users,
    payments,
    shipments,
    vendors,
    vendor_ledger,
    coupon_campaigns,
    coupon_claims,
    processed_commands,
    step_fences,
);

// An order and the saga it started (read through `engine::shell::store::glance`).
diesel::table! {
    orders (id) {
        id -> Uuid,
        user_id -> Uuid,
        lines -> Jsonb,
        total_cents -> Int8,
        shipping_address -> Jsonb,
        saga_id -> Uuid,
        created_at -> Timestamptz,
    }
}
