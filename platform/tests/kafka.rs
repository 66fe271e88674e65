//! The Kafka plumbing against a real broker (KAFKA_BROKERS) or the embedded cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::kafka::{ConsumerLoop, ConsumerOptions, DeadLetter, Delivery, Handler};
use platform::testkit::{TestKafka, unique_name};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Ping {
    n: u32,
}

/// Forwards every handled message; fails the first `fail_first` calls, and every call that
/// includes the poisoned number 13.
struct Recorder {
    seen: mpsc::UnboundedSender<u32>,
    calls: AtomicUsize,
    fail_first: usize,
}

const POISON: u32 = 13;

impl Handler<Ping> for Arc<Recorder> {
    async fn handle(&self, batch: &[Delivery<Ping>]) -> anyhow::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.fail_first {
            anyhow::bail!("simulated transient failure");
        }
        if batch.iter().any(|d| d.message.n == POISON) {
            anyhow::bail!("simulated poison");
        }
        for delivery in batch {
            self.seen.send(delivery.message.n)?;
        }
        Ok(())
    }
}

fn start_loop(
    kafka: &TestKafka,
    group: &str,
    fail_first: usize,
) -> (
    mpsc::UnboundedReceiver<u32>,
    Arc<Recorder>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let recorder = Arc::new(Recorder {
        seen: tx,
        calls: AtomicUsize::new(0),
        fail_first,
    });
    let producer = kafka.cluster.producer().unwrap();
    let dead_letter = DeadLetter::new(producer, kafka.topics().dead_letter());
    let mut options = ConsumerOptions::new(group, vec![kafka.topics().replies()]);
    options.retry_backoff = (Duration::from_millis(20), Duration::from_millis(100));
    let consumer =
        ConsumerLoop::new(kafka.brokers(), options, recorder.clone(), dead_letter).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    (rx, recorder, shutdown, task)
}

fn dead_letter_reader(kafka: &TestKafka) -> StreamConsumer {
    let reader: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("group.id", unique_name("dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&kafka.topics().dead_letter()]).unwrap();
    reader
}

async fn next(rx: &mut mpsc::UnboundedReceiver<u32>) -> u32 {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no message within 60 s")
        .expect("handler gone")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_is_consumed_once_and_its_offset_committed_after_processing() {
    let kafka = TestKafka::start().await;
    let producer = kafka.cluster.producer().unwrap();
    let topic = kafka.topics().replies();
    let group = unique_name("g");

    producer
        .send_json(&topic, "saga-1", &Ping { n: 1 })
        .await
        .unwrap();

    // The handler fails twice: the message must be retried, not skipped.
    let (mut seen, recorder, shutdown, task) = start_loop(&kafka, &group, 2);
    assert_eq!(next(&mut seen).await, 1);
    assert_eq!(recorder.calls.load(Ordering::SeqCst), 3);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(seen.try_recv().is_err(), "message handled more than once");

    // A new member of the same group starts after the committed offset: it sees only the
    // second message, never the first again.
    producer
        .send_json(&topic, "saga-1", &Ping { n: 2 })
        .await
        .unwrap();
    let (mut seen, _recorder, shutdown, task) = start_loop(&kafka, &group, 0);
    assert_eq!(next(&mut seen).await, 2);
    shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(seen.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undecodable_message_is_dead_lettered_and_the_next_one_processed() {
    let kafka = TestKafka::start().await;
    let producer = kafka.cluster.producer().unwrap();
    let topic = kafka.topics().replies();

    producer.send(&topic, "k", b"{not json", &[]).await.unwrap();
    producer
        .send_json(&topic, "k", &Ping { n: 7 })
        .await
        .unwrap();

    let (mut seen, _recorder, shutdown, task) = start_loop(&kafka, &unique_name("g"), 0);
    assert_eq!(next(&mut seen).await, 7);
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let reader = dead_letter_reader(&kafka);
    let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
        .await
        .expect("nothing on the dead-letter topic")
        .unwrap();
    assert_eq!(message.payload(), Some(&b"{not json"[..]));
    let headers = message.headers().expect("dead letter without headers");
    let header = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header("x-original-topic").as_deref(), Some(topic.as_str()));
    assert!(header("x-error").unwrap().contains("undecodable JSON"));
}

/// One message that fails every time gets a bounded number of tries, goes to the
/// dead-letter topic with the error, and the messages behind it (same key, same partition)
/// are handled; a new member of the group does not see the poisoned message again.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_failing_is_dead_lettered_after_its_budget_and_the_rest_flow() {
    let kafka = TestKafka::start().await;
    let producer = kafka.cluster.producer().unwrap();
    let topic = kafka.topics().replies();
    let group = unique_name("g");
    for n in [1, POISON, 2, 3] {
        producer.send_json(&topic, "k", &Ping { n }).await.unwrap();
    }

    let (mut seen, recorder, shutdown, task) = start_loop(&kafka, &group, 0);
    let handled = [
        next(&mut seen).await,
        next(&mut seen).await,
        next(&mut seen).await,
    ];
    assert_eq!(handled, [1, 2, 3]);
    let reader = dead_letter_reader(&kafka);
    let message = tokio::time::timeout(Duration::from_secs(60), reader.recv())
        .await
        .expect("nothing on the dead-letter topic")
        .unwrap();
    let poisoned: Ping = serde_json::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(poisoned, Ping { n: POISON });
    let error = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == "x-error").and_then(|h| h.value))
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    assert!(
        error.contains("failed 5 attempts") && error.contains("simulated poison"),
        "{error}"
    );
    // Bounded: the batch, then five tries of the poisoned message alone (plus the healthy
    // messages handled alone), not an endless loop.
    assert!(
        recorder.calls.load(Ordering::SeqCst) <= 1 + 4 + 5,
        "{:?}",
        recorder.calls
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();

    producer
        .send_json(&topic, "k", &Ping { n: 4 })
        .await
        .unwrap();
    let (mut seen, _recorder, shutdown, task) = start_loop(&kafka, &group, 0);
    assert_eq!(
        next(&mut seen).await,
        4,
        "the poisoned message's offset was committed"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
