//! The reply consumer: applies participants' replies to their sagas, one transaction per
//! batch (inbox dedup, row lock, transition, state + history + outbox). The consumer loop
//! stores the batch's offsets only after that transaction committed.

use diesel_async::AsyncConnection as _;
use platform::contract::Reply;
use platform::db::Connection;
use platform::kafka::{Delivery, GiveUp, Handler};

use crate::engine::{self, Engine};

pub struct ReplyHandler {
    engine: Engine,
}

impl ReplyHandler {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

impl Handler<Reply> for ReplyHandler {
    async fn handle(&self, batch: &[Delivery<Reply>]) -> anyhow::Result<()> {
        let mut pooled = self.engine.pool().get().await?;
        let conn: &mut Connection = &mut pooled;
        let engine = &self.engine;
        conn.transaction::<_, engine::Error, _>(async |conn: &mut Connection| {
            engine
                .apply_replies(conn, batch.iter().map(|d| &d.message))
                .await
        })
        .await?;
        for delivery in batch {
            engine.record_reply_metrics(&delivery.message);
        }
        Ok(())
    }

    /// A reply that kept failing goes to the dead-letter topic, unless the database is what
    /// failed: then nothing could be applied, and the loop tries the reply again later.
    async fn give_up(&self, _: &Delivery<Reply>, error: &anyhow::Error) -> anyhow::Result<GiveUp> {
        platform::db::ping(self.engine.pool())
            .await
            .map_err(|down| down.context(format!("reply not applied: {error:#}")))?;
        Ok(GiveUp::DeadLetter)
    }
}
