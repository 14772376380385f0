//! How one consumer runs: [`RuntimeConfig`], built by each consumer in code, and
//! [`ConsumerSettings`], the serde settings every consumer section of `ledgerline.toml`
//! shares (flattened into `[projector]`, `[archive]`, …).

use std::time::Duration;

use ledgerline_service::config::{ConfigError, Result};
use serde::Deserialize;

use super::status::ConsumerStatus;

/// Where a consumer's position lives and how it gets its partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// A consumer group: the coordinator shares the partitions among the members, offsets are
    /// committed once the sink took a batch, and the sink may supply its own resume position
    /// per partition on assignment ([`super::Sink::on_assign`]).
    Group(GroupMode),
    /// No group and no commits: every partition of the topics is assigned to this consumer
    /// alone, read from `start` (or the sink's own position), so every instance sees every
    /// record. The live fan-out in each query-API replica runs this way.
    Broadcast { start: StartAt },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMode {
    pub group_id: String,
    /// Static membership (`group.instance.id`): a member that restarts with the same id takes
    /// its predecessor's place at once instead of waiting out the session timeout. Unique per
    /// running instance; two live members with one id fence each other.
    pub instance_id: Option<String>,
}

/// Where a broadcast consumer starts on a partition the sink has no position for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The next record produced (the live tail).
    Latest,
    /// The oldest record the broker still holds.
    Earliest,
    /// The first record whose Kafka timestamp is at or after this many milliseconds since the
    /// Unix epoch (`offsets_for_times`); the end of the partition when none is.
    Timestamp(i64),
}

/// What becomes of a record that cannot be turned into a valid event (too large, not in the
/// wire format, unknown schema id, corrupt Avro, another schema, or an invalid event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRecords {
    /// Produced to `ledgerline.dlq` with the reason, then committed past (the projector).
    DeadLetter,
    /// Counted in `ledgerline_consumer_rejected_total{reason,action="skipped"}` and logged. Broadcast consumers
    /// do this: every replica would write the same dead letter.
    Skip,
    /// Handed to the sink with [`super::Record::event`] set to the rejection, for a sink that
    /// must keep everything that was there (the audit archive chains undecodable bytes too).
    Deliver,
}

/// How one consumer runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The consumer's name: the `consumer` label of every runtime metric, a field of every log
    /// line, and the Kafka `client.id` unless `[kafka] client_id` sets one.
    pub consumer: String,
    pub topics: Vec<String>,
    pub mode: Mode,
    pub bad_records: BadRecords,
    pub batch_max_events: usize,
    pub batch_max_wait: Duration,
    /// Larger records are rejected with reason `oversize`.
    pub max_event_bytes: usize,
    /// librdkafka's `fetch.wait.max.ms`, unless `[kafka] librdkafka` sets it.
    pub fetch_wait_max: Duration,
    /// Shared with whoever serves `/health`: what the runtime knows of its own progress.
    pub status: ConsumerStatus,
}

impl RuntimeConfig {
    /// A group consumer with the settings of its `ledgerline.toml` section, dead-lettering bad
    /// records.
    pub fn group(
        consumer: &str,
        topics: Vec<String>,
        settings: &ConsumerSettings,
        default_group_id: &str,
    ) -> Self {
        Self {
            consumer: consumer.to_owned(),
            topics,
            mode: Mode::Group(GroupMode {
                group_id: settings
                    .group_id
                    .clone()
                    .unwrap_or_else(|| default_group_id.to_owned()),
                instance_id: settings.group_instance_id.clone(),
            }),
            bad_records: BadRecords::DeadLetter,
            batch_max_events: settings.batch_max_events,
            batch_max_wait: Duration::from_millis(settings.batch_max_wait_ms),
            max_event_bytes: settings.max_event_bytes,
            fetch_wait_max: Duration::from_millis(settings.fetch_wait_max_ms),
            status: ConsumerStatus::default(),
        }
    }

    /// A broadcast consumer that skips bad records.
    pub fn broadcast(
        consumer: &str,
        topics: Vec<String>,
        start: StartAt,
        settings: &ConsumerSettings,
    ) -> Self {
        Self {
            mode: Mode::Broadcast { start },
            bad_records: BadRecords::Skip,
            ..Self::group(consumer, topics, settings, consumer)
        }
    }
}

/// The settings every consumer section of `ledgerline.toml` has, flattened into it:
/// `[projector] batch_max_events = 50000` (override: `LEDGERLINE_PROJECTOR__BATCH_MAX_EVENTS`).
/// Not `deny_unknown_fields` itself: the section that flattens it refuses unknown keys, and
/// would see this struct's keys as unknown if it did.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ConsumerSettings {
    /// Kafka consumer group; every replica of one consumer shares it. Each consumer has its own
    /// default (`ledgerline-clickhouse` for the projector).
    pub group_id: Option<String>,
    /// Static group membership (`group.instance.id`), unique per running instance: a stable
    /// name such as a StatefulSet pod name. On Kafka, a member restarted with the same id gets
    /// its partitions back at once, rather than after the session timeout. Unset, members are
    /// dynamic and the runtime's watchdog rejoins a group that left partitions unowned. Leave
    /// it unset on Tansu 0.6.0: a static member killed while its group was settling can leave
    /// the group without an owner for good, which rejoining under the same id does not cure.
    pub group_instance_id: Option<String>,
    /// A batch is written when it holds this many events (or when `batch_max_wait_ms` passes,
    /// whichever comes first).
    pub batch_max_events: usize,
    /// A batch is written at the latest this many milliseconds after its first record arrived.
    pub batch_max_wait_ms: u64,
    /// Records larger than this many bytes are rejected (`oversize`) instead of decoded.
    pub max_event_bytes: usize,
    /// How long the broker may hold a fetch that has no data yet (librdkafka's
    /// `fetch.wait.max.ms`, default 500). Kafka answers as soon as there is data, so on Kafka
    /// this only bounds idle waits. Tansu 0.6.0 waits this long (half of it from 250 ms up)
    /// after every fetch, data or not, which at 500 cost the projector a third of its
    /// throughput (docs/benchmarks.md). 0 to 300,000.
    pub fetch_wait_max_ms: u64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            group_id: None,
            group_instance_id: None,
            batch_max_events: default_batch_max_events(),
            batch_max_wait_ms: default_batch_max_wait_ms(),
            max_event_bytes: default_max_event_bytes(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
        }
    }
}

/// Large enough for ClickHouse to like the parts, small enough to insert in well under a second.
fn default_batch_max_events() -> usize {
    50_000
}

fn default_batch_max_wait_ms() -> u64 {
    1_000
}

fn default_max_event_bytes() -> usize {
    1024 * 1024
}

fn default_fetch_wait_max_ms() -> u64 {
    50
}

/// Largest accepted `batch_max_events`: one projector insert stays one ClickHouse block (and
/// so one part) under the default `max_insert_block_size` of 1,048,576.
pub const MAX_BATCH_EVENTS: usize = 1_000_000;

impl ConsumerSettings {
    /// Checks what serde cannot; errors name the key as `<section>.<key>`.
    pub fn validate(&self, section: &str) -> Result<()> {
        let key = |name: &str| format!("{section}.{name}");
        for (name, value) in [
            ("group_id", &self.group_id),
            ("group_instance_id", &self.group_instance_id),
        ] {
            if value.as_ref().is_some_and(|value| value.trim().is_empty()) {
                return Err(ConfigError::invalid_value(
                    key(name),
                    "must not be empty (leave it out for the default)",
                ));
            }
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&self.batch_max_events) {
            return Err(ConfigError::invalid_value(
                key("batch_max_events"),
                format!(
                    "{} must be between 1 and {MAX_BATCH_EVENTS}, so one batch is one \
                     ClickHouse insert",
                    self.batch_max_events
                ),
            ));
        }
        if self.batch_max_wait_ms == 0 {
            return Err(ConfigError::invalid_value(
                key("batch_max_wait_ms"),
                "must be at least 1",
            ));
        }
        if self.fetch_wait_max_ms > 300_000 {
            return Err(ConfigError::invalid_value(
                key("fetch_wait_max_ms"),
                format!(
                    "{} must be at most 300000 (librdkafka's limit)",
                    self.fetch_wait_max_ms
                ),
            ));
        }
        if self.max_event_bytes == 0 {
            return Err(ConfigError::invalid_value(
                key("max_event_bytes"),
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Breaker = fn(&mut ConsumerSettings);

    #[test]
    fn validate_names_the_bad_key_in_its_section() {
        let cases: [(&str, Breaker); 7] = [
            ("batch_max_events", |c| c.batch_max_events = 0),
            ("batch_max_events", |c| {
                c.batch_max_events = MAX_BATCH_EVENTS + 1
            }),
            ("batch_max_wait_ms", |c| c.batch_max_wait_ms = 0),
            ("max_event_bytes", |c| c.max_event_bytes = 0),
            ("fetch_wait_max_ms", |c| c.fetch_wait_max_ms = 300_001),
            ("group_id", |c| c.group_id = Some(" ".to_owned())),
            ("group_instance_id", |c| {
                c.group_instance_id = Some(String::new())
            }),
        ];
        for (key, break_it) in cases {
            let mut settings = ConsumerSettings::default();
            settings.validate("archiver").unwrap();
            break_it(&mut settings);
            let error = settings.validate("archiver").unwrap_err().to_string();
            assert!(
                error.contains(&format!("`archiver.{key}`")),
                "{key}: {error}"
            );
        }
    }

    #[test]
    fn group_and_broadcast_configs_take_the_settings() {
        let settings = ConsumerSettings {
            group_instance_id: Some("projector-0".to_owned()),
            batch_max_events: 7,
            ..ConsumerSettings::default()
        };
        let group = RuntimeConfig::group("projector", vec!["t".to_owned()], &settings, "g");
        assert_eq!(
            group.mode,
            Mode::Group(GroupMode {
                group_id: "g".to_owned(),
                instance_id: Some("projector-0".to_owned())
            })
        );
        assert_eq!(group.bad_records, BadRecords::DeadLetter);
        assert_eq!(group.batch_max_events, 7);
        assert_eq!(group.fetch_wait_max, Duration::from_millis(50));

        let broadcast =
            RuntimeConfig::broadcast("fanout", vec!["t".to_owned()], StartAt::Latest, &settings);
        assert_eq!(
            broadcast.mode,
            Mode::Broadcast {
                start: StartAt::Latest
            }
        );
        assert_eq!(broadcast.bad_records, BadRecords::Skip);
    }
}
