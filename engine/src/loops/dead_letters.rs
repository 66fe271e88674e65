//! Records every message of the dead-letter topic in `dead_letters`, once, so that operators
//! can see it, replay it onto its origin topic or discard it (see `api::operator`).

use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use platform::db;
use platform::kafka::{Cluster, DeadLetterMessage, DeadLetterReader};
use tokio_util::sync::CancellationToken;

use crate::schema::dead_letters;

pub struct DeadLetters {
    cluster: Cluster,
    database: db::Pool,
}

impl DeadLetters {
    pub fn new(cluster: Cluster, database: db::Pool) -> Self {
        Self { cluster, database }
    }

    /// Runs the reader until `shutdown`; one member of `<prefix>.dead-letters` per process.
    /// A reader that cannot start ends the loop with its cause (and `/healthz` says so).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Self { cluster, database } = self;
        let group = format!("{}.dead-letters", cluster.topics().prefix());
        let member = cluster.member_id(&group, 0);
        let reader = DeadLetterReader::new(&cluster, group, member)?;
        reader
            .run(shutdown, |letter| {
                let database = database.clone();
                async move { record(&database, &letter).await }
            })
            .await;
        Ok(())
    }
}

async fn record(database: &db::Pool, letter: &DeadLetterMessage) -> anyhow::Result<()> {
    let mut conn = database.get().await?;
    diesel::insert_into(dead_letters::table)
        .values((
            dead_letters::dlq_partition.eq(letter.partition),
            dead_letters::dlq_offset.eq(letter.offset),
            dead_letters::origin_topic.eq(&letter.origin_topic),
            dead_letters::origin_partition.eq(letter.origin_partition),
            dead_letters::origin_offset.eq(letter.origin_offset),
            dead_letters::consumer_group.eq(&letter.consumer_group),
            dead_letters::error.eq(&letter.error),
            dead_letters::message_key.eq(&letter.key),
            dead_letters::payload.eq(&letter.payload),
        ))
        .on_conflict((dead_letters::dlq_partition, dead_letters::dlq_offset))
        .do_nothing()
        .execute(&mut conn)
        .await?;
    tracing::warn!(
        origin = letter.origin_topic.as_deref().unwrap_or("?"),
        error = %letter.error,
        "dead letter recorded"
    );
    Ok(())
}
