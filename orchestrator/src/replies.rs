//! The reply consumer: applies participants' replies to their sagas, one transaction per
//! batch (inbox dedup, row lock, transition, state + history + outbox). The consumer loop
//! stores the batch's offsets only after that transaction committed.

use diesel_async::AsyncConnection as _;
use platform::contract::Reply;
use platform::db::Connection;
use platform::kafka::{Delivery, Handler};

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
            for delivery in batch {
                engine.apply_reply(conn, &delivery.message).await?;
            }
            Ok(())
        })
        .await?;
        for delivery in batch {
            engine.record_reply_metrics(&delivery.message);
        }
        Ok(())
    }
}
