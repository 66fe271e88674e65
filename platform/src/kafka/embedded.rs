//! The in-process Kafka cluster used when `KAFKA_BROKERS` is unset.
//!
//! rdkafka's mock cluster speaks the real Kafka protocol on a loopback port, so producers
//! and consumers use it exactly like a broker. Two quirks shape this module: its handle is
//! not `Send`, so it lives on a dedicated thread that owns it until this value is dropped;
//! and it does not implement the CreateTopics admin request, so topics are created through
//! that thread with the mock API instead.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaErrorCode;

enum Request {
    CreateTopic {
        name: String,
        partitions: i32,
        done: mpsc::Sender<anyhow::Result<()>>,
    },
}

pub struct EmbeddedKafka {
    bootstrap_servers: String,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster and returns once it accepts connections.
    pub fn start() -> anyhow::Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (requests, inbox) = mpsc::channel::<Request>();
        let thread = std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(cluster) => cluster,
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Serves requests until the owner drops the sender; the cluster dies with
                // this scope.
                while let Ok(request) = inbox.recv() {
                    match request {
                        Request::CreateTopic {
                            name,
                            partitions,
                            done,
                        } => {
                            let result = match cluster.create_topic(&name, partitions, 1) {
                                Ok(())
                                | Err(KafkaError::MockCluster(
                                    RDKafkaErrorCode::TopicAlreadyExists,
                                )) => Ok(()),
                                Err(err) => Err(anyhow::anyhow!("creating topic {name}: {err}")),
                            };
                            let _ = done.send(result);
                        }
                    }
                }
            })?;
        let bootstrap_servers = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("embedded Kafka thread exited before starting"))??;
        tracing::info!(%bootstrap_servers, "embedded Kafka started");
        Ok(Self {
            bootstrap_servers,
            requests: Some(requests),
            thread: Some(thread),
        })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Creates a topic (an existing one is left as it is).
    pub fn create_topic(&self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let (done, result) = mpsc::channel();
        self.requests
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("embedded Kafka stopped"))?
            .send(Request::CreateTopic {
                name: name.to_owned(),
                partitions,
                done,
            })
            .map_err(|_| anyhow::anyhow!("embedded Kafka stopped"))?;
        result
            .recv()
            .map_err(|_| anyhow::anyhow!("embedded Kafka stopped"))?
    }
}

impl Drop for EmbeddedKafka {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
