//! `orchestrator seed` fills an empty database with a usable demo set.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::testkit::TestDb;
use shop::schema::{coupon_campaigns, products, users};

#[tokio::test(flavor = "multi_thread")]
async fn seed_creates_products_users_vendors_and_campaigns() {
    let db = TestDb::migrated().await;
    let seeded = shop::seed::run(&db.pool).await.unwrap();
    assert_eq!(seeded.products, 6);
    assert_eq!(
        (
            seeded.users.len(),
            seeded.vendors.len(),
            seeded.campaigns.len()
        ),
        (10, 3, 3)
    );
    let mut conn = db.pool.get().await.unwrap();
    let stocked: i64 = products::table
        .filter(products::stock.gt(0))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let funded: i64 = users::table
        .filter(users::balance_cents.gt(0))
        .count()
        .get_result(&mut conn)
        .await
        .unwrap();
    let coupons: Option<i64> = coupon_campaigns::table
        .select(diesel::dsl::sum(coupon_campaigns::total_quantity))
        .first(&mut conn)
        .await
        .unwrap();
    assert_eq!((stocked, funded), (6, 10));
    assert!(coupons.unwrap() >= 30);
    // Seeding twice adds people and campaigns but never duplicates products.
    let again = shop::seed::run(&db.pool).await.unwrap();
    assert_eq!(again.products, 0);
}
