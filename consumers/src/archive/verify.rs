//! Verification: recomputes every chain, every segment's Merkle root and every checkpoint
//! signature, checks the stored fields against the stored bytes, and compares the archive with
//! Kafka where the broker still holds the records. The library behind `archive verify`, the
//! archiver's self-verify and the API.
//!
//! What each problem kind means (the first bad entry of a partition is reported first):
//!
//! - **changed**: an entry's bytes, hash or fields are not what was archived (its hash does
//!   not recompute, a column differs from what its bytes decode to, or Kafka holds other bytes);
//! - **missing**: offsets absent from the chain, or recorded as a gap while Kafka holds them;
//! - **inserted**: a second entry for one offset, or an entry beyond anything Kafka held;
//! - **reordered**: an entry that verifies at another offset of the partition;
//! - **truncated**: the chain ends before what its last checkpoint covers, or before what
//!   the archiver had committed after the last checkpoint;
//! - **bad_signature**, **unknown_key**: a checkpoint whose signature fails, or whose key is
//!   not trusted (or not the key a rotation named);
//! - **checkpoint_head_mismatch**: a checkpoint whose head, Merkle root, count or previous
//!   checkpoint hash differs from what the entries it covers recompute to.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use ledgerline_schemas::{Category, Event, EventCodec, OfflineDecoder};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::chain::GENESIS;
use super::checkpoint::{SignedCheckpoint, TrustedKeys, VerifyError};
use super::merkle;
use super::row::{ArchiveRow, CheckpointRow, EventFields, KIND_EVENT, KIND_GAP, KIND_UNDECODABLE};
use super::store::ArchiveStore;
use crate::clickhouse::{ClickHouseError, Result};

/// Why verification could not run to a verdict (as opposed to a verdict of "broken").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The archive could not be read.
    #[error(transparent)]
    Store(#[from] ClickHouseError),
    /// Kafka, which the archive is compared with, could not be asked.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The task verifying one partition failed.
    #[error("verification task failed: {0}")]
    Task(String),
}

/// At most this many problems are listed per partition (all are counted).
const MAX_PROBLEMS: usize = 50;
/// How far from a bad entry `verify` looks for the offset its contents belong to.
const REORDER_WINDOW: i64 = 256;

/// What went wrong with one entry or checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Changed,
    Missing,
    Inserted,
    Reordered,
    Truncated,
    BadSignature,
    UnknownKey,
    CheckpointHeadMismatch,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::Missing => "missing",
            Self::Inserted => "inserted",
            Self::Reordered => "reordered",
            Self::Truncated => "truncated",
            Self::BadSignature => "bad signature",
            Self::UnknownKey => "unknown key",
            Self::CheckpointHeadMismatch => "checkpoint head mismatch",
        }
    }
}

/// One problem: where, what, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: ProblemKind,
    /// The offset of the bad entry, or the last offset of the bad checkpoint.
    pub offset: Option<i64>,
    /// The event id stored with the bad entry, when it has one.
    pub event_id: Option<String>,
    pub detail: String,
}

/// The newest checkpoint of a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    pub first_offset: i64,
    pub last_offset: i64,
    pub created_at_us: i64,
    pub key_id: String,
}

/// What Kafka said about a partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaSummary {
    pub low_watermark: i64,
    pub high_watermark: i64,
    /// The archiver group's committed offset, when it has one.
    pub committed: Option<i64>,
}

/// The verdict on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub intact: bool,
    /// Offsets verified: the requested range widened to whole checkpoint segments.
    pub from_offset: Option<i64>,
    pub to_offset: Option<i64>,
    pub entries: u64,
    pub events: u64,
    pub undecodable: u64,
    pub gaps: u64,
    pub checkpoints: u64,
    pub last_checkpoint: Option<CheckpointSummary>,
    /// Entries after the last checkpoint: chained, not yet signed, provable only later.
    pub unsigned_entries: u64,
    pub kafka: Option<KafkaSummary>,
    /// How many problems were found; the first [`MAX_PROBLEMS`] are in `problems`.
    pub problem_count: u64,
    pub problems: Vec<Problem>,
}

impl PartitionReport {
    /// The first bad entry or checkpoint, by offset.
    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }

    fn problem(
        &mut self,
        kind: ProblemKind,
        offset: Option<i64>,
        event_id: Option<&str>,
        detail: impl Into<String>,
    ) {
        self.intact = false;
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                kind,
                offset,
                event_id: event_id.filter(|id| !id.is_empty()).map(str::to_owned),
                detail: detail.into(),
            });
        }
    }
}

/// The verdict on the whole archive (or the partitions and range asked for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub intact: bool,
    pub verified_at_us: i64,
    pub partitions: Vec<PartitionReport>,
}

impl Report {
    /// The human-readable report `archive verify` prints.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for partition in &self.partitions {
            let _ = write!(
                text,
                "{}/{}: {} — {} entries ({} events, {} undecodable, {} gaps), {} checkpoints, {} unsigned",
                partition.topic,
                partition.partition,
                if partition.intact { "intact" } else { "BROKEN" },
                partition.entries,
                partition.events,
                partition.undecodable,
                partition.gaps,
                partition.checkpoints,
                partition.unsigned_entries,
            );
            if let Some(last) = &partition.last_checkpoint {
                let _ = write!(
                    text,
                    "; last checkpoint through offset {} by key {}",
                    last.last_offset, last.key_id
                );
            }
            text.push('\n');
            for (index, problem) in partition.problems.iter().enumerate() {
                let _ = writeln!(
                    text,
                    "  {} {}: offset {}{}: {}",
                    if index == 0 { "first bad:" } else { "also:" },
                    problem.kind.as_str(),
                    problem
                        .offset
                        .map_or_else(|| "-".to_owned(), |offset| offset.to_string()),
                    problem
                        .event_id
                        .as_ref()
                        .map_or_else(String::new, |id| format!(" (event {id})")),
                    problem.detail
                );
            }
            if partition.problem_count as usize > partition.problems.len() {
                let _ = writeln!(
                    text,
                    "  … {} more",
                    partition.problem_count as usize - partition.problems.len()
                );
            }
        }
        let _ = writeln!(
            text,
            "{}",
            if self.intact {
                "archive intact"
            } else {
                "ARCHIVE BROKEN"
            }
        );
        text
    }
}

/// How the fields stored next to the bytes are checked.
#[derive(Clone, Default)]
pub enum Decoder {
    /// Not checked (only the chain, roots and signatures).
    #[default]
    None,
    /// Decoded through the schema registry.
    Registry(Arc<EventCodec>),
    /// Decoded with writer schemas at hand (an export bundle).
    Offline(Arc<OfflineDecoder>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "Decoder::None",
            Self::Registry(_) => "Decoder::Registry",
            Self::Offline(_) => "Decoder::Offline",
        })
    }
}

impl Decoder {
    async fn decode(&self, value: &[u8]) -> Option<std::result::Result<Event, String>> {
        match self {
            Self::None => None,
            Self::Registry(codec) => Some(
                codec
                    .decode(Category::Audit, value)
                    .await
                    .map_err(|error| error.to_string()),
            ),
            Self::Offline(decoder) => Some(
                decoder
                    .decode(Category::Audit, value)
                    .map_err(|error| error.to_string()),
            ),
        }
    }
}

/// What to verify.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// Only this partition of `ledgerline.audit`.
    pub partition: Option<i32>,
    /// From this offset (widened to the start of its checkpoint segment).
    pub from: Option<i64>,
    /// To this offset (widened to the end of its checkpoint segment).
    pub to: Option<i64>,
    /// Only each partition's newest this-many checkpoints and the entries after them.
    pub last_checkpoints: Option<usize>,
}

/// Where Kafka still holds records: what `verify` compares the archive with.
pub trait KafkaView: Send + Sync {
    /// The partitions of `topic`.
    fn partitions(&self, topic: &str) -> std::result::Result<Vec<i32>, String>;
    /// `(low, high)` watermarks.
    fn watermarks(&self, topic: &str, partition: i32) -> std::result::Result<(i64, i64), String>;
    /// The archiver group's committed offset.
    fn committed(&self, topic: &str, partition: i32) -> std::result::Result<Option<i64>, String>;
    /// Records with `from <= offset <= to`, as `(offset, timestamp_ms, key, value)`.
    fn fetch(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> std::result::Result<Vec<KafkaRecord>, String>;
}

/// One record as Kafka holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Verifies the archive in `store` against `trusted` keys, checking fields with `decoder` and
/// comparing with `kafka` when given.
pub async fn verify(
    store: &ArchiveStore,
    trusted: &TrustedKeys,
    decoder: &Decoder,
    kafka: Option<Arc<dyn KafkaView>>,
    options: &VerifyOptions,
) -> std::result::Result<Report, RunError> {
    let mut partitions: Vec<(String, i32)> = store
        .partitions()
        .await?
        .into_iter()
        .map(|p| (p.topic, p.partition))
        .collect();
    if let Some(kafka) = &kafka {
        // Partitions Kafka has but the archive lacks entirely are missing too.
        let topic = Category::Audit.topic_name();
        let held = kafka.partitions(topic).map_err(RunError::Kafka)?;
        for partition in held {
            if !partitions
                .iter()
                .any(|(t, p)| t == topic && *p == partition)
            {
                partitions.push((topic.to_owned(), partition));
            }
        }
        partitions.sort();
    }
    if let Some(only) = options.partition {
        partitions.retain(|(_, partition)| *partition == only);
    }
    // Partitions are independent chains: verified in parallel, one task each (hashing and
    // decoding are CPU work), in partition order. Twice as many as cores, so one partition's
    // task has work while another waits for ClickHouse to sort its next range.
    let parallel = 2 * std::thread::available_parallelism().map_or(2, usize::from);
    let mut verdicts = futures::stream::iter(partitions.into_iter().map(|(topic, partition)| {
        let (store, trusted, decoder, kafka, options) = (
            store.clone(),
            trusted.clone(),
            decoder.clone(),
            kafka.clone(),
            options.clone(),
        );
        tokio::spawn(async move {
            verify_stored_partition(
                &store,
                &topic,
                partition,
                &trusted,
                &decoder,
                kafka.as_deref(),
                &options,
            )
            .await
        })
    }))
    .buffered(parallel);
    let mut report = Report {
        intact: true,
        verified_at_us: now_us(),
        partitions: Vec::new(),
    };
    while let Some(verdict) = verdicts.next().await {
        let partition_report = verdict.map_err(|error| RunError::Task(error.to_string()))??;
        report.intact &= partition_report.intact;
        report.partitions.push(partition_report);
    }
    Ok(report)
}

/// One partition of the archive in ClickHouse, read in ranges (see [`ChunkedEntries`]).
async fn verify_stored_partition(
    store: &ArchiveStore,
    topic: &str,
    partition: i32,
    trusted: &TrustedKeys,
    decoder: &Decoder,
    kafka: Option<&dyn KafkaView>,
    options: &VerifyOptions,
) -> std::result::Result<PartitionReport, RunError> {
    let checkpoints = store.checkpoints(topic, partition).await?;
    // The archiver's committed offset before anything else is read (see `verify_partition`):
    // the bound below is read after it, so entries committed meanwhile are read too.
    let snapshot = match kafka {
        Some(kafka) => Some(CommittedSnapshot {
            committed: kafka.committed(topic, partition).map_err(RunError::Kafka)?,
            inner: kafka,
        }),
        None => None,
    };
    let kafka = snapshot.as_ref().map(|snapshot| snapshot as &dyn KafkaView);
    // The greatest offset stored bounds the ranges read.
    let last = store
        .head(topic, partition)
        .await?
        .map_or(-1, |head| head.last_offset);
    // Nothing compares an event's columns without a decoder: leave them unread.
    let chain_only = matches!(decoder, Decoder::None);
    verify_partition(
        topic,
        partition,
        checkpoints,
        |from, to| {
            Ok(ChunkedEntries::new(
                store.clone(),
                topic,
                partition,
                chain_only,
                from,
                to.min(last),
            ))
        },
        trusted,
        decoder,
        kafka,
        options,
    )
    .await
}

/// A [`KafkaView`] whose committed offset was read once, up front.
struct CommittedSnapshot<'a> {
    inner: &'a dyn KafkaView,
    committed: Option<i64>,
}

impl KafkaView for CommittedSnapshot<'_> {
    fn partitions(&self, topic: &str) -> std::result::Result<Vec<i32>, String> {
        self.inner.partitions(topic)
    }
    fn watermarks(&self, topic: &str, partition: i32) -> std::result::Result<(i64, i64), String> {
        self.inner.watermarks(topic, partition)
    }
    fn committed(&self, _topic: &str, _partition: i32) -> std::result::Result<Option<i64>, String> {
        Ok(self.committed)
    }
    fn fetch(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> std::result::Result<Vec<KafkaRecord>, String> {
        self.inner.fetch(topic, partition, from, to)
    }
}

/// How many offsets one read of [`ChunkedEntries`] covers.
const CHUNK_OFFSETS: i64 = 50_000;

/// A partition's entries read in ranges of [`CHUNK_OFFSETS`] offsets, the next range fetched
/// while the current one is verified. ClickHouse 18.16 reads and sorts all a query selects
/// before it sends the first row, so one query over a whole partition would keep the verifier
/// idle (and the server's memory full) for as long as that takes.
#[derive(Debug)]
pub struct ChunkedEntries {
    store: ArchiveStore,
    topic: String,
    partition: i32,
    chain_only: bool,
    /// Where the next read starts; `None` once past `to`.
    next_from: Option<i64>,
    to: i64,
    current: std::vec::IntoIter<ArchiveRow>,
    next: Option<tokio::task::JoinHandle<Result<Chunk>>>,
}

/// One range's entries, and where the range after it starts.
type Chunk = (Vec<ArchiveRow>, Option<i64>);

impl ChunkedEntries {
    fn new(
        store: ArchiveStore,
        topic: &str,
        partition: i32,
        chain_only: bool,
        from: i64,
        to: i64,
    ) -> Self {
        let mut entries = Self {
            store,
            topic: topic.to_owned(),
            partition,
            chain_only,
            next_from: (from <= to).then_some(from),
            to,
            current: Vec::new().into_iter(),
            next: None,
        };
        entries.prefetch();
        entries
    }

    fn prefetch(&mut self) {
        let Some(from) = self.next_from.take() else {
            return;
        };
        let (store, topic, partition, chain_only, to) = (
            self.store.clone(),
            self.topic.clone(),
            self.partition,
            self.chain_only,
            self.to,
        );
        self.next = Some(tokio::spawn(async move {
            next_chunk(&store, &topic, partition, chain_only, from, to).await
        }));
    }
}

/// The first non-empty range of entries from `from` on (at most [`CHUNK_OFFSETS`] offsets,
/// none past `to`), and where the range after it starts. An empty range jumps straight to the
/// next stored offset, so a gap of a billion offsets costs one query, not twenty thousand.
async fn next_chunk(
    store: &ArchiveStore,
    topic: &str,
    partition: i32,
    chain_only: bool,
    mut from: i64,
    to: i64,
) -> Result<Chunk> {
    loop {
        let until = from
            .checked_add(CHUNK_OFFSETS - 1)
            .map_or(to, |until| until.min(to));
        let rows = store
            .entries_between(topic, partition, from, until, chain_only)
            .await?;
        let after = until.checked_add(1).filter(|next| *next <= to);
        if !rows.is_empty() {
            return Ok((rows, after));
        }
        let Some(after) = after else {
            return Ok((rows, None));
        };
        match store.first_offset_from(topic, partition, after).await? {
            Some(next) if next <= to => from = next,
            _ => return Ok((Vec::new(), None)),
        }
    }
}

impl EntrySource for ChunkedEntries {
    async fn next_entry(&mut self) -> Result<Option<ArchiveRow>> {
        loop {
            if let Some(row) = self.current.next() {
                return Ok(Some(row));
            }
            let Some(next) = self.next.take() else {
                return Ok(None);
            };
            let (rows, after) = next
                .await
                .map_err(|error| ClickHouseError::InsertTask(error.to_string()))??;
            self.next_from = after;
            self.prefetch();
            self.current = rows.into_iter();
        }
    }
}

/// Where one partition's entries come from: a ClickHouse cursor, or a bundle's lines.
pub trait EntrySource {
    fn next_entry(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Option<ArchiveRow>>> + Send;
}

impl EntrySource for clickhouse::query::RowCursor<ArchiveRow> {
    async fn next_entry(&mut self) -> Result<Option<ArchiveRow>> {
        self.next()
            .await
            .map_err(crate::clickhouse::error::query_failed("archive entries"))
    }
}

impl EntrySource for std::vec::IntoIter<ArchiveRow> {
    async fn next_entry(&mut self) -> Result<Option<ArchiveRow>> {
        Ok(self.next())
    }
}

/// Verifies one partition, given its checkpoints and a way to read its entries in a range.
#[allow(clippy::too_many_arguments)]
pub async fn verify_partition<S: EntrySource + Send>(
    topic: &str,
    partition: i32,
    checkpoint_rows: Vec<CheckpointRow>,
    mut entries: impl FnMut(i64, i64) -> Result<S>,
    trusted: &TrustedKeys,
    decoder: &Decoder,
    kafka: Option<&dyn KafkaView>,
    options: &VerifyOptions,
) -> std::result::Result<PartitionReport, RunError> {
    let mut report = PartitionReport {
        topic: topic.to_owned(),
        partition,
        intact: true,
        from_offset: None,
        to_offset: None,
        entries: 0,
        events: 0,
        undecodable: 0,
        gaps: 0,
        checkpoints: checkpoint_rows.len() as u64,
        last_checkpoint: checkpoint_rows.last().map(|row| CheckpointSummary {
            first_offset: row.first_offset,
            last_offset: row.last_offset,
            created_at_us: row.created_at_us,
            key_id: row.key_id.clone(),
        }),
        unsigned_entries: 0,
        kafka: None,
        problem_count: 0,
        problems: Vec::new(),
    };

    // --- checkpoints on their own: signatures, keys, their chain, contiguity -------------
    let mut checkpoints: Vec<SignedCheckpoint> = Vec::with_capacity(checkpoint_rows.len());
    let mut previous: Option<SignedCheckpoint> = None;
    for row in &checkpoint_rows {
        let signed = match row.to_signed() {
            Ok(signed) => signed,
            Err(column) => {
                report.problem(
                    ProblemKind::Changed,
                    Some(row.last_offset),
                    None,
                    format!("checkpoint column {column} is not valid hex"),
                );
                continue;
            }
        };
        match signed.verify(trusted) {
            Ok(()) => {}
            Err(VerifyError::UnknownKey { .. }) => report.problem(
                ProblemKind::UnknownKey,
                Some(row.last_offset),
                None,
                format!(
                    "checkpoint of offsets {}..={} is signed by key {}, which is not trusted",
                    row.first_offset, row.last_offset, row.key_id
                ),
            ),
            Err(error) => report.problem(
                ProblemKind::BadSignature,
                Some(row.last_offset),
                None,
                format!(
                    "checkpoint of offsets {}..={}: {error}",
                    row.first_offset, row.last_offset
                ),
            ),
        }
        // The first checkpoint follows genesis, every later one the checkpoint before it.
        let expected_previous = previous.as_ref().map_or(GENESIS, |p| p.checkpoint.hash());
        if signed.checkpoint.previous_checkpoint_hash != expected_previous {
            report.problem(
                ProblemKind::CheckpointHeadMismatch,
                Some(row.last_offset),
                None,
                format!(
                    "checkpoint of offsets {}..={} does not follow the previous checkpoint (previous_checkpoint_hash differs)",
                    row.first_offset, row.last_offset
                ),
            );
        }
        if let Some(previous) = &previous {
            if signed.checkpoint.first_offset != previous.checkpoint.last_offset + 1 {
                report.problem(
                    ProblemKind::CheckpointHeadMismatch,
                    Some(row.last_offset),
                    None,
                    format!("checkpoint of offsets {}..={} does not start after the previous one (through {})", row.first_offset, row.last_offset, previous.checkpoint.last_offset),
                );
            }
            // Every checkpoint is signed by the key of the one before it, or by the key that
            // one rotated to: a retired key (or any other trusted one) cannot sign later ones.
            let expected_key = previous
                .checkpoint
                .next_key_id
                .as_deref()
                .unwrap_or(&previous.checkpoint.key_id);
            if signed.checkpoint.key_id != expected_key {
                report.problem(
                    ProblemKind::UnknownKey,
                    Some(row.last_offset),
                    None,
                    format!(
                        "checkpoint is signed by key {}, but the key for it is {expected_key}{}",
                        signed.checkpoint.key_id,
                        if previous.checkpoint.next_key_id.is_some() {
                            " (the previous checkpoint rotated to it)"
                        } else {
                            " (no rotation announced a change)"
                        }
                    ),
                );
            }
        }
        previous = Some(signed.clone());
        checkpoints.push(signed);
    }

    // --- the range, widened to whole segments ----------------------------------------------
    let mut from = options.from.unwrap_or(0).max(0);
    if let Some(last) = options.last_checkpoints {
        if checkpoints.len() > last {
            from = from.max(
                checkpoints[checkpoints.len() - last]
                    .checkpoint
                    .first_offset,
            );
        }
    }
    let mut to = options.to.unwrap_or(i64::MAX);
    let mut anchor = GENESIS;
    if from > 0 {
        // Start at the segment holding `from`, anchored on the checkpoint before it.
        match checkpoints
            .iter()
            .position(|c| c.checkpoint.last_offset >= from)
        {
            Some(index) => {
                from = checkpoints[index].checkpoint.first_offset;
                if index > 0 {
                    anchor = checkpoints[index - 1].checkpoint.head_hash;
                }
            }
            None => {
                if let Some(last) = checkpoints.last() {
                    from = last.checkpoint.last_offset + 1;
                    anchor = last.checkpoint.head_hash;
                } else {
                    from = 0;
                }
            }
        }
    }
    if let Some(segment) = checkpoints.iter().find(|c| c.checkpoint.last_offset >= to) {
        to = segment.checkpoint.last_offset;
    }
    report.from_offset = Some(from);
    report.to_offset = (to != i64::MAX).then_some(to);
    let mut segments: VecDeque<&SignedCheckpoint> = checkpoints
        .iter()
        .filter(|c| c.checkpoint.last_offset >= from && c.checkpoint.first_offset <= to)
        .collect();

    // The archiver's committed offset, read before the entries: it only moves after the
    // entries it covers are stored, so a live archiver writing on while this reads cannot make
    // the archive look truncated. (The high watermark is read after the entries, for the
    // same reason the other way round.)
    let committed = match kafka {
        Some(kafka) => kafka.committed(topic, partition).map_err(RunError::Kafka)?,
        None => None,
    };

    // --- the chain ----------------------------------------------------------------------
    let mut cursor = entries(from, to)?;
    let mut expected_offset = from;
    let mut running = anchor;
    let mut leaves: Vec<[u8; 32]> = Vec::new();
    let mut window: VecDeque<ArchiveRow> = VecDeque::new();
    let mut gap_rows: Vec<(i64, i64)> = Vec::new();
    let mut head_offset: Option<i64> = None;
    let mut lookahead = cursor.next_entry().await?;
    while let Some(first) = lookahead.take() {
        // Every entry stored for this offset: one, unless a row was inserted beside it.
        let mut same_offset = vec![first];
        loop {
            lookahead = cursor.next_entry().await?;
            match lookahead.take() {
                Some(next) if next.offset == same_offset[0].offset => same_offset.push(next),
                other => {
                    lookahead = other;
                    break;
                }
            }
        }
        if same_offset.len() > 1 {
            // The genuine entry is the one that chains; the others were inserted.
            let genuine = same_offset
                .iter()
                .position(|row| {
                    row.offset == expected_offset
                        && row.prev_hash_bytes() == Some(running)
                        && row.hash_bytes() == Some(row.recompute_hash(&running))
                })
                .unwrap_or(0);
            let row = same_offset.swap_remove(genuine);
            for inserted in &same_offset {
                report.entries += 1;
                report.problem(
                    ProblemKind::Inserted,
                    Some(inserted.offset),
                    Some(&inserted.event_id),
                    format!(
                        "a second entry for offset {} (hash {})",
                        inserted.offset, inserted.hash
                    ),
                );
            }
            same_offset = vec![row];
        }
        let Some(row) = same_offset.pop() else {
            continue;
        };
        report.entries += 1;
        match row.kind.as_str() {
            KIND_EVENT => report.events += 1,
            KIND_UNDECODABLE => report.undecodable += 1,
            KIND_GAP => report.gaps += 1,
            _ => {}
        }
        if row.offset < expected_offset {
            report.problem(
                ProblemKind::Inserted,
                Some(row.offset),
                Some(&row.event_id),
                format!(
                    "a second entry for offset {} (hash {})",
                    row.offset, row.hash
                ),
            );
            continue;
        }
        if row.offset > expected_offset {
            report.problem(
                ProblemKind::Missing,
                Some(expected_offset),
                None,
                format!(
                    "offsets {expected_offset}..={} are not in the archive",
                    row.offset - 1
                ),
            );
        }
        // Checkpoints that cover no entry (a key rotation with nothing pending) fix the head as
        // it stood before this entry.
        while let Some(segment) = segments.front() {
            let checkpoint = &segment.checkpoint;
            if checkpoint.count > 0 || checkpoint.last_offset >= row.offset {
                break;
            }
            if checkpoint.head_hash != running || checkpoint.merkle_root != merkle::root(&[]) {
                report.problem(
                    ProblemKind::CheckpointHeadMismatch,
                    Some(checkpoint.last_offset),
                    None,
                    format!(
                        "empty checkpoint at offset {}: its head hash is not the chain's hash there",
                        checkpoint.last_offset
                    ),
                );
            }
            segments.pop_front();
        }
        let stored_prev = row.prev_hash_bytes();
        let stored_hash = row.hash_bytes();
        let computed = row.recompute_hash(&running);
        let chain_ok = row.offset == expected_offset
            && stored_prev == Some(running)
            && stored_hash == Some(computed);
        if !chain_ok && row.offset == expected_offset {
            diagnose(
                &mut report,
                &row,
                &running,
                stored_prev,
                stored_hash,
                &window,
            );
        }
        // Each entry's columns against its own bytes, whatever the chain says around it.
        check_fields(&mut report, &row, decoder).await;
        if row.kind == KIND_GAP {
            gap_rows.push((row.offset, row.last_offset));
        } else if row.kind != KIND_EVENT && row.kind != KIND_UNDECODABLE {
            report.problem(
                ProblemKind::Changed,
                Some(row.offset),
                Some(&row.event_id),
                format!("unknown entry kind `{}`", row.kind),
            );
        }
        // Continue from what is stored, so one bad entry is reported once, not for every
        // entry after it.
        leaves.push(computed);
        running = if chain_ok {
            computed
        } else {
            stored_hash.unwrap_or(computed)
        };
        expected_offset = row.last_offset.max(row.offset) + 1;
        head_offset = Some(row.last_offset);

        // The segment this entry closes.
        while let Some(segment) = segments.front() {
            let checkpoint = &segment.checkpoint;
            if checkpoint.last_offset > row.last_offset {
                break;
            }
            if checkpoint.last_offset < row.last_offset
                || checkpoint.count != leaves.len() as u64
                || merkle::root(&leaves) != checkpoint.merkle_root
                || checkpoint.head_hash != computed
            {
                let what = if checkpoint.last_offset < row.last_offset {
                    format!("no entry ends at offset {}", checkpoint.last_offset)
                } else if checkpoint.count != leaves.len() as u64 {
                    format!(
                        "it covers {} entries, the archive holds {}",
                        checkpoint.count,
                        leaves.len()
                    )
                } else if checkpoint.head_hash != computed {
                    "its head hash is not the chain's hash at that offset".to_owned()
                } else {
                    "its Merkle root is not the root of the entries it covers".to_owned()
                };
                report.problem(
                    ProblemKind::CheckpointHeadMismatch,
                    Some(checkpoint.last_offset),
                    None,
                    format!(
                        "checkpoint of offsets {}..={}: {what}",
                        checkpoint.first_offset, checkpoint.last_offset
                    ),
                );
            }
            leaves.clear();
            segments.pop_front();
        }
        window.push_back(row);
        if window.len() as i64 > REORDER_WINDOW * 2 {
            window.pop_front();
        }
    }
    report.unsigned_entries = leaves.len() as u64;
    // Checkpoints beyond the end of the chain: the entries they covered are gone.
    if let Some(segment) = segments.iter().find(|segment| segment.checkpoint.count > 0) {
        report.problem(
            ProblemKind::Truncated,
            Some(expected_offset),
            None,
            format!(
                "the chain ends at offset {}, but a checkpoint covers offsets {}..={}",
                expected_offset - 1,
                segment.checkpoint.first_offset,
                segment.checkpoint.last_offset
            ),
        );
    }

    if let Some(kafka) = kafka {
        compare_with_kafka(
            &mut report,
            kafka,
            committed,
            &checkpoints,
            head_offset,
            &gap_rows,
            &window,
            options,
        )?;
    }
    report
        .problems
        .sort_by_key(|problem| problem.offset.unwrap_or(i64::MAX));
    Ok(report)
}

/// Names what is wrong with an entry whose chain check failed.
fn diagnose(
    report: &mut PartitionReport,
    row: &ArchiveRow,
    running: &[u8; 32],
    stored_prev: Option<[u8; 32]>,
    stored_hash: Option<[u8; 32]>,
    window: &VecDeque<ArchiveRow>,
) {
    let (Some(stored_prev), Some(stored_hash)) = (stored_prev, stored_hash) else {
        report.problem(
            ProblemKind::Changed,
            Some(row.offset),
            Some(&row.event_id),
            "its prev_hash or hash column is not 64 hex digits",
        );
        return;
    };
    // Contents that verify at another offset were moved, not edited.
    if row.recompute_hash(&stored_prev) != stored_hash {
        let elsewhere = (row.offset - REORDER_WINDOW..=row.offset + REORDER_WINDOW)
            .filter(|offset| *offset != row.offset && *offset >= 0)
            .find(|offset| row.recompute_hash_at(&stored_prev, *offset) == stored_hash);
        if let Some(offset) = elsewhere {
            report.problem(
                ProblemKind::Reordered,
                Some(row.offset),
                Some(&row.event_id),
                format!(
                    "the entry at offset {} holds the record archived at offset {offset}",
                    row.offset
                ),
            );
            return;
        }
        report.problem(
            ProblemKind::Changed,
            Some(row.offset),
            Some(&row.event_id),
            "its hash does not recompute from its bytes (value, key or timestamp changed)",
        );
        return;
    }
    if stored_prev != *running {
        let moved = window
            .iter()
            .any(|other| other.hash_bytes() == Some(stored_prev) && other.offset != row.offset - 1);
        if moved {
            report.problem(
                ProblemKind::Reordered,
                Some(row.offset),
                Some(&row.event_id),
                "its prev_hash is the hash of an entry at another offset",
            );
        } else {
            report.problem(ProblemKind::Changed, Some(row.offset), Some(&row.event_id), "its prev_hash is not the previous entry's hash (an entry before it was changed, or this one forged)");
        }
    }
}

/// Checks that the fields stored next to the bytes are what the bytes decode to.
async fn check_fields(report: &mut PartitionReport, row: &ArchiveRow, decoder: &Decoder) {
    match row.kind.as_str() {
        KIND_EVENT => match decoder.decode(&row.value).await {
            None => {}
            Some(Ok(event)) => {
                if let Some(column) = row.first_field_difference(&EventFields::from_event(event)) {
                    report.problem(
                        ProblemKind::Changed,
                        Some(row.offset),
                        Some(&row.event_id),
                        format!("column {column} differs from what the archived bytes hold"),
                    );
                }
            }
            Some(Err(error)) => report.problem(
                ProblemKind::Changed,
                Some(row.offset),
                Some(&row.event_id),
                format!("archived as an event, but its bytes do not decode: {error}"),
            ),
        },
        KIND_UNDECODABLE | KIND_GAP => {
            if let Some(column) = row.first_field_difference(&EventFields::default()) {
                report.problem(
                    ProblemKind::Changed,
                    Some(row.offset),
                    Some(&row.event_id),
                    format!("a {} entry has event column {column} set", row.kind),
                );
            }
            // `kind` is not hashed: an event relabelled undecodable (to hide it from searches
            // and proofs) keeps its chain, but its bytes still decode into a valid event.
            // (A schema registered only after the record was archived would show up here too,
            // and is worth a look as well.)
            if row.kind == KIND_UNDECODABLE {
                if let Some(Ok(event)) = decoder.decode(&row.value).await {
                    if event.validate().is_ok() {
                        report.problem(
                            ProblemKind::Changed,
                            Some(row.offset),
                            Some(&event.envelope().event_id.to_string()),
                            "archived as undecodable, but its bytes decode into a valid event",
                        );
                    }
                }
            }
        }
        _ => {}
    }
}

/// Compares the archive's end and its gaps with what Kafka holds.
#[allow(clippy::too_many_arguments)]
fn compare_with_kafka(
    report: &mut PartitionReport,
    kafka: &dyn KafkaView,
    committed: Option<i64>,
    checkpoints: &[SignedCheckpoint],
    head_offset: Option<i64>,
    gap_rows: &[(i64, i64)],
    tail: &VecDeque<ArchiveRow>,
    options: &VerifyOptions,
) -> std::result::Result<(), RunError> {
    let (low, high) = kafka
        .watermarks(&report.topic, report.partition)
        .map_err(RunError::Kafka)?;
    report.kafka = Some(KafkaSummary {
        low_watermark: low,
        high_watermark: high,
        committed,
    });
    let head = head_offset.unwrap_or(-1);
    if head >= high {
        report.problem(
            ProblemKind::Inserted,
            Some(high),
            None,
            format!(
                "the archive holds offsets up to {head}, but Kafka never held an offset past {}",
                high - 1
            ),
        );
    }
    let signed_through = checkpoints.last().map_or(-1, |c| c.checkpoint.last_offset);
    if options.to.is_none() {
        if let Some(committed) = committed {
            if committed - 1 > head && committed - 1 > signed_through {
                report.problem(
                    ProblemKind::Truncated,
                    Some(head + 1),
                    None,
                    format!("entries after the last checkpoint are gone: the archiver had archived through offset {}, the chain ends at {head}", committed - 1),
                );
            }
        }
    }
    for (first, last) in gap_rows {
        if *last < low || *first >= high {
            continue;
        }
        let held = kafka
            .fetch(&report.topic, report.partition, (*first).max(low), *last)
            .map_err(RunError::Kafka)?;
        if let Some(record) = held.first() {
            report.problem(
                ProblemKind::Missing,
                Some(record.offset),
                None,
                format!(
                    "recorded as a gap ({first}..={last}), but Kafka holds offset {}",
                    record.offset
                ),
            );
        }
    }
    // The unsigned tail, which no checkpoint protects yet, against Kafka's own bytes.
    let unsigned: Vec<&ArchiveRow> = tail
        .iter()
        .filter(|row| {
            row.offset > signed_through
                && row.kind != KIND_GAP
                && row.offset >= low
                && row.offset < high
        })
        .collect();
    if let (Some(first), Some(last)) = (unsigned.first(), unsigned.last()) {
        let held = kafka
            .fetch(&report.topic, report.partition, first.offset, last.offset)
            .map_err(RunError::Kafka)?;
        for row in unsigned {
            if let Some(record) = held.iter().find(|record| record.offset == row.offset) {
                if record.value != row.value
                    || record.key != row.key
                    || record.timestamp_ms != row.timestamp_ms
                {
                    report.problem(
                        ProblemKind::Changed,
                        Some(row.offset),
                        Some(&row.event_id),
                        "differs from the record Kafka holds at this offset",
                    );
                }
            }
        }
    }
    Ok(())
}

/// Verifies the newest `[archive] self_verify_checkpoints` checkpoints of every partition every
/// `self_verify_interval_secs`, and sets `ledgerline_archive_verify_ok` (1 intact, 0 broken)
/// and `ledgerline_archive_verify_timestamp_seconds`.
pub async fn self_verify_loop(
    config: super::ArchiveConfig,
    trusted: TrustedKeys,
    codec: Arc<EventCodec>,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(config.self_verify_interval_secs);
    let store = match ArchiveStore::new(config.clickhouse.client(), &config.clickhouse.database) {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(%error, "self-verify disabled");
            return;
        }
    };
    let decoder = Decoder::Registry(codec);
    let options = VerifyOptions {
        last_checkpoints: Some(config.self_verify_checkpoints),
        ..VerifyOptions::default()
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match verify(&store, &trusted, &decoder, None, &options).await {
            Ok(report) => {
                metrics::gauge!("ledgerline_archive_verify_ok").set(if report.intact {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("ledgerline_archive_verify_timestamp_seconds")
                    .set(now_us() as f64 / 1e6);
                if report.intact {
                    tracing::info!(
                        partitions = report.partitions.len(),
                        "self-verify: archive intact"
                    );
                } else {
                    tracing::error!(report = %report.to_text(), "self-verify: ARCHIVE BROKEN");
                }
            }
            Err(error) => tracing::warn!(%error, "self-verify could not read the archive"),
        }
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
