//! The runtime consumer's librdkafka callbacks (partition assignments, in the log and in the
//! set of partitions whose lag is reported) and the lag report itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

/// How often lag is measured. Lag moves in seconds; each measurement is one watermark request
/// per assigned partition.
const LAG_INTERVAL: Duration = Duration::from_secs(5);
/// Longest wait for one broker answer while measuring lag.
const LAG_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the runtime knows of the group's committed offset of an assigned partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Committed {
    /// Just assigned; the lag task reads it from the broker.
    NotRead,
    /// The group never committed this partition: everything in it is still to be read.
    Never,
    At(i64),
}

#[derive(Debug)]
pub(super) struct RuntimeContext {
    group_id: String,
    assigned: Mutex<HashMap<(String, i32), Committed>>,
}

impl RuntimeContext {
    pub(super) fn new(group_id: String) -> Self {
        Self {
            group_id,
            assigned: Mutex::default(),
        }
    }

    /// Records offsets the runtime committed, for partitions still assigned: a batch written
    /// after its partitions were revoked must not bring them back into the lag report.
    pub(super) fn committed(&self, offsets: &TopicPartitionList) {
        self.update(offsets, |_| true);
    }

    /// Records committed offsets read from the broker, unless a commit got there first.
    fn read(&self, offsets: &TopicPartitionList) {
        self.update(offsets, |known| known == Committed::NotRead);
    }

    fn update(&self, offsets: &TopicPartitionList, replace: impl Fn(Committed) -> bool) {
        let Ok(mut assigned) = self.assigned.lock() else {
            return;
        };
        for element in offsets.elements() {
            let key = (element.topic().to_owned(), element.partition());
            let Some(known) = assigned.get_mut(&key) else {
                continue;
            };
            if replace(*known) {
                *known = match element.offset() {
                    Offset::Offset(offset) => Committed::At(offset),
                    _ => Committed::Never,
                };
            }
        }
    }

    fn snapshot(&self) -> Vec<((String, i32), Committed)> {
        self.assigned
            .lock()
            .map(|assigned| {
                assigned
                    .iter()
                    .map(|(key, known)| (key.clone(), *known))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                if let Ok(mut assigned) = self.assigned.lock() {
                    for element in partitions.elements() {
                        assigned.insert(
                            (element.topic().to_owned(), element.partition()),
                            Committed::NotRead,
                        );
                    }
                }
                tracing::info!(
                    group = %self.group_id,
                    partitions = %describe(partitions),
                    "partitions assigned"
                );
            }
            Rebalance::Revoke(partitions) => {
                if let Ok(mut assigned) = self.assigned.lock() {
                    for element in partitions.elements() {
                        assigned.remove(&(element.topic().to_owned(), element.partition()));
                    }
                }
                // Another member reports these from now on; a stale figure here would be
                // added to its own by anyone summing lag over the group.
                for element in partitions.elements() {
                    lag_gauge(element.topic(), element.partition()).set(0.0);
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

fn lag_gauge(topic: &str, partition: i32) -> metrics::Gauge {
    metrics::gauge!(
        "ledgerline_consumer_lag_messages",
        "topic" => topic.to_owned(),
        "partition" => partition.to_string()
    )
}

/// Reports `ledgerline_consumer_lag_messages{topic,partition}` for every assigned partition
/// every [`LAG_INTERVAL`] until `stop`: its high watermark minus the group's committed offset
/// (minus its low watermark when the group never committed it). The runtime commits only what
/// the sink took, so this is how far the durable position trails the broker.
///
/// A task of its own rather than librdkafka's statistics callback: that callback runs only
/// while the consumer is polled, and the reader stops polling while the sink is stuck, which
/// is when lag matters most. librdkafka's own `consumer_lag` also knows only offsets this
/// client committed, leaving out a partition that has not moved since it was assigned.
pub(super) async fn report_lag(
    consumer: Arc<StreamConsumer<RuntimeContext>>,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(LAG_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let consumer = Arc::clone(&consumer);
        // librdkafka's calls block until the broker answers; keep them off the async workers.
        if let Err(error) = tokio::task::spawn_blocking(move || measure_lag(&consumer)).await {
            tracing::warn!(%error, "lag measurement failed");
        }
    }
}

fn measure_lag(consumer: &StreamConsumer<RuntimeContext>) {
    let context = consumer.context();
    let mut unread = TopicPartitionList::new();
    for ((topic, partition), known) in context.snapshot() {
        if known == Committed::NotRead {
            unread.add_partition(&topic, partition);
        }
    }
    if unread.count() > 0 {
        match consumer.committed_offsets(unread, LAG_REQUEST_TIMEOUT) {
            Ok(offsets) => context.read(&offsets),
            Err(error) => tracing::warn!(
                group = %context.group_id,
                %error,
                "cannot read committed offsets for the lag report; trying again"
            ),
        }
    }
    for ((topic, partition), known) in context.snapshot() {
        let Ok((low, high)) = consumer.fetch_watermarks(&topic, partition, LAG_REQUEST_TIMEOUT)
        else {
            continue;
        };
        let start = match known {
            Committed::At(offset) => offset,
            Committed::Never => low,
            Committed::NotRead => continue,
        };
        lag_gauge(&topic, partition).set((high - start).max(0) as f64);
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
