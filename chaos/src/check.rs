//! The invariants, checked from the database once everything is quiet. Each check returns
//! the number of rows that break it; any non-zero count is a violation.

use std::collections::HashMap;

use diesel::sql_types::{Array, BigInt, Uuid as SqlUuid};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use platform::db::Connection;
use uuid::Uuid;

use crate::load::{Record, Sizes};

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

async fn count(conn: &mut Connection, sql: &str) -> anyhow::Result<i64> {
    Ok(sql_query(sql).get_result::<Count>(conn).await?.n)
}

/// Sagas not yet final (FAILED counts: it waits for an operator).
pub async fn unfinished(conn: &mut Connection) -> anyhow::Result<i64> {
    count(
        conn,
        "SELECT count(*) AS n FROM sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED', 'CANCELLED')",
    )
    .await
}

#[derive(QueryableByName)]
struct Tally {
    #[diesel(sql_type = diesel::sql_types::Text)]
    label: String,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Sagas by definition and final status.
pub async fn by_status(conn: &mut Connection) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<Tally> = sql_query(
        "SELECT definition || ' ' || status AS label, count(*) AS n FROM sagas GROUP BY 1 ORDER BY 1",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.label, row.n)).collect())
}

/// Where the sagas that are not final stand: definition, status, current step and the kind
/// of their newest history entry, most common first. Printed when a run fails, so that a
/// stall names the step (and so the role) it waits on.
pub async fn stuck(conn: &mut Connection) -> anyhow::Result<Vec<(String, i64)>> {
    let rows: Vec<Tally> = sql_query(
        "SELECT s.definition || ' ' || s.status || ' step ' || s.current_step || ' after '
                || coalesce(h.kind, '-') AS label, count(*) AS n
           FROM sagas s
           LEFT JOIN LATERAL (SELECT kind FROM saga_history WHERE saga_id = s.id
                               ORDER BY id DESC LIMIT 1) h ON true
          WHERE s.status NOT IN ('COMPLETED', 'COMPENSATED', 'CANCELLED')
          GROUP BY 1 ORDER BY 2 DESC LIMIT 20",
    )
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|row| (row.label, row.n)).collect())
}

/// (name, rows breaking it) for every invariant.
pub async fn all(
    conn: &mut Connection,
    record: &Record,
    sizes: &Sizes,
) -> anyhow::Result<Vec<(String, i64)>> {
    let stock = sizes.stock;
    let live_reservation =
        "EXISTS (SELECT 1 FROM reservations r WHERE r.saga_id = s.id AND r.released_at IS NULL)";
    let live_payment =
        "EXISTS (SELECT 1 FROM payments p WHERE p.saga_id = s.id AND p.refunded_at IS NULL)";
    let live_shipment =
        "EXISTS (SELECT 1 FROM shipments h WHERE h.saga_id = s.id AND h.cancelled_at IS NULL)";
    let live_claim =
        "EXISTS (SELECT 1 FROM coupon_claims c WHERE c.saga_id = s.id AND c.unclaimed_at IS NULL)";
    let payout = "EXISTS (SELECT 1 FROM vendor_ledger l WHERE l.saga_id = s.id)";
    let inbox = |role: &str| {
        format!(
            "(SELECT count(*) FROM processed_commands WHERE role = '{role}' \
             AND reply ->> 'direction' = 'forward' AND reply -> 'outcome' ->> 'status' = 'succeeded')"
        )
    };
    let checks: Vec<(&str, String)> = vec![
        ("sagas not final", "SELECT count(*) AS n FROM sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED', 'CANCELLED')".to_owned()),
        ("sagas quarantined", "SELECT count(*) AS n FROM sagas WHERE quarantine IS NOT NULL".to_owned()),
        ("stock + reserved != initial", format!(
            "SELECT count(*) AS n FROM products p WHERE p.sku LIKE 'CHAOS-%' AND p.stock + COALESCE((SELECT sum(quantity) FROM reservations r WHERE r.sku = p.sku AND r.released_at IS NULL), 0) <> {stock}")),
        ("vendor balance != its ledger", "SELECT count(*) AS n FROM vendors v WHERE v.balance_cents <> COALESCE((SELECT sum(amount_cents) FROM vendor_ledger l WHERE l.vendor_id = v.id), 0)".to_owned()),
        ("vendor balance != 90% of its live claims", "SELECT count(*) AS n FROM vendors v WHERE v.balance_cents <> COALESCE((SELECT sum(cc.value_cents * 90 / 100) FROM coupon_claims c JOIN coupon_campaigns cc ON cc.id = c.campaign_id WHERE cc.vendor_id = v.id AND c.unclaimed_at IS NULL), 0)".to_owned()),
        ("payout without a live claim", "SELECT count(*) AS n FROM vendor_ledger l WHERE NOT EXISTS (SELECT 1 FROM coupon_claims c WHERE c.saga_id = l.saga_id AND c.unclaimed_at IS NULL)".to_owned()),
        ("claimed != live claims, or past issued", "SELECT count(*) AS n FROM coupon_campaigns cc WHERE cc.claimed <> (SELECT count(*) FROM coupon_claims c WHERE c.campaign_id = cc.id AND c.unclaimed_at IS NULL) OR cc.claimed > cc.total_quantity".to_owned()),
        ("two live claims of one user on one campaign", "SELECT count(*) AS n FROM (SELECT 1 FROM coupon_claims WHERE unclaimed_at IS NULL GROUP BY campaign_id, user_id HAVING count(*) > 1) twice".to_owned()),
        ("completed order missing an effect", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'order' AND s.status = 'COMPLETED' AND NOT ({live_reservation} AND {live_payment} AND {live_shipment})")),
        ("undone order with an effect left", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'order' AND s.status IN ('COMPENSATED', 'CANCELLED') AND ({live_reservation} OR {live_payment} OR {live_shipment})")),
        ("completed coupon use missing an effect", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'coupon_use' AND s.status = 'COMPLETED' AND NOT ({live_claim} AND {payout})")),
        ("undone coupon use with an effect left", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'coupon_use' AND s.status IN ('COMPENSATED', 'CANCELLED') AND ({live_claim} OR {payout})")),
        ("completed click-and-collect missing an effect or its award", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'click_and_collect' AND s.status = 'COMPLETED' AND NOT ({live_reservation} AND {live_payment} AND s.state -> 'steps' -> 4 -> 'output' ->> 'points' IS NOT NULL)")),
        ("undone click-and-collect with an effect left", format!(
            "SELECT count(*) AS n FROM sagas s WHERE s.definition = 'click_and_collect' AND s.status IN ('COMPENSATED', 'CANCELLED') AND ({live_reservation} OR {live_payment})")),
        // Money moves only by amounts the server derived: an order pays what its front
        // priced, any other flow its lines at the products' prices; a payout is at most its
        // coupon's value, to its campaign's vendor.
        ("a charge that is not its lines' price", "SELECT count(*) AS n FROM payments p JOIN sagas s ON s.id = p.saga_id WHERE p.amount_cents IS DISTINCT FROM COALESCE((SELECT o.total_cents FROM orders o WHERE o.saga_id = s.id), (SELECT sum(pr.price_cents * (l ->> 'quantity')::bigint) FROM jsonb_array_elements(s.payload -> 'lines') l JOIN products pr ON pr.sku = l ->> 'sku'))".to_owned()),
        ("a payout above its coupon's value or to another vendor", "SELECT count(*) AS n FROM vendor_ledger v JOIN coupon_claims c ON c.saga_id = v.saga_id JOIN coupon_campaigns k ON k.id = c.campaign_id WHERE v.amount_cents > k.value_cents OR v.vendor_id <> k.vendor_id".to_owned()),
        ("payments != applied charges in the inbox", format!(
            "SELECT abs((SELECT count(*) FROM payments) - {}) AS n", inbox("payment"))),
        ("shipments != applied preparations in the inbox", format!(
            "SELECT abs((SELECT count(*) FROM shipments) - {}) AS n", inbox("shipment"))),
        ("reservations != applied reserves in the inbox", format!(
            "SELECT abs((SELECT count(DISTINCT saga_id) FROM reservations) - {}) AS n", inbox("inventory"))),
        ("saga claims != applied claims in the inbox", format!(
            "SELECT abs((SELECT count(*) FROM coupon_claims c WHERE c.saga_id IN (SELECT id FROM sagas)) - {}) AS n", inbox("coupon"))),
        ("saga payouts != applied payouts in the inbox", format!(
            "SELECT abs((SELECT count(*) FROM vendor_ledger l WHERE l.saga_id IN (SELECT id FROM sagas)) - {}) AS n", inbox("vendor"))),
    ];
    let mut results = Vec::with_capacity(checks.len() + 2);
    for (name, sql) in checks {
        results.push((name.to_owned(), count(conn, &sql).await?));
    }
    let accepted: Vec<Uuid> = record.sagas.clone();
    let found = sql_query("SELECT count(*) AS n FROM sagas WHERE id = ANY($1)")
        .bind::<Array<SqlUuid>, _>(&accepted)
        .get_result::<Count>(conn)
        .await?
        .n;
    results.push((
        "accepted sagas missing".to_owned(),
        accepted.len() as i64 - found,
    ));
    results.push((
        "wallets != initial + top-ups - charges + refunds".to_owned(),
        wallets(conn, &record.top_ups, sizes.balance).await?,
    ));
    Ok(results)
}

#[derive(QueryableByName)]
struct Wallet {
    #[diesel(sql_type = SqlUuid)]
    id: Uuid,
    #[diesel(sql_type = BigInt)]
    balance: i64,
    #[diesel(sql_type = BigInt)]
    charged: i64,
}

async fn wallets(
    conn: &mut Connection,
    top_ups: &HashMap<Uuid, i64>,
    balance: i64,
) -> anyhow::Result<i64> {
    let wallets: Vec<Wallet> = sql_query(
        "SELECT u.id, u.balance_cents AS balance, \
         COALESCE((SELECT sum(amount_cents) FROM payments p WHERE p.user_id = u.id AND p.refunded_at IS NULL), 0)::bigint AS charged \
         FROM users u",
    )
    .load(conn)
    .await?;
    Ok(wallets
        .iter()
        .filter(|w| {
            let topped = top_ups.get(&w.id).copied().unwrap_or(0);
            w.balance != balance + topped - w.charged
        })
        .count() as i64)
}
