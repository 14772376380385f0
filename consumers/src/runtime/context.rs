//! The runtime consumer's librdkafka callbacks: consumer lag per partition, from the statistics
//! librdkafka emits every `statistics.interval.ms`, and partition assignments in the log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// How often librdkafka reports statistics, unless `[kafka] librdkafka` sets
/// `statistics.interval.ms` itself. Lag moves in seconds; parsing the report costs a few
/// hundred microseconds, so every five seconds is cheap.
pub(super) const STATISTICS_INTERVAL_MS: &str = "5000";

/// How long an assignment waits for the group's committed offsets, which only the lag
/// metric needs.
const COMMITTED_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct RuntimeContext {
    pub(super) group_id: String,
    /// The group's committed offset per assigned partition: read from the broker when the
    /// partition is assigned, then updated by every commit. `None` while the group has never
    /// committed the partition. librdkafka's own `consumer_lag` knows only offsets this client
    /// committed, so it leaves out exactly the partitions whose sink is stuck.
    committed: Mutex<HashMap<(String, i32), Option<i64>>>,
}

impl RuntimeContext {
    pub(super) fn new(group_id: String) -> Self {
        Self {
            group_id,
            committed: Mutex::default(),
        }
    }

    /// Records offsets the runtime committed, for partitions still assigned: a batch written
    /// after its partitions were revoked must not bring them back into the metric.
    pub(super) fn committed(&self, offsets: &TopicPartitionList) {
        self.remember(offsets, false);
    }

    fn remember(&self, offsets: &TopicPartitionList, assigned: bool) {
        let Ok(mut committed) = self.committed.lock() else {
            return;
        };
        for element in offsets.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let key = (element.topic().to_owned(), element.partition());
            if assigned {
                committed.insert(key, offset);
            } else if let Some(known) = committed.get_mut(&key) {
                *known = offset;
            }
        }
    }
}

impl ClientContext for RuntimeContext {
    /// `ledgerline_consumer_lag_messages{topic,partition}`, for every assigned partition: its
    /// high watermark minus the group's committed offset (minus its low watermark when nothing
    /// was committed yet). The runtime commits only what the sink took, so this is how far the
    /// durable position trails the broker. A partition whose watermark librdkafka does not
    /// know yet is left out rather than shown as 0.
    fn stats(&self, statistics: Statistics) {
        let Ok(committed) = self.committed.lock() else {
            return;
        };
        for ((topic, partition), committed) in committed.iter() {
            let Some(state) = statistics
                .topics
                .get(topic)
                .and_then(|report| report.partitions.get(partition))
            else {
                continue;
            };
            if state.hi_offset < 0 {
                continue;
            }
            let start = committed.unwrap_or(state.lo_offset.max(0));
            metrics::gauge!(
                "ledgerline_consumer_lag_messages",
                "topic" => topic.clone(),
                "partition" => partition.to_string()
            )
            .set((state.hi_offset - start).max(0) as f64);
        }
    }
}

impl ConsumerContext for RuntimeContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                tracing::info!(
                    group = %self.group_id,
                    partitions = %describe(partitions),
                    "partitions assigned"
                );
                // One broker round trip per rebalance, for the lag metric only.
                match consumer.committed_offsets((*partitions).clone(), COMMITTED_TIMEOUT) {
                    Ok(offsets) => self.remember(&offsets, true),
                    Err(error) => tracing::warn!(
                        group = %self.group_id,
                        %error,
                        "cannot read committed offsets; lag is reported once records are committed"
                    ),
                }
            }
            Rebalance::Revoke(partitions) => {
                // Another member reports these from now on; a stale figure here would be
                // added to its own by anyone summing lag over the group.
                if let Ok(mut committed) = self.committed.lock() {
                    for element in partitions.elements() {
                        committed.remove(&(element.topic().to_owned(), element.partition()));
                    }
                }
                for element in partitions.elements() {
                    metrics::gauge!(
                        "ledgerline_consumer_lag_messages",
                        "topic" => element.topic().to_owned(),
                        "partition" => element.partition().to_string()
                    )
                    .set(0.0);
                }
                tracing::info!(
                    group = %self.group_id,
                    partitions = %describe(partitions),
                    "partitions revoked"
                );
            }
            Rebalance::Error(error) => {
                tracing::warn!(group = %self.group_id, %error, "rebalance failed");
            }
        }
    }
}

/// `topic/0,topic/1,…` for a log line.
fn describe(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|element| format!("{}/{}", element.topic(), element.partition()))
        .collect::<Vec<_>>()
        .join(",")
}
