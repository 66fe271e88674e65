//! The Kafka plumbing against a real broker (KAFKA_BROKERS) or the embedded cluster.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use platform::kafka::{ConsumerLoop, ConsumerOptions, DeadLetter, Delivery, Handler};
use platform::testkit::{TestKafka, unique_name};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Headers as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
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

fn start_loop(kafka: &TestKafka, group: &str, fail_first: usize) -> Running<u32, Recorder> {
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

/// What a started loop hands the test: what it handled, its handler, and its controls.
type Running<Seen, H> = (
    mpsc::UnboundedReceiver<Seen>,
    Arc<H>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// Records each handled message with its key, and how many batches ran at once; fails every
/// message numbered `fail` (until shutdown interrupts its retries).
struct Parallel {
    seen: mpsc::UnboundedSender<(String, u32)>,
    batches: AtomicUsize,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
    fail: Option<u32>,
}

impl Handler<Ping> for Arc<Parallel> {
    async fn handle(&self, batch: &[Delivery<Ping>]) -> anyhow::Result<()> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        // Work that takes a while, so that batches overlap.
        tokio::time::sleep(Duration::from_millis(3)).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if batch.iter().any(|d| Some(d.message.n) == self.fail) {
            anyhow::bail!("simulated failure");
        }
        for delivery in batch {
            let key = String::from_utf8_lossy(delivery.key.as_deref().unwrap_or_default());
            self.seen.send((key.into_owned(), delivery.message.n))?;
        }
        Ok(())
    }
}

fn start_parallel(
    kafka: &TestKafka,
    group: &str,
    fail: Option<u32>,
    configure: impl FnOnce(&mut ConsumerOptions),
) -> Running<(String, u32), Parallel> {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = Arc::new(Parallel {
        seen: tx,
        batches: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        most_at_once: AtomicUsize::new(0),
        fail,
    });
    let producer = kafka.cluster.producer().unwrap();
    let dead_letter = DeadLetter::new(producer, kafka.topics().dead_letter());
    let mut options = ConsumerOptions::new(group, vec![kafka.topics().replies()]);
    options.concurrency = 4;
    configure(&mut options);
    let consumer =
        ConsumerLoop::new(kafka.brokers(), options, handler.clone(), dead_letter).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(consumer.run(shutdown.clone()));
    (rx, handler, shutdown, task)
}

async fn next_keyed(rx: &mut mpsc::UnboundedReceiver<(String, u32)>) -> (String, u32) {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no message within 60 s")
        .expect("handler gone")
}

/// Different keys run in concurrent batches; one key's messages are handled strictly in the
/// order they were produced.
#[tokio::test(flavor = "multi_thread")]
async fn keys_run_in_parallel_and_each_key_stays_in_order() {
    let kafka = TestKafka::start().await;
    let producer = kafka.cluster.producer().unwrap();
    let topic = kafka.topics().replies();
    let (keys, per_key) = (12u32, 15u32);
    for seq in 0..per_key {
        for key in 0..keys {
            let ping = Ping { n: seq };
            producer
                .send_json(&topic, &format!("saga-{key}"), &ping)
                .await
                .unwrap();
        }
    }

    let (mut seen, handler, shutdown, task) =
        start_parallel(&kafka, &unique_name("g"), None, |options| {
            options.max_batch = 2
        });
    let mut order: std::collections::HashMap<String, Vec<u32>> = Default::default();
    for _ in 0..keys * per_key {
        let (key, n) = next_keyed(&mut seen).await;
        order.entry(key).or_default().push(n);
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    assert_eq!(order.len(), keys as usize);
    for (key, ns) in &order {
        assert_eq!(*ns, (0..per_key).collect::<Vec<_>>(), "{key} out of order");
    }
    assert!(
        handler.most_at_once.load(Ordering::SeqCst) > 1,
        "batches never overlapped"
    );
}

/// Messages the client holds already are batched together: 40 messages of 40 keys, all in
/// the topic before the loop starts, arrive in a fetch per partition (two here). Taking
/// one message per free task would make eight one-message batches before any task is
/// busy.
#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_already_received_is_batched_together_not_a_message_per_free_task() {
    let kafka = TestKafka::start().await;
    let topic = kafka.topics().replies();
    let count = 40u32;
    // Sends held back long enough to leave as one record batch per partition: the embedded
    // broker answers a fetch with one record batch per partition.
    let lingering: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .set("linger.ms", "500")
        .create()
        .unwrap();
    let lingering = &lingering;
    let sends = (0..count).map(|n| {
        let (key, payload) = (
            format!("saga-{n}"),
            serde_json::to_vec(&Ping { n }).unwrap(),
        );
        let topic = topic.clone();
        async move {
            let record = FutureRecord::to(&topic).key(&key).payload(&payload);
            lingering.send(record, Duration::from_secs(30)).await
        }
    });
    for sent in futures_util::future::join_all(sends).await {
        sent.map_err(|(err, _)| err).unwrap();
    }

    let (mut seen, handler, shutdown, task) =
        start_parallel(&kafka, &unique_name("g"), None, |options| {
            options.concurrency = 8;
            options.max_batch = 64;
        });
    let mut handled = std::collections::HashSet::new();
    while handled.len() < count as usize {
        handled.insert(next_keyed(&mut seen).await.1);
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let batches = handler.batches.load(Ordering::SeqCst);
    assert!(
        batches < 8,
        "{count} messages fetched together ran as {batches} batches"
    );
}

/// Messages behind an unfinished one (other keys, same partition) finish first, but the
/// committed offset stops at the unfinished message: after a shutdown it is read again.
#[tokio::test(flavor = "multi_thread")]
async fn the_committed_offset_never_passes_an_unfinished_message() {
    let kafka = TestKafka::start().await;
    let topic = kafka.topics().replies();
    // Everything in partition 0, so that the stuck message sits below the others.
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.brokers())
        .create()
        .unwrap();
    const STUCK: u32 = 100;
    for (key, n) in [("a", 1), ("stuck", STUCK), ("b", 2), ("c", 3), ("d", 4)] {
        let payload = serde_json::to_vec(&Ping { n }).unwrap();
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .partition(0)
            .key(key)
            .payload(&payload);
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(err, _)| err)
            .unwrap();
    }

    let group = unique_name("g");
    // The stuck message fails and then waits an hour before its next try.
    let (mut seen, _handler, shutdown, task) = start_parallel(&kafka, &group, Some(STUCK), |o| {
        o.max_batch = 1;
        o.retry_backoff = (Duration::from_secs(3600), Duration::from_secs(3600));
    });
    let mut finished: Vec<u32> = Vec::new();
    for _ in 0..4 {
        finished.push(next_keyed(&mut seen).await.1);
    }
    finished.sort();
    assert_eq!(finished, vec![1, 2, 3, 4], "the others finished around it");
    // Shutdown interrupts the stuck message's backoff and commits what is finished.
    shutdown.cancel();
    task.await.unwrap().unwrap();

    let (mut seen, _handler, shutdown, task) = start_parallel(&kafka, &group, None, |_| {});
    let mut again = Vec::new();
    while !again.contains(&STUCK) {
        again.push(next_keyed(&mut seen).await.1);
    }
    assert!(
        !again.contains(&1),
        "committed past the finished prefix: {again:?}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
}
