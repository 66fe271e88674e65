//! Migrations against the real Postgres.

use diesel::sql_types::Text;
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use platform::db;
use platform::testkit::TestDb;

#[derive(QueryableByName)]
struct Table {
    #[diesel(sql_type = Text)]
    table_name: String,
}

async fn tables(test_db: &TestDb) -> Vec<String> {
    let mut conn = test_db.pool.get().await.unwrap();
    sql_query(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = 'public' ORDER BY table_name",
    )
    .load::<Table>(&mut conn)
    .await
    .unwrap()
    .into_iter()
    .map(|t| t.table_name)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrations_apply_to_an_empty_database_once() {
    let test_db = TestDb::empty().await;
    assert!(tables(&test_db).await.is_empty());

    let applied = db::migrate(&test_db.url).await.unwrap();
    assert_eq!(applied.len(), db::MIGRATIONS_COUNT);
    let present = tables(&test_db).await;
    for table in ["sagas", "saga_history", "outbox", "processed_replies"] {
        assert!(
            present.iter().any(|t| t == table),
            "{table} missing: {present:?}"
        );
    }

    let again = db::migrate(&test_db.url).await.unwrap();
    assert!(again.is_empty(), "second run re-applied {again:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_database_is_created() {
    let test_db = TestDb::empty().await;
    // TestDb::empty created it through ensure_database; a second call finds it.
    assert!(!db::ensure_database(&test_db.url).await.unwrap());
    db::ping(&test_db.pool).await.unwrap();
}
