//! The consumer's librdkafka callbacks: partition assignments and revocations, each brought to
//! the sink through the writer (so it is ordered with the batches), and the assignment
//! generations that fencing compares.
//!
//! librdkafka calls these on the reader thread, inside `poll`, before it applies the change:
//! an assignment waits for the sink's resume positions and starts the partitions there; a
//! revocation waits until every batch read before it is settled, so the group hands the
//! partitions to another member only after this one stopped writing them.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::sink::{Positions, TopicPartition};
use super::writer::Work;

/// Which partitions this consumer owns, each under the generation it was assigned in.
#[derive(Debug, Default)]
pub(super) struct Assignments {
    state: Mutex<AssignmentState>,
    /// Counts changes, so the reader notices one and drops from the batch it is reading the
    /// records of partitions no longer assigned under the generation it read them in: their
    /// next owner (or this consumer, from the new position) reads them again. Outside the
    /// lock: the reader looks after every poll.
    changes: AtomicU64,
}

#[derive(Debug)]
struct AssignmentState {
    assigned: HashMap<TopicPartition, u64>,
    next_generation: u64,
    /// Being revoked: the callback waits for the writer to settle the batches read before.
    /// While the sink fails, the writer gives up on these partitions' records (uncommitted,
    /// their next owner reads them) rather than hold the whole group's rebalance.
    revoking: HashSet<TopicPartition>,
}

impl Default for AssignmentState {
    fn default() -> Self {
        Self {
            assigned: HashMap::new(),
            next_generation: 1,
            revoking: HashSet::new(),
        }
    }
}

impl Assignments {
    fn with<T>(&self, f: impl FnOnce(&mut AssignmentState) -> T) -> T {
        let mut state = match self.state.lock() {
            Ok(state) => state,
            // A panic elsewhere cannot leave the map half-updated: every change is one insert
            // or remove. Keep going rather than lose the assignment.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut state)
    }

    /// Records partitions as assigned, each under a new generation.
    pub(super) fn assign(&self, partitions: &[TopicPartition]) {
        self.with(|state| {
            for partition in partitions {
                let generation = state.next_generation;
                state.next_generation += 1;
                state.assigned.insert(partition.clone(), generation);
            }
        });
        self.changes.fetch_add(1, Ordering::Release);
    }

    pub(super) fn begin_revoke(&self, partitions: &[TopicPartition]) {
        self.with(|state| state.revoking.extend(partitions.iter().cloned()));
    }

    pub(super) fn is_revoking(&self, partition: &TopicPartition) -> bool {
        self.with(|state| state.revoking.contains(partition))
    }

    pub(super) fn revoke(&self, partitions: &[TopicPartition]) {
        self.with(|state| {
            for partition in partitions {
                state.assigned.remove(partition);
                state.revoking.remove(partition);
            }
        });
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// The generation `partition` is assigned under, `None` when it is not assigned here.
    pub(super) fn generation(&self, partition: &TopicPartition) -> Option<u64> {
        self.with(|state| state.assigned.get(partition).copied())
    }

    /// How many times the assignment changed.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub(super) fn assigned(&self) -> Vec<TopicPartition> {
        self.with(|state| state.assigned.keys().cloned().collect())
    }
}

/// The context of a runtime consumer: shared assignments, and the writer's queue, which the
/// callbacks use to reach the sink in order with the batches.
pub(super) struct RuntimeContext<P> {
    pub(super) consumer: String,
    pub(super) assignments: Arc<Assignments>,
    work: mpsc::UnboundedSender<Work<P>>,
    runtime: tokio::runtime::Handle,
}

impl<P> std::fmt::Debug for RuntimeContext<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeContext")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<P: Send + Sync + 'static> RuntimeContext<P> {
    pub(super) fn new(
        consumer: String,
        assignments: Arc<Assignments>,
        work: mpsc::UnboundedSender<Work<P>>,
        runtime: tokio::runtime::Handle,
    ) -> Self {
        Self {
            consumer,
            assignments,
            work,
            runtime,
        }
    }

    /// Records `partitions` as assigned and asks the sink where to start them. Blocks the
    /// calling thread (the reader, or librdkafka's callback on it) until the writer answered;
    /// an empty answer once the writer is gone (shutdown). Positions ahead of the group's are
    /// then committed (group mode), in order with the batches: otherwise a partition with
    /// nothing new to read would keep an older committed offset, and its lag, for good.
    pub(super) fn assigned(&self, partitions: Vec<TopicPartition>) -> Positions {
        self.assignments.assign(&partitions);
        let (reply, answer) = oneshot::channel();
        if self
            .work
            .send(Work::Assigned { partitions, reply })
            .is_err()
        {
            return Positions::new();
        }
        let positions = self.runtime.block_on(answer).unwrap_or_default();
        let commits: Vec<(TopicPartition, u64, i64)> = positions
            .iter()
            .filter_map(|(partition, next)| {
                let generation = self.assignments.generation(partition)?;
                Some((partition.clone(), generation, *next))
            })
            .collect();
        if !commits.is_empty() {
            let _ = self.work.send(Work::Commit(commits));
        }
        positions
    }

    /// Waits until the writer settled every batch read before (written and committed: the
    /// group cannot move on while this callback runs, so the partitions are still ours) and
    /// told the sink, then records `partitions` as revoked.
    pub(super) fn revoked(&self, partitions: Vec<TopicPartition>) {
        self.assignments.begin_revoke(&partitions);
        let (reply, answer) = oneshot::channel();
        if self
            .work
            .send(Work::Revoked {
                partitions: partitions.clone(),
                reply,
            })
            .is_ok()
        {
            let _ = self.runtime.block_on(answer);
        }
        self.assignments.revoke(&partitions);
    }
}

impl<P: Send + Sync + 'static> ClientContext for RuntimeContext<P> {}

impl<P: Send + Sync + 'static> ConsumerContext for RuntimeContext<P> {
    // Runs before librdkafka applies the change: the only moment an assignment's start
    // offsets can still be set, and the moment a revoked partition must stop being written.
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list);
                let positions = self.assigned(partitions);
                // Elements write through to the list librdkafka assigns next.
                for mut element in list.elements() {
                    let key = TopicPartition::new(element.topic(), element.partition());
                    if let Some(next) = positions.get(&key) {
                        if let Err(error) = element.set_offset(Offset::Offset(*next)) {
                            tracing::warn!(consumer = %self.consumer, partition = %key, %error, "cannot start at the sink's position");
                        }
                    }
                }
                tracing::info!(
                    consumer = %self.consumer,
                    partitions = %describe(list),
                    positions = ?positions,
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(list) => {
                self.revoked(partitions_of(list));
                tracing::info!(
                    consumer = %self.consumer,
                    partitions = %describe(list),
                    "partitions revoked"
                );
            }
            Rebalance::Error(error) => {
                tracing::warn!(consumer = %self.consumer, %error, "rebalance failed");
            }
        }
    }
}

/// Every partition the cluster has of `topics` (those that exist), from one metadata request.
pub(super) fn partitions_of_topics<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    timeout: std::time::Duration,
) -> rdkafka::error::KafkaResult<Vec<TopicPartition>> {
    let metadata = consumer.fetch_metadata(None, timeout)?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|topic| topics.iter().any(|name| name == topic.name()))
        .flat_map(|topic| {
            topic
                .partitions()
                .iter()
                .map(|partition| TopicPartition::new(topic.name(), partition.id()))
        })
        .collect())
}

pub(super) fn partitions_of(list: &TopicPartitionList) -> Vec<TopicPartition> {
    list.elements()
        .iter()
        .map(|element| TopicPartition::new(element.topic(), element.partition()))
        .collect()
}

/// `topic/0,topic/1,…` for a log line.
pub(super) fn describe(partitions: &TopicPartitionList) -> String {
    partitions_of(partitions)
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_assignment_is_a_new_generation() {
        let assignments = Assignments::default();
        let p0 = TopicPartition::new("t", 0);
        let p1 = TopicPartition::new("t", 1);
        assignments.assign(&[p0.clone(), p1.clone()]);
        let first = assignments.generation(&p0).unwrap();
        assert_ne!(Some(first), assignments.generation(&p1));
        assignments.revoke(std::slice::from_ref(&p0));
        assert_eq!(assignments.generation(&p0), None);
        assignments.assign(std::slice::from_ref(&p0));
        let second = assignments.generation(&p0).unwrap();
        assert!(second > first, "a reassignment fences the earlier batches");
        let changes = assignments.changes();
        assignments.revoke(std::slice::from_ref(&p1));
        assert_eq!(assignments.changes(), changes + 1);
        assert_eq!(assignments.assigned(), vec![p0]);
    }
}
