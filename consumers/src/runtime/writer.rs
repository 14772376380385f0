//! The writer task: the only caller of the sink. It takes the reader's batches and the
//! rebalance callbacks' requests from one queue, in the order they happened, writes each batch
//! (with retries), and commits it in group mode.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

use super::context::{Assignments, RuntimeContext};
use super::sink::{Fence, Ownership, PartitionBatch, Positions, Sink, SinkError, TopicPartition};

/// What the writer does next, in the order the reader and the callbacks asked for it.
pub(super) enum Work<P> {
    Batch(ReadBatch<P>),
    /// Partitions were assigned: ask the sink for its positions.
    Assigned {
        partitions: Vec<TopicPartition>,
        reply: oneshot::Sender<Positions>,
    },
    /// The sink's own positions of newly assigned partitions: committed where they are ahead
    /// of the group's, so its committed offsets, and the lag measured from them, agree with
    /// where the consumer reads even when nothing new arrives to be committed. (Never behind:
    /// the projector's position is behind the group's when the partition ends in dead letters,
    /// and the group's offset does not go back for that.)
    Commit(Vec<(TopicPartition, u64, i64)>),
    /// Partitions were revoked: every earlier batch is settled by now; tell the sink.
    Revoked {
        partitions: Vec<TopicPartition>,
        reply: oneshot::Sender<()>,
    },
    /// The reader stopped; nothing follows.
    Stop,
}

/// Records read and prepared, with the offsets to commit once they are written.
pub(super) struct ReadBatch<P> {
    pub(super) units: Vec<PartitionBatch<P>>,
    /// Next offset per partition (kept and dead-lettered records alike), with the generation
    /// it was read under.
    pub(super) commits: Vec<(TopicPartition, u64, i64)>,
    /// Held until the writer takes the batch: the reader starts the next batch only then, so
    /// at most two batches are in memory (one written, one read).
    pub(super) _permit: OwnedSemaphorePermit,
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How long the writer waits for work before calling [`Sink::on_idle`].
const IDLE_AFTER: Duration = Duration::from_secs(1);

pub(super) fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(BACKOFF_MAX)
}

/// Sleeps `backoff` (then doubles it) unless shutdown comes first; false on shutdown.
pub(super) async fn wait_to_retry(backoff: &mut Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(*backoff) => {
            *backoff = next_backoff(*backoff);
            true
        }
    }
}

pub(super) fn first_backoff() -> Duration {
    BACKOFF_START
}

pub(super) struct Writer<S: Sink> {
    pub(super) sink: S,
    /// For the [`Ownership`] tokens handed to [`Sink::on_owned`].
    pub(super) fence: Fence,
    pub(super) consumer: Arc<BaseConsumer<RuntimeContext<S::Prepared>>>,
    pub(super) assignments: Arc<Assignments>,
    pub(super) consumer_name: String,
    /// Group mode: commit each batch's offsets.
    pub(super) commits: bool,
    pub(super) shutdown: CancellationToken,
}

impl<S: Sink> Writer<S> {
    /// Runs until the reader stops, or until shutdown while a batch cannot be written (it stays
    /// uncommitted and is replayed by the next run).
    pub(super) async fn run(
        mut self,
        mut work: tokio::sync::mpsc::UnboundedReceiver<Work<S::Prepared>>,
    ) {
        loop {
            let next = match tokio::time::timeout(IDLE_AFTER, work.recv()).await {
                Ok(Some(next)) => next,
                Ok(None) => return,
                Err(_idle) => {
                    if let Err(error) = self.sink.on_idle().await {
                        self.report(&error, "idle");
                    }
                    continue;
                }
            };
            match next {
                Work::Batch(batch) => {
                    if !self.write(batch).await {
                        return;
                    }
                }
                Work::Assigned { partitions, reply } => {
                    let positions = self.positions(&partitions).await;
                    let owned = partitions
                        .iter()
                        .filter_map(|partition| {
                            let generation = self.assignments.generation(partition)?;
                            Some(Ownership::new(
                                partition.clone(),
                                generation,
                                self.fence.clone(),
                            ))
                        })
                        .collect();
                    self.sink.on_owned(owned);
                    let _ = reply.send(positions);
                }
                Work::Commit(positions) => {
                    if self.commits {
                        let ahead = ahead_of_committed(&self.consumer, positions).await;
                        commit(
                            &self.consumer,
                            &self.assignments,
                            &self.consumer_name,
                            ahead,
                        )
                        .await;
                    }
                }
                Work::Revoked { partitions, reply } => {
                    self.sink.on_revoke(&partitions).await;
                    let _ = reply.send(());
                }
                Work::Stop => return,
            }
        }
    }

    /// The sink's positions for newly assigned partitions, retried while the sink fails;
    /// none at shutdown (the consumer is stopping and reads nothing more).
    async fn positions(&mut self, partitions: &[TopicPartition]) -> Positions {
        let mut backoff = first_backoff();
        loop {
            match self.sink.on_assign(partitions).await {
                Ok(positions) => return positions,
                Err(error) => {
                    self.report(&error, "positions");
                    if !wait_to_retry(&mut backoff, &self.shutdown).await {
                        return Positions::new();
                    }
                }
            }
        }
    }

    /// Writes and commits one batch; false when shutdown came while it could not be written.
    async fn write(&mut self, batch: ReadBatch<S::Prepared>) -> bool {
        let ReadBatch {
            mut units,
            mut commits,
            _permit,
        } = batch;
        drop(_permit);
        let mut backoff = first_backoff();
        loop {
            if S::FENCED {
                fence(&mut units, &self.consumer_name);
            }
            if units.is_empty() {
                break;
            }
            match self.sink.write(&units).await {
                Ok(()) => break,
                Err(error) => {
                    self.report(&error, "batch");
                    // A revocation waits on this batch and holds the whole group's rebalance
                    // meanwhile: give its partitions up, uncommitted, for their next owner.
                    let given_up = self.give_up_revoking(&mut units);
                    commits.retain(|(partition, _, _)| !given_up.contains(partition));
                    if !wait_to_retry(&mut backoff, &self.shutdown).await {
                        let events: usize = units.iter().map(|unit| unit.events).sum();
                        tracing::warn!(consumer = %self.consumer_name, events, "shutting down with an unwritten batch; it will be replayed");
                        return false;
                    }
                }
            }
        }
        let events: usize = units.iter().map(|unit| unit.events).sum();
        metrics::counter!("ledgerline_consumer_events_total", "consumer" => self.consumer_name.clone(), "outcome" => "written")
            .increment(events as u64);
        if self.commits {
            commit(
                &self.consumer,
                &self.assignments,
                &self.consumer_name,
                commits,
            )
            .await;
        }
        true
    }

    /// Drops the units of partitions being revoked; returns their partitions.
    fn give_up_revoking(
        &self,
        units: &mut Vec<PartitionBatch<S::Prepared>>,
    ) -> Vec<TopicPartition> {
        let mut given_up = Vec::new();
        units.retain(|unit| {
            let revoking = self.assignments.is_revoking(&unit.partition);
            if revoking {
                tracing::warn!(consumer = %self.consumer_name, partition = %unit.partition, events = unit.events, "the sink is failing while the partition is revoked; leaving its records to its next owner");
                given_up.push(unit.partition.clone());
            }
            !revoking
        });
        given_up
    }

    fn report(&self, error: &SinkError, what: &'static str) {
        metrics::counter!("ledgerline_consumer_sink_errors_total", "consumer" => self.consumer_name.clone(), "kind" => error.kind)
            .increment(1);
        if error.transient {
            tracing::warn!(consumer = %self.consumer_name, %error, kind = error.kind, what, "sink unavailable; retrying");
        } else {
            tracing::error!(consumer = %self.consumer_name, %error, kind = error.kind, what, "sink refused; retrying until the cause is fixed");
        }
    }
}

/// Commits the batch's offsets of partitions still assigned under the generation they
/// were read in. A revoked partition's offset is not committed by this member any more:
/// its new owner's commits are the truth, and an older one from here would rewind them.
async fn commit<P: Send + Sync + 'static>(
    consumer: &Arc<BaseConsumer<RuntimeContext<P>>>,
    assignments: &Assignments,
    consumer_name: &str,
    commits: Vec<(TopicPartition, u64, i64)>,
) {
    if consumer.assignment_lost() {
        // The group already moved on; a commit now could only rewind the new owners.
        return;
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, generation, next) in &commits {
        if assignments.generation(partition) != Some(*generation) {
            continue;
        }
        if let Err(error) = offsets.add_partition_offset(
            &partition.topic,
            partition.partition,
            Offset::Offset(*next),
        ) {
            tracing::warn!(consumer = %consumer_name, %partition, %error, "cannot record offset");
        }
    }
    if offsets.count() == 0 {
        return;
    }
    // A synchronous commit waits for the broker: off the async workers, so a slow group
    // coordinator does not hold up the reader or the inserts.
    let committing = Arc::clone(consumer);
    let committed =
        tokio::task::spawn_blocking(move || committing.commit(&offsets, CommitMode::Sync)).await;
    match committed {
        Ok(Ok(())) => {}
        // Usually a rebalance moved the partitions; their new owner replays them.
        Ok(Err(error)) => {
            tracing::warn!(consumer = %consumer_name, %error, "offset commit failed; records will be replayed");
        }
        Err(error) => {
            tracing::warn!(consumer = %consumer_name, %error, "offset commit task failed; records will be replayed");
        }
    }
}

/// Drops the units of partitions no longer assigned under the generation they were read in:
/// another member owns them now, or this one reads them again from its new position.
fn fence<P>(units: &mut Vec<PartitionBatch<P>>, consumer_name: &str) {
    units.retain(|unit| {
        let current = unit.is_current();
        if !current {
            tracing::info!(
                consumer = %consumer_name,
                partition = %unit.partition,
                events = unit.events,
                "dropping a revoked partition's unwritten records; its owner reads them again"
            );
            metrics::counter!("ledgerline_consumer_fenced_total", "consumer" => consumer_name.to_owned())
                .increment(unit.events as u64);
        }
        current
    });
}

/// The positions that are ahead of the group's committed offsets (or where it has none).
async fn ahead_of_committed<P: Send + Sync + 'static>(
    consumer: &Arc<BaseConsumer<RuntimeContext<P>>>,
    positions: Vec<(TopicPartition, u64, i64)>,
) -> Vec<(TopicPartition, u64, i64)> {
    let mut list = TopicPartitionList::new();
    for (partition, _, _) in &positions {
        list.add_partition(&partition.topic, partition.partition);
    }
    let reading = Arc::clone(consumer);
    // A broker round trip: off the async workers.
    let committed = tokio::task::spawn_blocking(move || {
        reading.committed_offsets(list, std::time::Duration::from_secs(10))
    })
    .await;
    let Ok(Ok(committed)) = committed else {
        // Unknown: commit nothing now; the next batch commits where the consumer is.
        return Vec::new();
    };
    positions
        .into_iter()
        .filter(|(partition, _, next)| {
            match committed
                .find_partition(&partition.topic, partition.partition)
                .map(|element| element.offset())
            {
                Some(Offset::Offset(current)) => *next > current,
                _ => true,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(assignments: &Arc<Assignments>, partition: i32, lost: bool) -> PartitionBatch<()> {
        let partition = TopicPartition::new("t", partition);
        PartitionBatch {
            generation: assignments.generation(&partition).unwrap_or(0),
            partition,
            events: 1,
            prepared: (),
            fence: Fence {
                assignments: Arc::clone(assignments),
                lost: Arc::new(move || lost),
            },
        }
    }

    #[test]
    fn fencing_keeps_only_partitions_still_assigned_under_the_same_generation() {
        let assignments = Arc::new(Assignments::default());
        let (p0, p1, p2) = (
            TopicPartition::new("t", 0),
            TopicPartition::new("t", 1),
            TopicPartition::new("t", 2),
        );
        assignments.assign(&[p0.clone(), p1.clone(), p2.clone()]);
        let mut units = vec![
            unit(&assignments, 0, false),
            unit(&assignments, 1, false),
            unit(&assignments, 2, false),
        ];
        // p1 moved to another member; p2 went away and came back (read again from its new
        // position, so the batch read before is stale too).
        assignments.revoke(&[p1.clone(), p2.clone()]);
        assignments.assign(std::slice::from_ref(&p2));
        fence(&mut units, "test");
        let kept: Vec<&TopicPartition> = units.iter().map(|unit| &unit.partition).collect();
        assert_eq!(kept, [&p0]);
        // A unit read under the new assignment is kept.
        let mut fresh = vec![unit(&assignments, 2, false)];
        fence(&mut fresh, "test");
        assert_eq!(fresh.len(), 1);
        // The group took the whole assignment away before the callback could say so.
        let mut lost = vec![unit(&assignments, 0, true)];
        fence(&mut lost, "test");
        assert!(lost.is_empty());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut backoff = first_backoff();
        for _ in 0..20 {
            backoff = next_backoff(backoff);
        }
        assert_eq!(backoff, BACKOFF_MAX);
        assert_eq!(next_backoff(first_backoff()), Duration::from_millis(200));
    }
}
