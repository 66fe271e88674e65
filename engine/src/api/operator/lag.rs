//! Consumer lag per consumer group: each worker role, the orchestrator's reply consumer and
//! its dead-letter reader, read from the broker (committed offsets against partition ends).

use std::sync::Arc;

use platform::contract::{Role, Topics};
use platform::kafka::LagProbe;
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};

use crate::api::State;
use crate::api::problem::{ApiError, ApiResult};

pub struct LagApi;

/// How far one consumer group is behind its topic.
#[derive(Debug, Object)]
struct GroupLagView {
    /// What consumes: a worker role, `orchestrator` (replies) or `dead-letters`.
    consumer: String,
    group: String,
    topic: String,
    /// Messages not consumed yet, over every partition.
    #[oai(skip_serializing_if_is_none)]
    lag: Option<i64>,
    partitions: Vec<PartitionLagView>,
    /// Why the lag could not be read (the broker did not answer in time, say).
    #[oai(skip_serializing_if_is_none)]
    error: Option<String>,
}

#[derive(Debug, Object)]
struct PartitionLagView {
    partition: i32,
    /// Absent before the group's first commit on the partition.
    #[oai(skip_serializing_if_is_none)]
    committed: Option<i64>,
    end: i64,
    lag: i64,
}

#[OpenApi(tag = "crate::api::Tag::Sagas")]
impl LagApi {
    /// Consumer lag
    ///
    /// For each consumer group (every worker role, the orchestrator's replies, the
    /// dead-letter reader): the messages its topic holds that the group has not committed,
    /// per partition. A role nobody runs shows everything sent to it as lag.
    #[oai(path = "/v1/consumer-lag", method = "get")]
    async fn lag(&self, state: Data<&State>) -> ApiResult<Json<Vec<GroupLagView>>> {
        let wanted = consumers(state.engine.topics());
        let probe: Arc<LagProbe> = state.lag.clone();
        let views = tokio::task::spawn_blocking(move || {
            wanted
                .into_iter()
                .map(
                    |(consumer, group, topic)| match probe.group_lag(&group, &topic) {
                        Ok(lag) => GroupLagView {
                            consumer,
                            lag: Some(lag.total()),
                            partitions: lag
                                .partitions
                                .iter()
                                .map(|p| PartitionLagView {
                                    partition: p.partition,
                                    committed: p.committed,
                                    end: p.end,
                                    lag: p.lag,
                                })
                                .collect(),
                            group,
                            topic,
                            error: None,
                        },
                        Err(err) => GroupLagView {
                            consumer,
                            group,
                            topic,
                            lag: None,
                            partitions: Vec::new(),
                            error: Some(format!("{err:#}")),
                        },
                    },
                )
                .collect::<Vec<_>>()
        })
        .await
        .map_err(ApiError::internal)?;
        Ok(Json(views))
    }
}

/// Every consumer group of the system: (consumer, group, topic).
pub(crate) fn consumers(topics: &Topics) -> Vec<(String, String, String)> {
    let prefix = topics.prefix();
    let mut wanted: Vec<(String, String, String)> = Role::ALL
        .iter()
        .map(|role| {
            let topic = match role {
                Role::Notification => topics.events(),
                _ => topics.commands(*role),
            };
            (
                role.as_str().to_owned(),
                format!("{prefix}.{}", role.as_str()),
                topic,
            )
        })
        .collect();
    wanted.push((
        "orchestrator".into(),
        format!("{prefix}.orchestrator"),
        topics.replies(),
    ));
    wanted.push((
        "dead-letters".into(),
        format!("{prefix}.dead-letters"),
        topics.dead_letter(),
    ));
    wanted
}
