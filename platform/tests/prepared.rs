//! Prepared statements against the real Postgres.

use diesel::sql_types::{Array, BigInt, Text};
use diesel::{QueryableByName, sql_query};
use diesel_async::RunQueryDsl;
use platform::db::{Connection, prepared};
use platform::testkit::TestDb;

#[derive(QueryableByName, Debug, PartialEq)]
struct N {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

const BATCH: &str = "SELECT n FROM unnest($1::int8[]) AS u(n) WHERE n > $2 ORDER BY n";
const UNPREPARED: &str = "SELECT n FROM unnest($1::int8[]) AS u(n) WHERE n >= $2 ORDER BY n";

/// How many statements with this text the connection holds prepared.
async fn held(conn: &mut Connection, text: &str) -> i64 {
    prepared("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = $1")
        .bind::<Text, _>(text)
        .get_result::<N>(conn)
        .await
        .expect("pg_prepared_statements")
        .n
}

#[tokio::test]
async fn a_prepared_batch_statement_is_prepared_once_per_connection_whatever_its_size() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.get().await.expect("connection");
    for batch in [vec![1_i64], vec![1, 2, 3], vec![4, 5, 6, 7, 8]] {
        let rows: Vec<N> = prepared(BATCH)
            .bind::<Array<BigInt>, _>(&batch)
            .bind::<BigInt, _>(1)
            .load(&mut conn)
            .await
            .expect("a prepared batch");
        let expected: Vec<N> = batch
            .iter()
            .filter(|n| **n > 1)
            .map(|n| N { n: *n })
            .collect();
        assert_eq!(rows, expected, "the binds in their places");
        assert_eq!(
            held(&mut conn, BATCH).await,
            1,
            "prepared once, then reused"
        );
    }
    // diesel's `sql_query` of such text is parsed and planned at every execution.
    sql_query(UNPREPARED)
        .bind::<Array<BigInt>, _>(vec![1_i64])
        .bind::<BigInt, _>(1)
        .load::<N>(&mut conn)
        .await
        .expect("sql_query");
    assert_eq!(
        held(&mut conn, UNPREPARED).await,
        0,
        "sql_query is never prepared"
    );
}

#[tokio::test]
async fn placeholders_may_come_in_any_order_and_again_and_each_bind_must_have_one() {
    let db = TestDb::empty().await;
    let mut conn = db.pool.get().await.expect("connection");
    let n = prepared("SELECT $2::int8 - $1::int8 + $2::int8 AS n")
        .bind::<BigInt, _>(10)
        .bind::<BigInt, _>(3)
        .get_result::<N>(&mut conn)
        .await
        .expect("placeholders out of order and repeated");
    assert_eq!(n, N { n: -4 });
    for refused in [
        // `$2` with one bind.
        prepared("SELECT $2::int8 AS n")
            .bind::<BigInt, _>(1)
            .get_result::<N>(&mut conn)
            .await,
        // A bind with no placeholder.
        prepared("SELECT 1::int8 AS n")
            .bind::<BigInt, _>(1)
            .get_result::<N>(&mut conn)
            .await,
    ] {
        assert!(
            matches!(refused, Err(diesel::result::Error::QueryBuilderError(_))),
            "{refused:?}"
        );
    }
}
