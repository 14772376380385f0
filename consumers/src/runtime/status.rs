//! Lag, and what the consumer knows of its own progress: `ledgerline_consumer_lag_messages`
//! for every partition of its topics, the `/health` verdict ([`ConsumerStatus`]), and the
//! watchdog that rejoins a group whose coordinator left partitions without a consumer.
//!
//! # Why a watchdog
//!
//! Tansu 0.6.0's group coordinator can leave a group "formed" with partitions nobody owns: a
//! member that joins while a killed member is still within its session timeout stays with an
//! empty assignment when the dead member expires, and when a member dies the survivors keep
//! their old assignment, the dead member's partitions unowned. Nothing in the protocol tells
//! the members. What they can see is the group's committed offsets: a partition whose records
//! wait while its committed offset does not move, and which is not assigned to this member, is
//! either owned by a member that is stuck or by nobody. Either way a rejoin is the remedy Kafka
//! itself would apply (a rebalance), so the watchdog rejoins, with a growing pause between
//! rejoins so a member that is merely stuck elsewhere does not cause a rebalance storm. On
//! Apache Kafka the condition comes only from a stuck member, and a rebalance may well move its
//! partitions to one that works.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::context::{partitions_of_topics, Assignments, RuntimeContext};
use super::sink::TopicPartition;

/// How often lag is measured: one committed-offsets request and one watermark request per
/// partition.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one broker answer while measuring.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A partition whose records wait this long with no progress is stalled.
const STALL_AFTER: Duration = Duration::from_secs(10);
/// First and longest pause between two rejoins.
const REJOIN_PAUSE_START: Duration = Duration::from_secs(20);
const REJOIN_PAUSE_MAX: Duration = Duration::from_secs(300);

/// What the runtime knows of its own progress, shared with `/health`.
#[derive(Debug, Clone, Default)]
pub struct ConsumerStatus(Arc<Mutex<Vec<String>>>);

impl ConsumerStatus {
    /// `Err` naming every stalled partition and why, while the consumer cannot consume.
    pub fn check(&self) -> Result<(), String> {
        let problems = self.0.lock().map(|p| p.clone()).unwrap_or_default();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("degraded: {}", problems.join("; ")))
        }
    }

    fn set(&self, problems: Vec<String>) {
        if let Ok(mut current) = self.0.lock() {
            *current = problems;
        }
    }
}

/// One partition's lag: how far its consumer's position trails the high watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PartitionLag {
    pub(super) partition: TopicPartition,
    pub(super) lag: i64,
    /// The position lag is measured from: the group's committed offset (group mode), or the
    /// next offset to read (broadcast mode).
    pub(super) position: i64,
}

/// Group mode: every partition of the topics, assigned here or not, measured from the group's
/// committed offsets. Broadcast mode: the assigned partitions, from the reader's position.
pub(super) fn measure<C: rdkafka::consumer::ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    group: bool,
    assigned: &[TopicPartition],
) -> KafkaResult<Vec<PartitionLag>> {
    let mut partitions = TopicPartitionList::new();
    let every = if group {
        partitions_of_topics(consumer, topics, REQUEST_TIMEOUT)?
    } else {
        assigned.to_vec()
    };
    for partition in &every {
        partitions.add_partition(&partition.topic, partition.partition);
    }
    if partitions.count() == 0 {
        return Ok(Vec::new());
    }
    let positions = if group {
        consumer.committed_offsets(partitions, REQUEST_TIMEOUT)?
    } else {
        consumer.position()?
    };
    let mut lags = Vec::with_capacity(positions.count());
    for element in positions.elements() {
        let Ok((low, high)) =
            consumer.fetch_watermarks(element.topic(), element.partition(), REQUEST_TIMEOUT)
        else {
            continue;
        };
        let position = match element.offset() {
            Offset::Offset(offset) => offset,
            // Never committed: everything the broker holds is ahead.
            _ if group => low,
            // Nothing read yet: librdkafka knows a position only once a record was consumed,
            // and a reader that started at the end of an idle partition has none to show.
            _ => continue,
        };
        lags.push(PartitionLag {
            partition: TopicPartition::new(element.topic(), element.partition()),
            lag: (high - position).max(0),
            position,
        });
    }
    Ok(lags)
}

/// Tells stalled partitions from slow ones, and decides when to rejoin. Pure: fed the
/// measurements and the time, so it is tested without a broker.
#[derive(Debug)]
pub(super) struct Watchdog {
    /// Per partition: the position last seen, and since when it has not moved while records
    /// waited.
    progress: HashMap<TopicPartition, (i64, Instant)>,
    rejoin_pause: Duration,
    next_rejoin: Option<Instant>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) problems: Vec<String>,
    pub(super) rejoin: bool,
}

impl Default for Watchdog {
    fn default() -> Self {
        Self {
            progress: HashMap::new(),
            rejoin_pause: REJOIN_PAUSE_START,
            next_rejoin: None,
        }
    }
}

impl Watchdog {
    pub(super) fn observe(
        &mut self,
        now: Instant,
        lags: &[PartitionLag],
        assigned: &HashSet<TopicPartition>,
        group: bool,
    ) -> Verdict {
        let mut stalled_here = Vec::new();
        let mut unowned = Vec::new();
        for lag in lags {
            let entry = self
                .progress
                .entry(lag.partition.clone())
                .or_insert((lag.position, now));
            if entry.0 != lag.position || lag.lag == 0 {
                *entry = (lag.position, now);
                continue;
            }
            let stalled_for = now.saturating_duration_since(entry.1);
            if stalled_for < STALL_AFTER {
                continue;
            }
            let description = format!(
                "{}: {} records wait, no progress for {} s",
                lag.partition,
                lag.lag,
                stalled_for.as_secs()
            );
            if assigned.contains(&lag.partition) {
                stalled_here.push(format!(
                    "{description} although it is assigned here (the sink is not taking batches)"
                ));
            } else if group {
                unowned.push(format!("{description} and it is not assigned here"));
            }
        }
        let mut problems = Vec::new();
        if group && assigned.is_empty() && !unowned.is_empty() {
            problems.push("no partitions assigned".to_owned());
        }
        // Not while partitions stall here too: that looks like an outage every member shares
        // (ClickHouse down), which a rebalance cannot cure and would only make worse.
        let rejoin = !unowned.is_empty()
            && stalled_here.is_empty()
            && self.next_rejoin.is_none_or(|next| now >= next);
        if unowned.is_empty() {
            self.rejoin_pause = REJOIN_PAUSE_START;
            self.next_rejoin = None;
        } else if rejoin {
            self.next_rejoin = Some(now + self.rejoin_pause);
            self.rejoin_pause = (self.rejoin_pause * 2).min(REJOIN_PAUSE_MAX);
        }
        problems.extend(unowned);
        problems.extend(stalled_here);
        Verdict { problems, rejoin }
    }
}

/// Measures lag every [`LAG_INTERVAL`] until `stop`, sets the gauges and the status, and asks
/// the reader to rejoin when the watchdog says so. A task of its own rather than librdkafka's
/// statistics callback: that runs only while the consumer is polled, and the reader stops
/// polling while the sink is stuck, which is when lag matters most.
pub(super) async fn watch<P: Send + Sync + 'static>(
    consumer: Arc<BaseConsumer<RuntimeContext<P>>>,
    topics: Vec<String>,
    group: bool,
    assignments: Arc<Assignments>,
    status: ConsumerStatus,
    rejoin: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let name = consumer.context().consumer.clone();
    let mut watchdog = Watchdog::default();
    let mut ticks = tokio::time::interval(LAG_INTERVAL);
    let topics = Arc::new(topics);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let assigned = assignments.assigned();
        let (measuring, topics_now, assigned_now) =
            (Arc::clone(&consumer), Arc::clone(&topics), assigned.clone());
        // librdkafka's calls block until the broker answers; keep them off the async workers.
        let measured = tokio::task::spawn_blocking(move || {
            measure(&measuring, &topics_now, group, &assigned_now)
        })
        .await;
        let lags = match measured {
            Ok(Ok(lags)) => lags,
            Ok(Err(error)) => {
                tracing::warn!(consumer = %name, %error, "cannot measure lag; trying again");
                continue;
            }
            Err(error) => {
                tracing::warn!(consumer = %name, %error, "lag measurement failed");
                continue;
            }
        };
        for lag in &lags {
            metrics::gauge!(
                "ledgerline_consumer_lag_messages",
                "consumer" => name.clone(),
                "topic" => lag.partition.topic.to_string(),
                "partition" => lag.partition.partition.to_string()
            )
            .set(lag.lag as f64);
        }
        let assigned: HashSet<TopicPartition> = assigned.into_iter().collect();
        let verdict = watchdog.observe(Instant::now(), &lags, &assigned, group);
        if verdict.rejoin {
            tracing::warn!(consumer = %name, problems = ?verdict.problems, "partitions wait with nobody consuming them; rejoining the group");
            rejoin.store(true, Ordering::Relaxed);
        }
        status.set(verdict.problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(partition: i32, lag: i64, position: i64) -> PartitionLag {
        PartitionLag {
            partition: TopicPartition::new("t", partition),
            lag,
            position,
        }
    }

    fn assigned(partitions: &[i32]) -> HashSet<TopicPartition> {
        partitions
            .iter()
            .map(|p| TopicPartition::new("t", *p))
            .collect()
    }

    #[test]
    fn progress_and_idle_partitions_are_healthy() {
        let mut watchdog = Watchdog::default();
        let start = Instant::now();
        for step in 0..10_u32 {
            let now = start + Duration::from_secs(5) * step;
            // p0 moves on, p1 has nothing to read.
            let lags = [lag(0, 50, i64::from(step) * 10), lag(1, 0, 7)];
            let verdict = watchdog.observe(now, &lags, &assigned(&[0]), true);
            assert_eq!(verdict, Verdict::default(), "step {step}");
        }
    }

    #[test]
    fn a_stalled_partition_owned_by_nobody_here_rejoins_with_growing_pauses() {
        let mut watchdog = Watchdog::default();
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let lags = [lag(0, 50, 100)];
        let none = assigned(&[]);
        assert!(!watchdog.observe(at(0), &lags, &none, true).rejoin);
        assert!(!watchdog.observe(at(5), &lags, &none, true).rejoin);
        let verdict = watchdog.observe(at(10), &lags, &none, true);
        assert!(verdict.rejoin);
        assert_eq!(verdict.problems[0], "no partitions assigned");
        assert!(
            verdict.problems[1].contains("t/0: 50 records wait"),
            "{verdict:?}"
        );
        // The pause: no second rejoin 20 s after the first, then one, then 40 s later.
        assert!(!watchdog.observe(at(25), &lags, &none, true).rejoin);
        assert!(watchdog.observe(at(30), &lags, &none, true).rejoin);
        assert!(!watchdog.observe(at(65), &lags, &none, true).rejoin);
        assert!(watchdog.observe(at(70), &lags, &none, true).rejoin);
        // Progress resets everything.
        let moved = [lag(0, 50, 101)];
        assert_eq!(
            watchdog.observe(at(75), &moved, &none, true),
            Verdict::default()
        );
    }

    #[test]
    fn a_stalled_partition_assigned_here_is_reported_but_not_rejoined() {
        let mut watchdog = Watchdog::default();
        let start = Instant::now();
        let lags = [lag(0, 50, 100)];
        watchdog.observe(start, &lags, &assigned(&[0]), true);
        let verdict = watchdog.observe(start + STALL_AFTER, &lags, &assigned(&[0]), true);
        assert!(!verdict.rejoin);
        assert_eq!(verdict.problems.len(), 1);
        assert!(verdict.problems[0].contains("assigned here"), "{verdict:?}");
    }

    #[test]
    fn no_rejoin_while_partitions_stall_here_too() {
        let mut watchdog = Watchdog::default();
        let start = Instant::now();
        let lags = [lag(0, 50, 100), lag(1, 50, 100)];
        watchdog.observe(start, &lags, &assigned(&[0]), true);
        let verdict = watchdog.observe(start + STALL_AFTER, &lags, &assigned(&[0]), true);
        assert!(!verdict.rejoin, "{verdict:?}");
        assert_eq!(verdict.problems.len(), 2, "{verdict:?}");
    }

    #[test]
    fn broadcast_consumers_never_rejoin() {
        let mut watchdog = Watchdog::default();
        let start = Instant::now();
        let lags = [lag(0, 50, 100)];
        watchdog.observe(start, &lags, &assigned(&[]), false);
        let verdict = watchdog.observe(start + STALL_AFTER, &lags, &assigned(&[]), false);
        assert_eq!(verdict, Verdict::default());
    }
}
