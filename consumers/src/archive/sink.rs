//! The archiver's sink: per partition, chains the batch's records (and the gaps between them)
//! onto the partition's head, inserts them into `records`, cuts signed checkpoints every N
//! entries or T seconds and inserts them into `checkpoints`.
//!
//! State per assigned partition ([`Chain`]) is loaded from ClickHouse in
//! [`Sink::on_assign`] and answered as the resume position, so a new owner continues exactly
//! after the stored head. It is changed only after the insert it describes succeeded, so a
//! failed write retried by the runtime recomputes the same rows: the chain is a function of the
//! Kafka records alone, which is also why two runs (or two members racing over one partition)
//! can only ever write identical rows for an offset, never a fork.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::future::join_all;
use rdkafka::Timestamp;

use super::chain::GENESIS;
use super::checkpoint::{ArchiveSigningKey, Checkpoint, SignedCheckpoint};
use super::merkle;
use super::row::{
    hex32, hex32_string, ArchiveRow, CheckpointRow, EventFields, KIND_EVENT, KIND_GAP,
    KIND_UNDECODABLE,
};
use super::schema::MIGRATIONS;
use super::store::ArchiveStore;
use crate::clickhouse::{
    insert_rows, migrate_on, ClickHouseConfig, ClickHouseError, FailureKind, Result,
};
use crate::runtime::{
    Ownership, PartitionBatch, Positions, Record, Sink, SinkError, TopicPartition,
};

/// Why a write of the archive did not happen.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    /// Fencing: the partition was lost between the batch being read and its write.
    #[error("{0} was revoked before its entries were written; its next owner writes them")]
    Revoked(TopicPartition),
    #[error("signing a checkpoint of {partition}: {reason}")]
    Sign {
        partition: TopicPartition,
        reason: String,
    },
}

/// When a checkpoint is cut.
#[derive(Debug, Clone, Copy)]
pub struct Cadence {
    /// After this many entries of a partition...
    pub every_entries: u64,
    /// ...or this long after the first entry not yet checkpointed.
    pub every: std::time::Duration,
}

/// The signing keys: the current one and, during a rotation, the one it replaces.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub current: Arc<ArchiveSigningKey>,
    pub previous: Option<Arc<ArchiveSigningKey>>,
}

/// Writes batches of `ledgerline.audit` into `<database>.records` and `<database>.checkpoints`.
pub struct ArchiveSink {
    store: ArchiveStore,
    keys: SigningKeys,
    cadence: Cadence,
    chains: HashMap<TopicPartition, Chain>,
    last_failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for ArchiveSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveSink")
            .field("store", &self.store)
            .field("partitions", &self.chains.len())
            .finish_non_exhaustive()
    }
}

/// One partition's chain as this member knows it.
#[derive(Debug)]
struct Chain {
    /// Last offset covered by the newest entry; -1 before the first.
    head_offset: i64,
    head_hash: [u8; 32],
    /// The entries after the last checkpoint, in offset order.
    segment: Vec<SegmentEntry>,
    /// When the first entry of `segment` was archived by this member (or the chain loaded).
    segment_started: Instant,
    previous_checkpoint_hash: [u8; 32],
    /// The key the next checkpoint must be signed with, when the last one named it (a
    /// rotation); otherwise the key that signed the last one.
    last_checkpoint_key: Option<(String, Option<String>)>,
    /// Checkpoints cut whose insert has not succeeded yet: written before anything else.
    pending: Vec<SignedCheckpoint>,
    /// The assignment the last batch was written under, for checkpoints cut when idle.
    ownership: Option<Ownership>,
    /// An insert failed: ClickHouse may still have stored it, whole or a prefix (a timeout, a
    /// reset connection), so the head is read again before anything else is written.
    stale: bool,
}

/// One entry not yet covered by a checkpoint.
#[derive(Debug, Clone, Copy)]
struct SegmentEntry {
    offset: i64,
    last_offset: i64,
    hash: [u8; 32],
}

/// One partition's records of a batch, as rows without their hashes yet.
#[derive(Debug)]
pub struct PreparedPartition {
    /// Hashed in place when written (a retry recomputes them from the head it then has); an
    /// async lock, held across the insert that sends them.
    rows: tokio::sync::Mutex<Vec<ArchiveRow>>,
}

impl ArchiveSink {
    /// Applies the archive's migrations.
    pub async fn start(
        config: &ClickHouseConfig,
        keys: SigningKeys,
        cadence: Cadence,
    ) -> Result<Self> {
        let client = config.client();
        let applied = migrate_on(&client, &config.database, &config.layout(), MIGRATIONS).await?;
        if !applied.is_empty() {
            tracing::info!(database = %config.database, versions = ?applied, "applied clickhouse migrations");
        }
        Ok(Self {
            store: ArchiveStore::new(client, &config.database)?,
            keys,
            cadence,
            chains: HashMap::new(),
            last_failure: Arc::default(),
        })
    }

    /// `Err` with the failure while the last write failed; for `/health`.
    pub fn health(&self) -> super::WriteHealth {
        super::WriteHealth(Arc::clone(&self.last_failure))
    }

    fn set_failure(&self, failure: Option<String>) {
        if let Ok(mut last) = self.last_failure.lock() {
            *last = failure;
        }
    }

    /// The partition's chain from ClickHouse: head, last checkpoint and the entries after it.
    async fn load(&self, partition: &TopicPartition) -> Result<Chain> {
        let topic = &*partition.topic;
        let head = self.store.head(topic, partition.partition).await?;
        let last = self
            .store
            .last_checkpoint(topic, partition.partition)
            .await?;
        let (head_offset, head_hash) = match &head {
            Some(head) => (
                head.last_offset,
                hex32(&head.hash).ok_or_else(|| corrupt(partition, "head hash"))?,
            ),
            None => (-1, GENESIS),
        };
        let (after, previous_checkpoint_hash, last_checkpoint_key) = match &last {
            Some(row) => {
                // Recomputed, not the stored convenience column: the next checkpoint signs it.
                let hash = row
                    .to_signed()
                    .map_err(|column| corrupt(partition, column))?
                    .checkpoint
                    .hash();
                (
                    row.last_offset,
                    hash,
                    Some((row.key_id.clone(), row.next_key_id.clone())),
                )
            }
            None => (-1, GENESIS, None),
        };
        // After retention deleted every entry up to the last checkpoint (docs/archive.md), the
        // chain goes on from that checkpoint's signed head, not from genesis. (Entries that
        // are merely missing are archived again from Kafka: the chain recomputes the same.)
        let (head_offset, head_hash) = match &last {
            Some(row) if head.is_none() => (
                row.last_offset,
                hex32(&row.head_hash).ok_or_else(|| corrupt(partition, "checkpoint head hash"))?,
            ),
            _ => (head_offset, head_hash),
        };
        let mut entries = self
            .store
            .hashes_after(topic, partition.partition, after)
            .await?;
        // A second row for one offset (see docs/archive.md on a member that lost its session
        // unawares) is the same entry: signed once, as verify counts it.
        entries.dedup_by_key(|entry| entry.offset);
        let segment = entries
            .iter()
            .map(|entry| {
                Ok(SegmentEntry {
                    offset: entry.offset,
                    last_offset: entry.last_offset,
                    hash: hex32(&entry.hash).ok_or_else(|| corrupt(partition, "entry hash"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(%partition, head_offset, unsigned = segment.len(), "chain loaded");
        Ok(Chain {
            head_offset,
            head_hash,
            segment,
            segment_started: Instant::now(),
            previous_checkpoint_hash,
            last_checkpoint_key,
            pending: Vec::new(),
            ownership: None,
            stale: false,
        })
    }

    /// Reads a partition's chain from ClickHouse again, keeping the ownership token.
    async fn reload(&mut self, partition: &TopicPartition) -> std::result::Result<(), WriteError> {
        let ownership = self
            .chains
            .get_mut(partition)
            .and_then(|chain| chain.ownership.take());
        let mut chain = self.load(partition).await?;
        chain.ownership = ownership;
        self.chains.insert(partition.clone(), chain);
        Ok(())
    }

    /// Cuts and writes the checkpoints due by time on every partition this member still owns
    /// (and retries any whose insert failed).
    async fn sign_waiting(&mut self) -> std::result::Result<(), WriteError> {
        let stale: Vec<TopicPartition> = self
            .chains
            .iter()
            .filter(|(_, chain)| chain.stale)
            .map(|(partition, _)| partition.clone())
            .collect();
        for partition in stale {
            self.reload(&partition).await?;
        }
        let (store, keys, cadence) = (&self.store, &self.keys, self.cadence);
        for (partition, chain) in &mut self.chains {
            let owned = chain.ownership.as_ref().is_some_and(Ownership::is_current);
            if !owned {
                continue;
            }
            cut_due(keys, cadence, partition, chain, false)?;
            write_checkpoints(store, chain).await?;
        }
        Ok(())
    }

    /// Writes one partition's records: chained rows, then any checkpoints due.
    async fn write_partition(
        store: &ArchiveStore,
        keys: &SigningKeys,
        cadence: Cadence,
        chain: &mut Chain,
        unit: &PartitionBatch<PreparedPartition>,
    ) -> std::result::Result<(), WriteError> {
        let partition = &unit.partition;
        // Checkpoints cut by an earlier attempt first: they cover entries already stored.
        write_checkpoints(store, chain).await?;
        let mut rows = unit.prepared.rows.lock().await;
        let (start, hashes) = chain_in_place(
            partition,
            &mut rows,
            chain.head_offset,
            chain.head_hash,
            now_us(),
        );
        let chained = &rows[start..];
        if let (Some(last), Some(head_hash)) = (chained.last(), hashes.last()) {
            if !unit.is_current() {
                return Err(WriteError::Revoked(partition.clone()));
            }
            let table = format!("{}.records", store.database());
            if let Err(error) = insert_rows(store.client(), &table, chained).await {
                chain.stale = true;
                return Err(error.into());
            }
            for kind in [KIND_EVENT, KIND_UNDECODABLE, KIND_GAP] {
                let entries = chained.iter().filter(|row| row.kind == kind).count();
                if entries > 0 {
                    metrics::counter!("ledgerline_archive_records_total", "kind" => kind)
                        .increment(entries as u64);
                }
            }
            if chain.segment.is_empty() {
                chain.segment_started = Instant::now();
            }
            chain
                .segment
                .extend(chained.iter().zip(&hashes).map(|(row, hash)| SegmentEntry {
                    offset: row.offset,
                    last_offset: row.last_offset,
                    hash: *hash,
                }));
            chain.head_offset = last.last_offset;
            chain.head_hash = *head_hash;
            metrics::gauge!("ledgerline_archive_head_offset", "topic" => partition.topic.to_string(), "partition" => partition.partition.to_string()).set(chain.head_offset as f64);
        }
        drop(rows);
        chain.ownership = Some(unit.ownership());
        cut_due(keys, cadence, partition, chain, false)?;
        if !unit.is_current() {
            return Err(WriteError::Revoked(partition.clone()));
        }
        write_checkpoints(store, chain).await?;
        Ok(())
    }
}

impl Sink for ArchiveSink {
    type Prepared = PreparedPartition;
    type Preparer = fn(&TopicPartition, Vec<Record>) -> PreparedPartition;
    const FENCED: bool = true;
    // `sink_error` below: ClickHouse's kinds, a lost partition, and signing.
    const ERROR_KINDS: &'static [&'static str] = &[
        "transient",
        "configuration",
        "unexpected",
        "fenced",
        "signing",
    ];

    fn preparer(&self) -> Self::Preparer {
        prepare
    }

    async fn on_assign(
        &mut self,
        partitions: &[TopicPartition],
    ) -> std::result::Result<Positions, SinkError> {
        let mut positions = Positions::new();
        for partition in partitions {
            let chain = self
                .load(partition)
                .await
                .map_err(|error| sink_error(&error.into()))?;
            positions.insert(partition.clone(), chain.head_offset + 1);
            self.chains.insert(partition.clone(), chain);
        }
        Ok(positions)
    }

    fn on_owned(&mut self, owned: Vec<Ownership>) {
        for ownership in owned {
            if let Some(chain) = self.chains.get_mut(ownership.partition()) {
                chain.ownership = Some(ownership);
            }
        }
    }

    /// Signs what is pending before letting a partition go in a rebalance: the next owner
    /// starts a fresh segment. Still ours here: the group waits for this callback. (The
    /// runtime does not call it when the process stops; the unsigned tail then waits for the
    /// next run's checkpoint timer, docs/archive.md.)
    async fn on_revoke(&mut self, partitions: &[TopicPartition]) {
        for partition in partitions {
            let Some(mut chain) = self.chains.remove(partition) else {
                continue;
            };
            let owned = chain.ownership.as_ref().is_some_and(Ownership::is_current);
            // A stale chain may already have its pending checkpoints stored: its next owner
            // reads the partition afresh and signs what is left.
            if !owned || chain.stale {
                continue;
            }
            let signed = match cut_due(&self.keys, self.cadence, partition, &mut chain, true) {
                Ok(()) => write_checkpoints(&self.store, &mut chain)
                    .await
                    .map_err(WriteError::from),
                Err(error) => Err(error),
            };
            if let Err(error) = signed {
                tracing::warn!(%partition, %error, "could not sign the pending entries before giving the partition up; its next owner will");
            }
        }
    }

    async fn on_idle(&mut self) -> std::result::Result<(), SinkError> {
        self.sign_waiting()
            .await
            .map_err(|error| sink_error(&error))
    }

    async fn write(
        &mut self,
        batch: &[PartitionBatch<PreparedPartition>],
    ) -> std::result::Result<(), SinkError> {
        // Chains of partitions assigned before this sink kept state (cannot happen: on_assign
        // runs first) are loaded here rather than guessed.
        // A chain whose last insert failed is read again: that insert may have been stored.
        for unit in batch {
            let stale = self
                .chains
                .get(&unit.partition)
                .is_none_or(|chain| chain.stale);
            if stale {
                self.reload(&unit.partition)
                    .await
                    .map_err(|error| sink_error(&error))?;
            }
        }
        let (store, keys, cadence) = (&self.store, &self.keys, self.cadence);
        let mut chains: Vec<(&PartitionBatch<PreparedPartition>, Chain)> =
            Vec::with_capacity(batch.len());
        for unit in batch {
            if let Some(chain) = self.chains.remove(&unit.partition) {
                chains.push((unit, chain));
            }
        }
        // Partitions are written concurrently: one ClickHouse insert uses one server thread.
        let results = join_all(
            chains
                .iter_mut()
                .map(|(unit, chain)| Self::write_partition(store, keys, cadence, chain, unit)),
        )
        .await;
        for (unit, chain) in chains {
            self.chains.insert(unit.partition.clone(), chain);
        }
        // Partitions with nothing in this batch wait for their time-based checkpoint too: a
        // steady trickle on one partition keeps the writer from ever being idle.
        let results = results
            .into_iter()
            .chain(std::iter::once(self.sign_waiting().await));
        match results.into_iter().find_map(std::result::Result::err) {
            None => {
                self.set_failure(None);
                Ok(())
            }
            Some(error) => {
                let error = sink_error(&error);
                self.set_failure(Some(format!("{}: {}", error.kind, error.message)));
                Err(error)
            }
        }
    }
}

/// Chains the partition's rows (in offset order) onto `(head_offset, head_hash)` in place,
/// inserting a gap entry wherever an offset is skipped. Returns where the rows after the head
/// start and their hashes; rows at or before the head (already archived: before the resume
/// position, or stored by an attempt that failed late) stay as they are and are not written.
fn chain_in_place(
    partition: &TopicPartition,
    rows: &mut Vec<ArchiveRow>,
    head_offset: i64,
    head_hash: [u8; 32],
    archived_at_us: i64,
) -> (usize, Vec<[u8; 32]>) {
    let start = rows.partition_point(|row| row.offset <= head_offset);
    let (mut head_offset, mut head_hash) = (head_offset, head_hash);
    let mut hashes = Vec::with_capacity(rows.len() - start);
    let mut index = start;
    while index < rows.len() {
        if rows[index].offset > head_offset + 1 {
            // Kafka did not hand these offsets over: it no longer has them.
            let mut gap = ArchiveRow::empty(
                &partition.topic,
                partition.partition,
                head_offset + 1,
                KIND_GAP,
            );
            gap.last_offset = rows[index].offset - 1;
            tracing::warn!(%partition, first = gap.offset, last = gap.last_offset, "offsets missing from kafka recorded as a gap");
            rows.insert(index, gap);
        }
        let row = &mut rows[index];
        row.prev_hash = hex32_string(&head_hash);
        head_hash = row.recompute_hash(&head_hash);
        row.hash = hex32_string(&head_hash);
        row.archived_at_us = archived_at_us;
        head_offset = row.last_offset;
        hashes.push(head_hash);
        index += 1;
    }
    (start, hashes)
}

/// Cuts the checkpoints that are due: one per full `every_entries` entries, then one for the
/// rest when it waited `every` (or `force`); and a rotation checkpoint first when the last
/// checkpoint was signed by the previous key.
fn cut_due(
    keys: &SigningKeys,
    cadence: Cadence,
    partition: &TopicPartition,
    chain: &mut Chain,
    force: bool,
) -> std::result::Result<(), WriteError> {
    let rotating = match (&chain.last_checkpoint_key, &keys.previous) {
        (Some((signed_by, next)), Some(previous)) => {
            signed_by == previous.key_id() && next.as_deref() != Some(keys.current.key_id())
        }
        _ => false,
    };
    if rotating {
        if let Some(previous) = keys.previous.clone() {
            let entries = chain
                .segment
                .len()
                .min(usize::try_from(cadence.every_entries).unwrap_or(usize::MAX));
            cut(
                &previous,
                Some(keys.current.key_id().to_owned()),
                partition,
                chain,
                entries,
            )?;
            tracing::info!(%partition, from = previous.key_id(), to = keys.current.key_id(), "signing key rotated");
        }
    }
    let every = usize::try_from(cadence.every_entries).unwrap_or(usize::MAX);
    while chain.segment.len() >= every {
        cut(&keys.current, None, partition, chain, every)?;
    }
    if !chain.segment.is_empty() && (force || chain.segment_started.elapsed() >= cadence.every) {
        let entries = chain.segment.len();
        cut(&keys.current, None, partition, chain, entries)?;
    }
    Ok(())
}

/// Signs a checkpoint over the first `entries` of the segment and queues it. With no entries
/// (a rotation while nothing is pending) it covers nothing and fixes the current head.
fn cut(
    key: &ArchiveSigningKey,
    next_key_id: Option<String>,
    partition: &TopicPartition,
    chain: &mut Chain,
    entries: usize,
) -> std::result::Result<(), WriteError> {
    let covered: Vec<SegmentEntry> = chain.segment.drain(..entries).collect();
    let leaves: Vec<[u8; 32]> = covered.iter().map(|entry| entry.hash).collect();
    let (first_offset, last_offset, head_hash) = match (covered.first(), covered.last()) {
        (Some(first), Some(last)) => (first.offset, last.last_offset, last.hash),
        _ => (chain.head_offset + 1, chain.head_offset, chain.head_hash),
    };
    let signed = Checkpoint {
        key_id: key.key_id().to_owned(),
        topic: partition.topic.to_string(),
        partition: partition.partition,
        first_offset,
        last_offset,
        count: leaves.len() as u64,
        head_hash,
        merkle_root: merkle::root(&leaves),
        previous_checkpoint_hash: chain.previous_checkpoint_hash,
        created_at_us: now_us(),
        next_key_id,
    }
    .sign(key)
    .map_err(|error| WriteError::Sign {
        partition: partition.clone(),
        reason: error.to_string(),
    })?;
    chain.previous_checkpoint_hash = signed.checkpoint.hash();
    chain.last_checkpoint_key = Some((
        signed.checkpoint.key_id.clone(),
        signed.checkpoint.next_key_id.clone(),
    ));
    chain.segment_started = Instant::now();
    chain.pending.push(signed);
    Ok(())
}

async fn write_checkpoints(store: &ArchiveStore, chain: &mut Chain) -> Result<()> {
    if chain.pending.is_empty() {
        return Ok(());
    }
    let rows: Vec<CheckpointRow> = chain
        .pending
        .iter()
        .map(CheckpointRow::from_signed)
        .collect();
    if let Err(error) = insert_rows(
        store.client(),
        &format!("{}.checkpoints", store.database()),
        &rows,
    )
    .await
    {
        // It may have been stored all the same: the chain is read again (and what is still
        // unsigned cut again) rather than the same checkpoints written twice.
        chain.stale = true;
        return Err(error);
    }
    metrics::counter!("ledgerline_archive_checkpoints_total").increment(rows.len() as u64);
    chain.pending.clear();
    Ok(())
}

/// One partition's records as rows: the received bytes, and the event's fields when it decoded.
fn prepare(partition: &TopicPartition, records: Vec<Record>) -> PreparedPartition {
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let kind = if record.event.is_ok() {
            KIND_EVENT
        } else {
            KIND_UNDECODABLE
        };
        let mut row = ArchiveRow::empty(&partition.topic, partition.partition, record.offset, kind);
        row.timestamp_ms = match record.timestamp {
            Timestamp::NotAvailable => None,
            Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
        };
        row.key = record.key;
        row.value = record.value;
        row.schema_id = record.schema_id;
        match record.event {
            Ok(event) => row.set_fields(EventFields::from_event(event)),
            Err(rejection) => {
                row.reject_reason = rejection.reason.to_owned();
                row.reject_error = rejection.error;
            }
        }
        rows.push(row);
    }
    rows.sort_by_key(|row| row.offset);
    rows.dedup_by_key(|row| row.offset);
    PreparedPartition {
        rows: tokio::sync::Mutex::new(rows),
    }
}

fn corrupt(partition: &TopicPartition, what: &str) -> ClickHouseError {
    ClickHouseError::InvalidRow {
        event_id: partition.to_string(),
        column: "hash",
        reason: format!("{what} is not 64 hex digits; run `archive verify`"),
    }
}

fn sink_error(error: &WriteError) -> SinkError {
    match error {
        WriteError::ClickHouse(error) => {
            let kind = error.failure_kind();
            SinkError::new(kind.as_str(), kind == FailureKind::Transient, error)
        }
        // The runtime drops the fenced batch on its retry.
        WriteError::Revoked(_) => SinkError::new("fenced", true, error),
        WriteError::Sign { .. } => SinkError::new("signing", false, error),
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::archive::checkpoint::{generate, load_signing_key, TrustedKeys};

    fn key() -> Arc<ArchiveSigningKey> {
        Arc::new(load_signing_key(&generate().unwrap().secret_file).unwrap())
    }

    fn chain(entries: i64, last_checkpoint_key: Option<(String, Option<String>)>) -> Chain {
        let mut head = GENESIS;
        let segment = (0..entries)
            .map(|offset| {
                head = crate::archive::chain::record_hash(
                    &head,
                    "ledgerline.audit",
                    0,
                    offset,
                    None,
                    None,
                    b"v",
                );
                SegmentEntry {
                    offset,
                    last_offset: offset,
                    hash: head,
                }
            })
            .collect();
        Chain {
            head_offset: entries - 1,
            head_hash: head,
            segment,
            segment_started: Instant::now(),
            previous_checkpoint_hash: GENESIS,
            last_checkpoint_key,
            pending: Vec::new(),
            ownership: None,
            stale: false,
        }
    }

    fn rows(offsets: &[i64]) -> Vec<ArchiveRow> {
        offsets
            .iter()
            .map(|offset| {
                let mut row = ArchiveRow::empty("ledgerline.audit", 0, *offset, KIND_EVENT);
                row.value = offset.to_be_bytes().to_vec();
                row
            })
            .collect()
    }

    #[test]
    fn rows_chain_in_place_with_gaps_and_a_retry_recomputes_the_same() {
        let partition = TopicPartition::new("ledgerline.audit", 0);
        let mut batch = rows(&[3, 4, 5, 9, 10]);
        // Offsets up to 4 are archived already; 6..=8 never came.
        let (start, hashes) = chain_in_place(&partition, &mut batch, 4, [7; 32], 1);
        assert_eq!(start, 2);
        let kinds: Vec<(i64, i64, &str)> = batch[start..]
            .iter()
            .map(|row| (row.offset, row.last_offset, row.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (5, 5, "event"),
                (6, 8, "gap"),
                (9, 9, "event"),
                (10, 10, "event")
            ]
        );
        assert_eq!(batch[start].prev_hash, hex32_string(&[7; 32]));
        for (row, hash) in batch[start..].iter().zip(&hashes) {
            assert_eq!(row.hash, hex32_string(hash));
        }
        for pair in batch[start..].windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
        }
        // The same batch again from the same head (an insert that failed): the same rows, and
        // the gap is not added twice.
        let first = batch.clone();
        let (again, rehashed) = chain_in_place(&partition, &mut batch, 4, [7; 32], 1);
        assert_eq!((again, &rehashed, &batch), (start, &hashes, &first));
        // From a later head (the failed insert stored a prefix): only the rest is written.
        let (rest, _) = chain_in_place(&partition, &mut batch, 8, hashes[1], 1);
        assert_eq!(batch[rest].offset, 9);
        assert_eq!(batch[rest].prev_hash, hex32_string(&hashes[1]));
    }

    const HOUR: Cadence = Cadence {
        every_entries: 4,
        every: Duration::from_secs(3600),
    };

    #[test]
    fn full_segments_are_cut_and_chained_and_the_rest_waits() {
        let keys = SigningKeys {
            current: key(),
            previous: None,
        };
        let partition = TopicPartition::new("ledgerline.audit", 0);
        let mut chain = chain(10, None);
        cut_due(&keys, HOUR, &partition, &mut chain, false).unwrap();
        let cut: Vec<(i64, i64, u64)> = chain
            .pending
            .iter()
            .map(|signed| {
                let c = &signed.checkpoint;
                (c.first_offset, c.last_offset, c.count)
            })
            .collect();
        assert_eq!(cut, [(0, 3, 4), (4, 7, 4)]);
        assert_eq!(chain.segment.len(), 2);
        assert_eq!(
            chain.pending[1].checkpoint.previous_checkpoint_hash,
            chain.pending[0].checkpoint.hash()
        );
        let mut trusted = TrustedKeys::new();
        trusted.insert(keys.current.verifying_key());
        for signed in &chain.pending {
            signed.verify(&trusted).unwrap();
        }
        // Forced (a revocation): the rest is signed too.
        cut_due(&keys, HOUR, &partition, &mut chain, true).unwrap();
        assert_eq!(chain.pending.len(), 3);
        assert_eq!(chain.pending[2].checkpoint.last_offset, 9);
        assert_eq!(chain.pending[2].checkpoint.head_hash, chain.head_hash);
    }

    #[test]
    fn a_rotation_is_announced_by_the_old_key_then_the_new_key_signs() {
        let (old, new) = (key(), key());
        let keys = SigningKeys {
            current: Arc::clone(&new),
            previous: Some(Arc::clone(&old)),
        };
        let partition = TopicPartition::new("ledgerline.audit", 0);
        let mut chain = chain(6, Some((old.key_id().to_owned(), None)));
        cut_due(&keys, HOUR, &partition, &mut chain, false).unwrap();
        let first = &chain.pending[0].checkpoint;
        assert_eq!(first.key_id, old.key_id());
        assert_eq!(first.next_key_id.as_deref(), Some(new.key_id()));
        assert!(chain.pending[1..]
            .iter()
            .all(|signed| signed.checkpoint.key_id == new.key_id()));
        // Announced once: the next cut does not rotate again.
        let before = chain.pending.len();
        cut_due(&keys, HOUR, &partition, &mut chain, true).unwrap();
        assert!(chain.pending[before..]
            .iter()
            .all(|signed| signed.checkpoint.key_id == new.key_id()
                && signed.checkpoint.next_key_id.is_none()));
    }
}
