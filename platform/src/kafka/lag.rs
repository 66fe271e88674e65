//! Consumer lag: how far each consumer group is behind the end of its topic, per partition.
//! Read with one idle client per group (it never joins the group, it only asks for the
//! group's committed offsets), kept for reuse because a librdkafka client is costly to
//! start; the calls block, so callers run them off the async threads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{Offset, TopicPartitionList};

use super::Cluster;

/// One partition of a group's topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: i32,
    /// The group's committed offset; `None` before its first commit.
    pub committed: Option<i64>,
    /// The partition's end (high watermark).
    pub end: i64,
    /// Messages not yet consumed: end - committed (end - start before a first commit).
    pub lag: i64,
}

/// The lag of one group on one topic.
#[derive(Debug, Clone)]
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partitions: Vec<PartitionLag>,
}

impl GroupLag {
    pub fn total(&self) -> i64 {
        self.partitions.iter().map(|p| p.lag).sum()
    }
}

/// Reads lag; cheap to share.
pub struct LagProbe {
    brokers: String,
    clients: Mutex<HashMap<String, BaseConsumer>>,
    timeout: Duration,
}

impl LagProbe {
    pub fn new(cluster: &Cluster) -> Self {
        Self {
            brokers: cluster.brokers().to_owned(),
            clients: Mutex::new(HashMap::new()),
            timeout: Duration::from_secs(5),
        }
    }

    /// The lag of `group` on `topic`. Blocking.
    pub fn group_lag(&self, group: &str, topic: &str) -> anyhow::Result<GroupLag> {
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| anyhow::anyhow!("lag probe poisoned"))?;
        if !clients.contains_key(group) {
            let client: BaseConsumer = Cluster::base_config(&self.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?;
            clients.insert(group.to_owned(), client);
        }
        let client = &clients[group];
        let metadata = client.fetch_metadata(Some(topic), self.timeout)?;
        let ids: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic)
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        drop(metadata);
        let mut wanted = TopicPartitionList::new();
        for id in &ids {
            wanted.add_partition(topic, *id);
        }
        let committed: Vec<(i32, Option<i64>)> = {
            // The list must be gone before the client may be dropped (see the embedded
            // cluster's note in docs/architecture.md).
            let list = client.committed_offsets(wanted, self.timeout)?;
            list.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(at) => (e.partition(), Some(at)),
                    _ => (e.partition(), None),
                })
                .collect()
        };
        let mut partitions = Vec::with_capacity(committed.len());
        for (partition, committed) in committed {
            let (start, end) = client.fetch_watermarks(topic, partition, self.timeout)?;
            let lag = (end - committed.unwrap_or(start)).max(0);
            partitions.push(PartitionLag {
                partition,
                committed,
                end,
                lag,
            });
        }
        partitions.sort_by_key(|p| p.partition);
        Ok(GroupLag {
            group: group.to_owned(),
            topic: topic.to_owned(),
            partitions,
        })
    }
}
