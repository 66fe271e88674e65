//! Key-ordered dispatch and the finished prefix of each partition: the bookkeeping of the
//! parallel consumer loop, with no Kafka in it.
//!
//! A *lane* is a message key (a saga id); messages without a key share one lane per
//! partition. Messages of one lane are handed out strictly in arrival order and never to
//! two batches at once; messages of different lanes go to batches that run concurrently.
//! A partition's offset may be stored only up to its contiguous finished prefix: below its
//! lowest unfinished message. So whatever finishes out of order, a crash redelivers every
//! unfinished message (at-least-once), and per-key order holds across the restart.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    Key(Vec<u8>),
    Unkeyed(String, i32),
}

/// Where a message sits: its partition, offset, and the partition's assignment epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    epoch: u64,
}

#[derive(Debug)]
pub(crate) struct Item<E> {
    pub position: Position,
    lane: Lane,
    pub entry: E,
}

/// Messages handed out together; [`Lanes::finish`] takes it back.
#[derive(Debug)]
pub(crate) struct Batch<E> {
    pub items: Vec<Item<E>>,
}

#[derive(Debug, Default)]
struct Track {
    /// Bumped when the partition is revoked or rewound: older messages no longer count.
    epoch: u64,
    unfinished: BTreeSet<i64>,
    /// Lowest and highest offset seen in this epoch.
    lowest: Option<i64>,
    highest: Option<i64>,
    /// Highest offset handed to `store` (everything up to it is finished).
    stored: Option<i64>,
}

impl Track {
    /// A new epoch: messages of earlier ones no longer count.
    fn restart(&mut self) {
        *self = Self {
            epoch: self.epoch + 1,
            ..Self::default()
        };
    }
}

#[derive(Debug)]
pub(crate) struct Lanes<E> {
    waiting: VecDeque<Item<E>>,
    busy: HashSet<Lane>,
    partitions: HashMap<(String, i32), Track>,
}

impl<E> Default for Lanes<E> {
    fn default() -> Self {
        Self {
            waiting: VecDeque::new(),
            busy: HashSet::new(),
            partitions: HashMap::new(),
        }
    }
}

impl<E> Lanes<E> {
    /// Messages received and not yet handed out.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A message as received. An offset at or below one already seen in its partition means
    /// the partition was re-read from its committed offset (a rebalance gave it back): what
    /// was waiting of it is dropped (it arrives again) and its bookkeeping starts over.
    pub fn push(&mut self, topic: &str, partition: i32, offset: i64, key: Option<&[u8]>, entry: E) {
        let track = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_default();
        if track.highest.is_some_and(|highest| offset <= highest) {
            track.restart();
            self.waiting.retain(|item| {
                item.position.topic != topic || item.position.partition != partition
            });
        }
        let track = self
            .partitions
            .get_mut(&(topic.to_owned(), partition))
            .expect("track just made");
        track.unfinished.insert(offset);
        track.lowest.get_or_insert(offset);
        track.highest = Some(offset);
        let lane = match key {
            Some(key) => Lane::Key(key.to_vec()),
            None => Lane::Unkeyed(topic.to_owned(), partition),
        };
        self.waiting.push_back(Item {
            position: Position {
                topic: topic.to_owned(),
                partition,
                offset,
                epoch: track.epoch,
            },
            lane,
            entry,
        });
    }

    /// Up to `max` waiting messages whose lanes are free, in arrival order; a lane's later
    /// messages join its earlier ones in the batch, never overtake them.
    pub fn next_batch(&mut self, max: usize) -> Option<Batch<E>> {
        let mut taken_lanes: HashSet<Lane> = HashSet::new();
        let mut blocked: HashSet<Lane> = HashSet::new();
        let mut items = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(item) = self.waiting.pop_front() {
            let free = !self.busy.contains(&item.lane) && !blocked.contains(&item.lane);
            if free && items.len() < max {
                taken_lanes.insert(item.lane.clone());
                items.push(item);
            } else {
                blocked.insert(item.lane.clone());
                kept.push_back(item);
            }
        }
        self.waiting = kept;
        if items.is_empty() {
            return None;
        }
        self.busy.extend(taken_lanes);
        Some(Batch { items })
    }

    /// A batch is done (its effects are durable): frees its lanes, and returns the offsets
    /// that may now be stored, one per partition whose finished prefix grew.
    pub fn finish(
        &mut self,
        batch: &[Position],
        lanes: impl IntoIterator<Item = Lane>,
    ) -> Vec<(String, i32, i64)> {
        for lane in lanes {
            self.busy.remove(&lane);
        }
        let mut touched: Vec<(String, i32)> = Vec::new();
        for position in batch {
            let key = (position.topic.clone(), position.partition);
            let Some(track) = self.partitions.get_mut(&key) else {
                continue;
            };
            if track.epoch != position.epoch {
                continue; // revoked or rewound since: it will be (or was) read again
            }
            track.unfinished.remove(&position.offset);
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        let mut stores = Vec::new();
        for key in touched {
            let track = self.partitions.get_mut(&key).expect("touched partition");
            let prefix = match track.unfinished.first() {
                Some(lowest) => lowest - 1,
                None => track.highest.expect("a finished message was seen"),
            };
            let grew = match track.stored {
                Some(stored) => prefix > stored,
                None => track.lowest.is_some_and(|lowest| prefix >= lowest),
            };
            if grew {
                track.stored = Some(prefix);
                stores.push((key.0, key.1, prefix));
            }
        }
        stores
    }

    /// The partitions were taken away: forget what waits of them; batches in flight finish,
    /// but store nothing for them.
    pub fn revoke(&mut self, partitions: &[(String, i32)]) {
        for key in partitions {
            if let Some(track) = self.partitions.get_mut(key) {
                track.restart();
            }
        }
        self.waiting.retain(|item| {
            !partitions.iter().any(|(topic, partition)| {
                *topic == item.position.topic && *partition == item.position.partition
            })
        });
    }
}

impl<E> Item<E> {
    pub fn lane(&self) -> &Lane {
        &self.lane
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn batch_keys(batch: &Batch<u32>) -> Vec<u32> {
        batch.items.iter().map(|item| item.entry).collect()
    }

    fn done(lanes: &mut Lanes<u32>, batch: Batch<u32>) -> Vec<(String, i32, i64)> {
        let positions: Vec<Position> = batch.items.iter().map(|i| i.position.clone()).collect();
        let used: Vec<Lane> = batch.items.into_iter().map(|i| i.lane).collect();
        lanes.finish(&positions, used)
    }

    #[test]
    fn a_busy_key_waits_and_its_later_messages_do_not_overtake() {
        let mut lanes = Lanes::default();
        lanes.push("t", 0, 0, Some(b"a"), 0);
        let first = lanes.next_batch(1).expect("a is free");
        lanes.push("t", 0, 1, Some(b"a"), 1);
        lanes.push("t", 0, 2, Some(b"b"), 2);
        lanes.push("t", 0, 3, Some(b"a"), 3);
        let second = lanes.next_batch(10).expect("b is free");
        assert_eq!(batch_keys(&second), vec![2], "a is busy, only b goes");
        assert!(lanes.next_batch(10).is_none());
        assert_eq!(done(&mut lanes, first), vec![("t".to_owned(), 0, 0)]);
        let third = lanes.next_batch(10).expect("a is free again");
        assert_eq!(
            batch_keys(&third),
            vec![1, 3],
            "a's messages in order, in one batch"
        );
    }

    #[test]
    fn the_stored_offset_stops_below_the_lowest_unfinished_message() {
        let mut lanes = Lanes::default();
        for offset in 0..4 {
            lanes.push("t", 0, offset, Some(&[offset as u8]), offset as u32);
        }
        let mut batches = Vec::new();
        while let Some(batch) = lanes.next_batch(1) {
            batches.push(batch);
        }
        let b3 = batches.pop().unwrap();
        let b2 = batches.pop().unwrap();
        let b1 = batches.pop().unwrap();
        let b0 = batches.pop().unwrap();
        assert_eq!(done(&mut lanes, b3), vec![], "0 to 2 unfinished");
        assert_eq!(done(&mut lanes, b1), vec![], "0 unfinished");
        assert_eq!(done(&mut lanes, b0), vec![("t".to_owned(), 0, 1)]);
        assert_eq!(done(&mut lanes, b2), vec![("t".to_owned(), 0, 3)]);
    }

    #[test]
    fn a_revoked_partition_stores_nothing_for_work_still_in_flight() {
        let mut lanes = Lanes::default();
        lanes.push("t", 0, 5, Some(b"a"), 0);
        lanes.push("t", 0, 6, Some(b"b"), 1);
        let first = lanes.next_batch(1).unwrap();
        lanes.revoke(&[("t".to_owned(), 0)]);
        assert_eq!(
            lanes.waiting(),
            0,
            "what waited is read again by the new owner"
        );
        assert_eq!(done(&mut lanes, first), vec![]);
        // Assigned back: read again from the committed offset.
        lanes.push("t", 0, 5, Some(b"a"), 2);
        let again = lanes.next_batch(10).unwrap();
        assert_eq!(done(&mut lanes, again), vec![("t".to_owned(), 0, 5)]);
    }

    #[test]
    fn a_rewound_partition_starts_its_bookkeeping_over() {
        let mut lanes = Lanes::default();
        lanes.push("t", 0, 7, Some(b"a"), 0);
        lanes.push("t", 0, 8, Some(b"b"), 1);
        let stale = lanes.next_batch(1).unwrap();
        lanes.push("t", 0, 7, Some(b"a"), 2);
        assert_eq!(lanes.waiting(), 1, "offset 8 dropped, it comes again");
        assert_eq!(
            done(&mut lanes, stale),
            vec![],
            "the stale batch counts for nothing"
        );
        let fresh = lanes.next_batch(10).unwrap();
        assert_eq!(batch_keys(&fresh), vec![2]);
        assert_eq!(done(&mut lanes, fresh), vec![("t".to_owned(), 0, 7)]);
    }

    proptest! {
        /// For any keys, batch sizes and completion order: no two batches in flight share a
        /// key, each key's messages are handed out in offset order, and a stored offset never
        /// reaches an unfinished message.
        #[test]
        fn order_per_key_and_the_finished_prefix_hold(
            keys in proptest::collection::vec(0u8..5, 1..60),
            max in 1usize..6,
            picks in proptest::collection::vec(any::<prop::sample::Index>(), 0..200),
        ) {
            let mut lanes = Lanes::default();
            for (offset, key) in keys.iter().enumerate() {
                lanes.push("t", 0, offset as i64, Some(&[*key]), offset as u32);
            }
            let mut in_flight: Vec<Batch<u32>> = Vec::new();
            let mut handed: HashMap<u8, Vec<u32>> = HashMap::new();
            let mut finished: HashSet<u32> = HashSet::new();
            let mut stored: Option<i64> = None;
            let mut picks = picks.into_iter();
            loop {
                while let Some(batch) = lanes.next_batch(max) {
                    prop_assert!(batch.items.len() <= max);
                    for item in &batch.items {
                        let key = keys[item.entry as usize];
                        let busy = in_flight.iter().any(|b| b.items.iter().any(|i| keys[i.entry as usize] == key));
                        prop_assert!(!busy, "key {} in two batches at once", key);
                        handed.entry(key).or_default().push(item.entry);
                    }
                    in_flight.push(batch);
                }
                if in_flight.is_empty() {
                    break;
                }
                let index = picks.next().map_or(0, |pick| pick.index(in_flight.len()));
                let batch = in_flight.swap_remove(index);
                finished.extend(batch.items.iter().map(|i| i.entry));
                for (_, _, offset) in done(&mut lanes, batch) {
                    prop_assert!(stored.is_none_or(|s| offset > s), "stored offsets only grow");
                    for below in 0..=offset {
                        prop_assert!(finished.contains(&(below as u32)), "stored {} past unfinished {}", offset, below);
                    }
                    stored = Some(offset);
                }
            }
            prop_assert_eq!(stored, Some(keys.len() as i64 - 1), "everything finished, everything stored");
            for offsets in handed.values() {
                prop_assert!(offsets.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", offsets);
            }
        }
    }
}
