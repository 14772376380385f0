//! The self-verifying export for reviewers: `archive export` writes a directory that
//! `archive verify --bundle` checks offline, with no ClickHouse, Kafka or schema registry.
//!
//! # Files
//!
//! Every file is UTF-8 and ends with a newline; JSON Lines are compact (`serde_json`'s own
//! layout), JSON documents pretty (two-space indent). Verification accepts only exactly the
//! layout export writes.
//!
//! - `records.jsonl`: one chain entry per line ([`BundleRecord`]): the `records` row with the
//!   key and value bytes in base64 and the event's columns under `fields`; per partition in
//!   offset order.
//! - `checkpoints.jsonl`: one `checkpoints` row per line (`CheckpointRow`), per partition by
//!   last offset: every checkpoint of the partition from its first through the end of the
//!   range, so the checkpoint chain is checked from genesis and the first exported entry
//!   chains on the head of the checkpoint before it. The entries of segments before the range
//!   are not exported, only their checkpoints.
//! - `keys.json`: `{"keys": [{"key_id", "public_key"}]}`, public keys in hex.
//! - `schemas.json`: `{"schemas": [{"id", "schema"}]}`, the registry's writer schema text for
//!   every schema id of an exported event, so fields can be checked against the bytes offline.
//! - `manifest.json`: [`Manifest`]: the format, when and what was exported, per partition the
//!   offsets, counts and how far checkpoints reach (entries after that are *unsigned*: chained,
//!   but no signature protects them yet), and per file its SHA-256 and line count.
//! - `manifest.json.sha256`: `<sha256>  manifest.json`, the seal over the manifest (also
//!   `sha256sum -c manifest.json.sha256`). Without it an edit of the one manifest field nothing
//!   recomputes (`created_at_us`, the requested range) would go unnoticed.
//!
//! Export writes the manifest and its seal last, so an interrupted export never verifies.
//!
//! # Verification, and what catches a one-byte edit
//!
//! The seal, then the manifest (its layout, format and file list), then each file's SHA-256
//! and line count; then every line is parsed and checked on its own (layout, canonical base64
//! and lower-case hex, the entry's hash over its own bytes, a checkpoint's hash), and every
//! partition runs through [`verify::verify_partition`] with the bundle's schemas and the trusted
//! keys. A problem is reported with the line it is on (`records.jsonl line 12`). When a file's
//! sum differs, the error names the first line of that file that fails a check, or, when no
//! check covers the change (`archived_at_us`, `reject_reason`, `reject_error`, which no hash or
//! signature covers either), the file alone.
//!
//! # Trust
//!
//! The sums and the seal catch accidents and careless edits; anyone can recompute them. What
//! makes the bundle evidence is the chain, the Merkle roots and the checkpoint signatures,
//! and those are only as good as the keys they are checked with. `keys.json` comes with the
//! bundle, so whoever could edit the bundle could replace it too: a reviewer passes the public
//! key they obtained out of band (`--public-key`, `extra_trusted`), and then only those keys are
//! trusted and `keys.json` is merely checked for form. The same holds for `schemas.json`: the
//! event columns are checked against the bytes with the bundle's schemas, so they show what the
//! signed bytes hold only if those schemas are the registry's (a single event's proof, by
//! contrast, is decoded with the schemas compiled into the checking build). Deleting whole
//! trailing segments together with their checkpoints and recomputing the sums cannot be told
//! from a shorter export: the reviewer compares the manifest's range with what they asked for.
//! A bundle is read into memory whole to be verified.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use ledgerline_schemas::{codec, CodecError, EventCodec, OfflineDecoder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, TrustedKeys};
use super::proof::{canonical_base64, canonical_hex32, first_different_line, BASE64};
use super::row::{ArchiveRow, CheckpointRow, EventFields, KIND_EVENT, KIND_GAP, KIND_UNDECODABLE};
use super::store::ArchiveStore;
use super::verify::{self, Decoder, EntrySource as _, ProblemKind, Report, VerifyOptions};
use crate::clickhouse::ClickHouseError;

/// The `format` of every manifest this version writes and verifies.
pub const BUNDLE_FORMAT: &str = "ledgerline-archive-bundle v1";
pub const RECORDS_FILE: &str = "records.jsonl";
pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const KEYS_FILE: &str = "keys.json";
pub const SCHEMAS_FILE: &str = "schemas.json";
pub const MANIFEST_FILE: &str = "manifest.json";
pub const SEAL_FILE: &str = "manifest.json.sha256";
/// The files the manifest sums, in its order.
pub const SUMMED_FILES: [&str; 4] = [RECORDS_FILE, CHECKPOINTS_FILE, KEYS_FILE, SCHEMAS_FILE];

/// Export writes `records.jsonl` in chunks of about this size, each on the blocking pool.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Why a bundle could not be written, read or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Verification could not run (the bundle's entries are in memory, so only an internal
    /// failure gets here).
    #[error(transparent)]
    Verify(#[from] super::verify::RunError),
    #[error("bundle i/o failed on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] ClickHouseError),
    #[error("failed to fetch the writer schema of id {schema_id} from the registry")]
    Codec {
        schema_id: u32,
        #[source]
        source: CodecError,
    },
    /// Export never overwrites: `out` must not exist or be an empty directory.
    #[error("{path} exists and is not empty; export refuses to overwrite it")]
    NotEmpty { path: PathBuf },
    #[error("{file} is not part of an archive bundle")]
    UnexpectedFile { file: String },
    /// A line that does not parse or fails a check: its file and 1-based number.
    #[error("{file} line {line}: {reason}")]
    BadLine {
        file: String,
        line: usize,
        reason: String,
    },
    /// A file is not the one the bundle was sealed with, and no line of it fails a check of
    /// its own (or the failing line is in another file, named in `detail`).
    #[error("{file} differs from the bundle as exported: {detail}")]
    SumMismatch { file: String, detail: String },
    #[error("failed to encode {what} as json")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("bundle task failed: {0}")]
    Task(String),
}

/// What to export: offsets of `ledgerline.audit`, widened to whole checkpoint segments so every
/// exported checkpoint's segment is complete. Entries after the last checkpoint are exported
/// too (through `to`), and counted as unsigned in the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportOptions {
    /// Only this partition.
    pub partition: Option<i32>,
    /// From this offset (widened to the start of its checkpoint segment).
    pub from: Option<i64>,
    /// To this offset (widened to the end of its checkpoint segment).
    pub to: Option<i64>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExportSummary {
    pub dir: PathBuf,
    pub partitions: usize,
    pub records: u64,
    /// Checkpoint lines, those before the range included.
    pub checkpoints: u64,
    /// Entries after their partition's last exported checkpoint.
    pub unsigned: u64,
}

/// One line of `records.jsonl`: a `records` row with its bytes in base64 and its event columns
/// grouped under `fields` (all empty for undecodable entries and gaps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub last_offset: i64,
    pub kind: String,
    pub prev_hash: String,
    pub hash: String,
    pub timestamp_ms: Option<i64>,
    /// Base64 (standard alphabet, padded).
    pub key: Option<String>,
    /// Base64 (standard alphabet, padded).
    pub value: String,
    pub schema_id: Option<u32>,
    pub reject_reason: String,
    pub reject_error: String,
    pub archived_at_us: i64,
    pub fields: EventFields,
}

impl BundleRecord {
    pub fn of(row: &ArchiveRow) -> Result<Self, BundleError> {
        // The row's own serialization picks out the event columns, so the list of them stays
        // in one place (`EventFields`).
        let fields = serde_json::to_value(row)
            .and_then(serde_json::from_value::<EventFields>)
            .map_err(|source| BundleError::Encode {
                what: "an archive row",
                source,
            })?;
        Ok(Self {
            topic: row.topic.clone(),
            partition: row.partition,
            offset: row.offset,
            last_offset: row.last_offset,
            kind: row.kind.clone(),
            prev_hash: row.prev_hash.clone(),
            hash: row.hash.clone(),
            timestamp_ms: row.timestamp_ms,
            key: row.key.as_deref().map(|key| BASE64.encode(key)),
            value: BASE64.encode(&row.value),
            schema_id: row.schema_id,
            reject_reason: row.reject_reason.clone(),
            reject_error: row.reject_error.clone(),
            archived_at_us: row.archived_at_us,
            fields,
        })
    }

    /// The row, after the checks a line can pass on its own form; `Err` says which failed.
    fn to_row(&self) -> Result<ArchiveRow, String> {
        let key = match &self.key {
            Some(key) => Some(canonical_base64(key).ok_or("key is not canonical base64")?),
            None => None,
        };
        let value = canonical_base64(&self.value).ok_or("value is not canonical base64")?;
        for (column, text) in [("prev_hash", &self.prev_hash), ("hash", &self.hash)] {
            if canonical_hex32(text).is_none() {
                return Err(format!("{column} is not 64 lower-case hex digits"));
            }
        }
        match self.kind.as_str() {
            KIND_EVENT | KIND_UNDECODABLE => {
                if self.last_offset != self.offset {
                    return Err("last_offset of a record differs from its offset".to_owned());
                }
                // The archiver stores the id of the value's header, whenever it has one.
                if self.schema_id != codec::schema_id(&value).ok() {
                    return Err("schema_id is not the id in the value's header".to_owned());
                }
            }
            KIND_GAP => {
                if self.last_offset < self.offset
                    || key.is_some()
                    || !value.is_empty()
                    || self.timestamp_ms.is_some()
                    || self.schema_id.is_some()
                {
                    return Err(
                        "a gap has a key, value, timestamp or schema id, or ends before it starts"
                            .to_owned(),
                    );
                }
            }
            other => return Err(format!("unknown entry kind `{other}`")),
        }
        let mut row = ArchiveRow::empty(&self.topic, self.partition, self.offset, &self.kind);
        row.last_offset = self.last_offset;
        row.timestamp_ms = self.timestamp_ms;
        row.key = key;
        row.value = value;
        row.schema_id = self.schema_id;
        row.reject_reason = self.reject_reason.clone();
        row.reject_error = self.reject_error.clone();
        row.set_fields(self.fields.clone());
        row.prev_hash = self.prev_hash.clone();
        row.hash = self.hash.clone();
        row.archived_at_us = self.archived_at_us;
        Ok(row)
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`BUNDLE_FORMAT`].
    pub format: String,
    /// When the export ran, microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// What was asked for, before widening.
    pub range: ExportOptions,
    pub partitions: Vec<PartitionManifest>,
    /// The summed files, in [`SUMMED_FILES`] order.
    pub files: Vec<FileSum>,
}

/// One exported partition, as its lines recompute it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionManifest {
    pub topic: String,
    pub partition: i32,
    /// Offset of the first exported entry.
    pub first_offset: Option<i64>,
    /// Last offset the last exported entry covers.
    pub last_offset: Option<i64>,
    pub records: u64,
    /// Checkpoint lines, those before the range included.
    pub checkpoints: u64,
    /// The last offset the exported checkpoints cover.
    pub signed_through: Option<i64>,
    /// Entries after `signed_through`: chained, not yet signed.
    pub unsigned: u64,
}

/// One summed file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    pub name: String,
    /// Lower-case hex.
    pub sha256: String,
    /// Newline characters in the file.
    pub lines: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<BundleKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleKey {
    key_id: String,
    public_key: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemasFile {
    schemas: Vec<BundleSchema>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BundleSchema {
    id: u32,
    schema: String,
}

/// Which entries and checkpoints of one partition an export takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Entries with `first_offset <= offset <= last_offset`.
    pub first_offset: i64,
    pub last_offset: i64,
    /// Every checkpoint through `last_offset`: those before the range too, since verification
    /// follows the checkpoint chain from genesis and anchors the first entry on the head of
    /// the checkpoint before it.
    pub checkpoints: Vec<CheckpointRow>,
}

/// Widens `options` to whole segments of a partition with these checkpoints (by last offset).
pub fn plan(checkpoints: &[CheckpointRow], options: &ExportOptions) -> PartitionPlan {
    let from = options.from.unwrap_or(0).max(0);
    // Entries after the last checkpoint have no segment: they start right after it.
    let first_offset = match checkpoints
        .iter()
        .find(|checkpoint| checkpoint.last_offset >= from)
    {
        Some(holding_from) => holding_from.first_offset,
        None => checkpoints.last().map_or(0, |last| last.last_offset + 1),
    };
    let last_offset = match options.to {
        None => i64::MAX,
        Some(to) => checkpoints
            .iter()
            .find(|checkpoint| checkpoint.last_offset >= to)
            .map_or(to, |checkpoint| checkpoint.last_offset),
    };
    PartitionPlan {
        first_offset,
        last_offset,
        checkpoints: checkpoints
            .iter()
            .filter(|checkpoint| checkpoint.last_offset <= last_offset)
            .cloned()
            .collect(),
    }
}

/// A partition's manifest entry, from its checkpoint lines (first) and entry lines: the one
/// computation export and verification share.
#[derive(Debug, Clone)]
struct PartitionTally(PartitionManifest);

impl PartitionTally {
    fn new(topic: &str, partition: i32) -> Self {
        Self(PartitionManifest {
            topic: topic.to_owned(),
            partition,
            first_offset: None,
            last_offset: None,
            records: 0,
            checkpoints: 0,
            signed_through: None,
            unsigned: 0,
        })
    }

    fn checkpoint(&mut self, row: &CheckpointRow) {
        self.0.checkpoints += 1;
        self.0.signed_through = self.0.signed_through.max(Some(row.last_offset));
    }

    fn entry(&mut self, row: &ArchiveRow) {
        self.0.records += 1;
        self.0.first_offset.get_or_insert(row.offset);
        self.0.last_offset = Some(row.last_offset);
        if self
            .0
            .signed_through
            .is_none_or(|through| row.offset > through)
        {
            self.0.unsigned += 1;
        }
    }
}

/// A bundle file's name and contents.
type NamedText = (&'static str, String);

/// Builds the bundle's text, I/O-free: `records.jsonl` line by line (for the caller to write
/// as it goes), the rest at [`Assembler::finish`].
#[derive(Debug, Default)]
struct Assembler {
    records_sum: Sha256,
    records_lines: u64,
    checkpoint_lines: String,
    partitions: Vec<PartitionTally>,
    schema_ids: BTreeSet<u32>,
}

impl Assembler {
    /// Starts a partition with the checkpoints its plan exports.
    fn begin_partition(&mut self, topic: &str, partition: i32, checkpoints: &[CheckpointRow]) {
        let mut tally = PartitionTally::new(topic, partition);
        for checkpoint in checkpoints {
            tally.checkpoint(checkpoint);
        }
        self.partitions.push(tally);
    }

    /// The line of `row`, tallied; write it to `records.jsonl`.
    fn record(&mut self, row: &ArchiveRow) -> Result<String, BundleError> {
        let mut line = serde_json::to_string(&BundleRecord::of(row)?).map_err(|source| {
            BundleError::Encode {
                what: "a record line",
                source,
            }
        })?;
        line.push('\n');
        self.records_sum.update(line.as_bytes());
        self.records_lines += 1;
        if let Some(tally) = self.partitions.last_mut() {
            tally.entry(row);
        }
        if row.kind == KIND_EVENT {
            self.schema_ids.extend(row.schema_id);
        }
        Ok(line)
    }

    /// Ends the partition begun last: its checkpoint lines are kept if it had entries, and the
    /// partition is dropped otherwise (its checkpoints alone would verify as a truncated
    /// chain).
    fn end_partition(&mut self, checkpoints: &[CheckpointRow]) -> Result<(), BundleError> {
        if self
            .partitions
            .last()
            .is_some_and(|tally| tally.0.records == 0)
        {
            self.partitions.pop();
            return Ok(());
        }
        for checkpoint in checkpoints {
            let line = serde_json::to_string(checkpoint).map_err(|source| BundleError::Encode {
                what: "a checkpoint line",
                source,
            })?;
            self.checkpoint_lines.push_str(&line);
            self.checkpoint_lines.push('\n');
        }
        Ok(())
    }

    /// The remaining files, in writing order: `checkpoints.jsonl`, `keys.json`,
    /// `schemas.json`, `manifest.json` and its seal.
    fn finish(
        self,
        public_keys: &[VerifyingKey],
        schemas: &BTreeMap<u32, String>,
        range: &ExportOptions,
        created_at_us: i64,
    ) -> Result<(Vec<NamedText>, ExportSummary), BundleError> {
        let mut keys: Vec<BundleKey> = public_keys
            .iter()
            .map(|key| BundleKey {
                key_id: checkpoint::key_id(key),
                public_key: hex::encode(key.as_bytes()),
            })
            .collect();
        keys.sort_by(|left, right| left.key_id.cmp(&right.key_id));
        keys.dedup();
        let keys_text = pretty(&KeysFile { keys }, "keys.json")?;
        let schemas_text = pretty(
            &SchemasFile {
                schemas: schemas
                    .iter()
                    .map(|(id, schema)| BundleSchema {
                        id: *id,
                        schema: schema.clone(),
                    })
                    .collect(),
            },
            "schemas.json",
        )?;
        let records_sum = hex::encode(self.records_sum.finalize());
        let files = vec![
            FileSum {
                name: RECORDS_FILE.to_owned(),
                sha256: records_sum,
                lines: self.records_lines,
            },
            file_sum(CHECKPOINTS_FILE, &self.checkpoint_lines),
            file_sum(KEYS_FILE, &keys_text),
            file_sum(SCHEMAS_FILE, &schemas_text),
        ];
        let mut partitions: Vec<PartitionManifest> =
            self.partitions.into_iter().map(|tally| tally.0).collect();
        partitions.sort_by(|left, right| {
            (&left.topic, left.partition).cmp(&(&right.topic, right.partition))
        });
        let summary = ExportSummary {
            dir: PathBuf::new(),
            partitions: partitions.len(),
            records: partitions.iter().map(|p| p.records).sum(),
            checkpoints: partitions.iter().map(|p| p.checkpoints).sum(),
            unsigned: partitions.iter().map(|p| p.unsigned).sum(),
        };
        let manifest_text = pretty(
            &Manifest {
                format: BUNDLE_FORMAT.to_owned(),
                created_at_us,
                range: range.clone(),
                partitions,
                files,
            },
            "manifest.json",
        )?;
        let seal = seal_line(&manifest_text);
        Ok((
            vec![
                (CHECKPOINTS_FILE, self.checkpoint_lines),
                (KEYS_FILE, keys_text),
                (SCHEMAS_FILE, schemas_text),
                (MANIFEST_FILE, manifest_text),
                (SEAL_FILE, seal),
            ],
            summary,
        ))
    }
}

/// Exports the archive's entries and checkpoints in `options`' range (per partition widened by
/// [`plan`]), the `public_keys` and the writer schemas of the exported events into `out`, which
/// must not exist or be empty.
pub async fn export(
    store: &ArchiveStore,
    codec: &EventCodec,
    public_keys: &[VerifyingKey],
    options: &ExportOptions,
    out: &Path,
) -> Result<ExportSummary, BundleError> {
    let out_dir = out.to_owned();
    blocking(move || prepare_out_dir(&out_dir)).await?;
    let mut records_file = ChunkedFile::create(out.join(RECORDS_FILE)).await?;
    let mut assembler = Assembler::default();
    let partitions = store.partitions().await?.into_iter().filter(|archived| {
        options
            .partition
            .is_none_or(|only| only == archived.partition)
    });
    for archived in partitions {
        let (topic, partition) = (&archived.topic, archived.partition);
        let checkpoints = store.checkpoints(topic, partition).await?;
        let planned = plan(&checkpoints, options);
        for checkpoint in &planned.checkpoints {
            if !public_keys
                .iter()
                .any(|key| checkpoint::key_id(key) == checkpoint.key_id)
            {
                tracing::warn!(
                    %topic,
                    partition,
                    last_offset = checkpoint.last_offset,
                    key_id = %checkpoint.key_id,
                    "an exported checkpoint is signed by a key keys.json will not hold; reviewers need it out of band"
                );
            }
        }
        assembler.begin_partition(topic, partition, &planned.checkpoints);
        let mut cursor =
            store.entries(topic, partition, planned.first_offset, planned.last_offset)?;
        while let Some(row) = cursor.next_entry().await? {
            records_file.write(&assembler.record(&row)?).await?;
        }
        assembler.end_partition(&planned.checkpoints)?;
    }
    records_file.finish().await?;

    let mut schemas = BTreeMap::new();
    for schema_id in assembler.schema_ids.clone() {
        let text = codec
            .writer_schema_text(schema_id)
            .await
            .map_err(|source| BundleError::Codec { schema_id, source })?;
        schemas.insert(schema_id, text);
    }
    let (files, mut summary) = assembler.finish(public_keys, &schemas, options, now_us())?;
    let out_dir = out.to_owned();
    blocking(move || write_files(&out_dir, &files)).await?;
    summary.dir = out.to_owned();
    Ok(summary)
}

/// One partition's part of a bundle: its entries in offset order and the checkpoints exported
/// with them (see [`PartitionPlan::checkpoints`]).
#[derive(Debug, Clone, Default)]
pub struct PartitionExport {
    pub entries: Vec<ArchiveRow>,
    pub checkpoints: Vec<CheckpointRow>,
}

/// Writes a bundle of rows already in memory into `out` (which must not exist or be empty):
/// the same files [`export`] writes, without a store or a registry. Blocking.
pub fn write_bundle(
    out: &Path,
    partitions: &[PartitionExport],
    public_keys: &[VerifyingKey],
    schemas: &BTreeMap<u32, String>,
    range: &ExportOptions,
    created_at_us: i64,
) -> Result<ExportSummary, BundleError> {
    prepare_out_dir(out)?;
    let mut assembler = Assembler::default();
    let mut records = String::new();
    for part in partitions {
        let Some((topic, partition)) = part
            .entries
            .first()
            .map(|row| (row.topic.clone(), row.partition))
            .or_else(|| {
                part.checkpoints
                    .first()
                    .map(|row| (row.topic.clone(), row.partition))
            })
        else {
            continue;
        };
        assembler.begin_partition(&topic, partition, &part.checkpoints);
        for row in &part.entries {
            records.push_str(&assembler.record(row)?);
        }
        assembler.end_partition(&part.checkpoints)?;
    }
    let (mut files, mut summary) = assembler.finish(public_keys, schemas, range, created_at_us)?;
    files.insert(0, (RECORDS_FILE, records));
    write_files(out, &files)?;
    summary.dir = out.to_owned();
    Ok(summary)
}

/// Verifies the bundle in `dir` offline (see the module doc for the order of checks).
///
/// `keys.json` is only as trustworthy as the bundle itself: pass the public keys obtained out
/// of band as `extra_trusted`, and then only those are trusted. Without them the bundle's own
/// keys are, which shows the bundle is consistent, not who signed it.
///
/// `Err` when the bundle is not as exported (a file, line or the manifest changed) or not a
/// bundle at all; `Ok` with the report otherwise, which can still say the archive was broken
/// when it was exported (each problem names its line).
pub async fn verify_bundle(
    dir: &Path,
    extra_trusted: Option<&TrustedKeys>,
) -> Result<Report, BundleError> {
    let dir = dir.to_owned();
    let extra_trusted = extra_trusted.cloned();
    let loaded = blocking(move || load(&dir, extra_trusted.as_ref())).await?;
    loaded.verify().await
}

/// A bundle read and checked line by line, ready for the chain checks.
#[derive(Debug)]
struct LoadedBundle {
    manifest: Manifest,
    manifest_text: String,
    /// Summed files whose SHA-256 or line count differs from the manifest.
    mismatched: Vec<&'static str>,
    trusted: TrustedKeys,
    decoder: Arc<OfflineDecoder>,
    partitions: BTreeMap<(String, i32), LoadedPartition>,
    /// Lines that fail a check of their own.
    findings: Vec<Finding>,
}

#[derive(Debug, Default)]
struct LoadedPartition {
    entries: Vec<ArchiveRow>,
    entry_lines: Vec<usize>,
    checkpoints: Vec<CheckpointRow>,
    checkpoint_lines: Vec<usize>,
}

/// A line that fails a check.
#[derive(Debug, Clone)]
struct Finding {
    file: &'static str,
    line: usize,
    reason: String,
}

/// Reads `dir` and runs every check that needs no chain: the seal, the manifest, the sums and
/// each line on its own.
fn load(dir: &Path, extra_trusted: Option<&TrustedKeys>) -> Result<LoadedBundle, BundleError> {
    let listing = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in listing {
        let entry = entry.map_err(io_error(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != MANIFEST_FILE && name != SEAL_FILE && !SUMMED_FILES.contains(&name.as_str()) {
            return Err(BundleError::UnexpectedFile { file: name });
        }
    }
    let read = |name: &'static str| -> Result<String, BundleError> {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        String::from_utf8(bytes).map_err(|error| {
            let valid = &error.as_bytes()[..error.utf8_error().valid_up_to()];
            bad_line(
                name,
                valid.iter().filter(|byte| **byte == b'\n').count() + 1,
                "not UTF-8",
            )
        })
    };

    // The seal and the manifest.
    let seal = read(SEAL_FILE)?;
    let sealed_sum = seal
        .strip_suffix(&format!("  {MANIFEST_FILE}\n"))
        .filter(|sum| canonical_hex(sum, 32))
        .ok_or_else(|| {
            bad_line(
                SEAL_FILE,
                1,
                format!("not `<64 lower-case hex digits>  {MANIFEST_FILE}` and a newline"),
            )
        })?
        .to_owned();
    let manifest_text = read(MANIFEST_FILE)?;
    let manifest: Manifest = parse_document(MANIFEST_FILE, &manifest_text)?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(bad_line(
            MANIFEST_FILE,
            line_of(&manifest_text, "\"format\""),
            format!(
                "format is `{}`, this build verifies `{BUNDLE_FORMAT}`",
                manifest.format
            ),
        ));
    }
    let names: Vec<&str> = manifest
        .files
        .iter()
        .map(|file| file.name.as_str())
        .collect();
    if names != SUMMED_FILES {
        return Err(bad_line(
            MANIFEST_FILE,
            line_of(&manifest_text, "\"files\""),
            format!("files are {names:?}, a bundle has {SUMMED_FILES:?}"),
        ));
    }
    for file in &manifest.files {
        if !canonical_hex(&file.sha256, 32) {
            return Err(bad_line(
                MANIFEST_FILE,
                line_of(&manifest_text, &json_string(&file.sha256)),
                format!(
                    "the sha256 of {} is not 64 lower-case hex digits",
                    file.name
                ),
            ));
        }
    }

    // The sums.
    let mut texts: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut actual: Vec<FileSum> = Vec::new();
    for name in SUMMED_FILES {
        let text = read(name)?;
        actual.push(file_sum(name, &text));
        texts.insert(name, text);
    }
    let manifest_sum = hex::encode(Sha256::digest(manifest_text.as_bytes()));
    if manifest_sum != sealed_sum {
        // The manifest or its seal changed: name the manifest line that no longer matches its
        // file, if one does not.
        if let Some((listed, found)) = manifest
            .files
            .iter()
            .zip(&actual)
            .find(|(listed, found)| listed != found)
        {
            return Err(bad_line(
                MANIFEST_FILE,
                line_of(&manifest_text, &json_string(&listed.sha256)),
                format!(
                    "lists sha256 {} and {} lines for {}; the file has {} and {} lines",
                    listed.sha256, listed.lines, listed.name, found.sha256, found.lines
                ),
            ));
        }
        return Err(BundleError::SumMismatch {
            file: MANIFEST_FILE.to_owned(),
            detail: format!(
                "its sha256 is {manifest_sum}, {SEAL_FILE} says {sealed_sum}: one of the two was \
                 changed"
            ),
        });
    }
    let mismatched: Vec<&'static str> = SUMMED_FILES
        .into_iter()
        .zip(manifest.files.iter().zip(&actual))
        .filter(|(_, (listed, found))| listed != found)
        .map(|(name, _)| name)
        .collect();

    // Keys and schemas.
    let text_of = |name: &'static str| texts.get(name).map_or("", String::as_str);
    let bundle_keys = parse_keys(text_of(KEYS_FILE))?;
    let trusted = extra_trusted.cloned().unwrap_or(bundle_keys);
    let decoder = Arc::new(parse_schemas(text_of(SCHEMAS_FILE))?);

    // Every line on its own.
    let mut partitions: BTreeMap<(String, i32), LoadedPartition> = BTreeMap::new();
    let mut findings = Vec::new();
    for (number, line) in jsonl_lines(CHECKPOINTS_FILE, text_of(CHECKPOINTS_FILE))? {
        let row: CheckpointRow = parse_line(CHECKPOINTS_FILE, number, line)?;
        let signed = row.to_signed().map_err(|column| {
            bad_line(
                CHECKPOINTS_FILE,
                number,
                format!("{column} is not valid hex"),
            )
        })?;
        if CheckpointRow::from_signed(&signed) != row {
            return Err(bad_line(
                CHECKPOINTS_FILE,
                number,
                "checkpoint_hash is not the checkpoint's hash, or a hex column is not lower case",
            ));
        }
        let part = partitions
            .entry((row.topic.clone(), row.partition))
            .or_default();
        part.checkpoints.push(row);
        part.checkpoint_lines.push(number);
    }
    for (number, line) in jsonl_lines(RECORDS_FILE, text_of(RECORDS_FILE))? {
        let record: BundleRecord = parse_line(RECORDS_FILE, number, line)?;
        let row = record
            .to_row()
            .map_err(|reason| bad_line(RECORDS_FILE, number, reason))?;
        let self_consistent = row
            .prev_hash_bytes()
            .is_some_and(|prev| row.hash_bytes() == Some(row.recompute_hash(&prev)));
        if !self_consistent {
            findings.push(Finding {
                file: RECORDS_FILE,
                line: number,
                reason: "its hash does not recompute from its prev_hash and bytes".to_owned(),
            });
        }
        let part = partitions
            .entry((row.topic.clone(), row.partition))
            .or_default();
        part.entries.push(row);
        part.entry_lines.push(number);
    }
    Ok(LoadedBundle {
        manifest,
        manifest_text,
        mismatched,
        trusted,
        decoder,
        partitions,
        findings,
    })
}

impl LoadedBundle {
    /// The chain checks, then the verdict (see [`verify_bundle`]).
    async fn verify(self) -> Result<Report, BundleError> {
        let Self {
            manifest,
            manifest_text,
            mismatched,
            trusted,
            decoder,
            partitions,
            mut findings,
        } = self;
        let decoder = Decoder::Offline(decoder);
        let mut report = Report {
            intact: true,
            verified_at_us: now_us(),
            partitions: Vec::with_capacity(partitions.len()),
        };
        let mut tallies = Vec::with_capacity(partitions.len());
        for ((topic, partition), part) in partitions {
            let mut tally = PartitionTally::new(&topic, partition);
            part.checkpoints
                .iter()
                .for_each(|row| tally.checkpoint(row));
            part.entries.iter().for_each(|row| tally.entry(row));
            tallies.push(tally.0);

            let options = VerifyOptions {
                from: part.entries.first().map(|row| row.offset),
                ..VerifyOptions::default()
            };
            let LoadedPartition {
                entries,
                entry_lines,
                checkpoints,
                checkpoint_lines,
            } = part;
            let lines = Lines {
                entry_offsets: entries.iter().map(|row| row.offset).collect(),
                entry_lines,
                checkpoint_offsets: checkpoints.iter().map(|row| row.last_offset).collect(),
                checkpoint_lines,
            };
            // The bundle holds exactly the range, so every entry goes to the verifier: one
            // filtered out by offset would hide an edited offset.
            let mut entries = Some(entries);
            let mut partition_report = verify::verify_partition(
                &topic,
                partition,
                checkpoints,
                |_, _| Ok(entries.take().unwrap_or_default().into_iter()),
                &trusted,
                &decoder,
                None,
                &options,
            )
            .await?;
            for problem in &mut partition_report.problems {
                if let Some((file, line, before)) = lines.locate(problem.kind, problem.offset) {
                    let place = if before { "before " } else { "" };
                    problem.detail = format!("{} ({file} {place}line {line})", problem.detail);
                    findings.push(Finding {
                        file,
                        line,
                        reason: format!("{}: {}", problem.kind.as_str(), problem.detail),
                    });
                }
            }
            report.intact &= partition_report.intact;
            report.partitions.push(partition_report);
        }

        // The manifest's description of the partitions, recomputed from the lines.
        let described = if manifest.partitions.len() == tallies.len() {
            manifest
                .partitions
                .iter()
                .zip(&tallies)
                .find(|(listed, found)| listed != found)
                .map(|(listed, found)| (listed.clone(), Some(found.clone())))
        } else {
            manifest
                .partitions
                .first()
                .cloned()
                .map(|first| (first, None))
        };
        if let Some((listed, found)) = &described {
            let reason = match found {
                Some(found) => format!(
                    "partition {}/{} is listed as {listed:?}, its lines hold {found:?}",
                    listed.topic, listed.partition
                ),
                None => format!(
                    "lists {} partitions, the lines hold {}",
                    manifest.partitions.len(),
                    tallies.len()
                ),
            };
            findings.push(Finding {
                file: MANIFEST_FILE,
                line: line_of(&manifest_text, "\"partitions\""),
                reason,
            });
        }

        findings.sort_by_key(|finding| {
            (
                SUMMED_FILES
                    .iter()
                    .position(|name| *name == finding.file)
                    .unwrap_or(SUMMED_FILES.len()),
                finding.line,
            )
        });
        if let Some(first_changed) = mismatched.first() {
            if let Some(finding) = findings
                .iter()
                .find(|finding| mismatched.contains(&finding.file))
            {
                return Err(bad_line(finding.file, finding.line, finding.reason.clone()));
            }
            return Err(BundleError::SumMismatch {
                file: (*first_changed).to_owned(),
                detail: match findings.first() {
                    Some(finding) => format!(
                        "its sha256 differs from the manifest's, and {} line {} fails: {}",
                        finding.file, finding.line, finding.reason
                    ),
                    None => "its sha256 or line count differs from the manifest's; no line of \
                             it fails a check, so the change is in a column no hash covers \
                             (archived_at_us, reject_reason, reject_error)"
                        .to_owned(),
                },
            });
        }
        if let Some(finding) = findings
            .iter()
            .find(|finding| finding.file == MANIFEST_FILE)
        {
            return Err(bad_line(finding.file, finding.line, finding.reason.clone()));
        }
        Ok(report)
    }
}

/// Where a partition's entries and checkpoints are in their files.
#[derive(Debug)]
struct Lines {
    entry_offsets: Vec<i64>,
    entry_lines: Vec<usize>,
    /// Last offsets.
    checkpoint_offsets: Vec<i64>,
    checkpoint_lines: Vec<usize>,
}

impl Lines {
    /// The line a problem is on: a checkpoint problem on its checkpoint's line, an entry
    /// problem on its entry's (the second one, for an inserted entry), a missing offset before
    /// the next entry's line (`true`).
    fn locate(
        &self,
        kind: ProblemKind,
        offset: Option<i64>,
    ) -> Option<(&'static str, usize, bool)> {
        let offset = offset?;
        let entry_at = |index: usize| self.entry_lines.get(index).copied();
        match kind {
            ProblemKind::BadSignature
            | ProblemKind::UnknownKey
            | ProblemKind::CheckpointHeadMismatch => self
                .checkpoint_offsets
                .iter()
                .position(|last| *last == offset)
                .and_then(|index| self.checkpoint_lines.get(index).copied())
                .map(|line| (CHECKPOINTS_FILE, line, false)),
            ProblemKind::Missing | ProblemKind::Truncated => self
                .entry_offsets
                .iter()
                .position(|at| *at > offset)
                .and_then(entry_at)
                .map(|line| (RECORDS_FILE, line, true)),
            ProblemKind::Inserted => {
                let mut at_offset = self
                    .entry_offsets
                    .iter()
                    .enumerate()
                    .filter(|(_, at)| **at == offset)
                    .map(|(index, _)| index);
                let first = at_offset.next();
                at_offset
                    .next()
                    .or(first)
                    .and_then(entry_at)
                    .map(|line| (RECORDS_FILE, line, false))
            }
            ProblemKind::Changed | ProblemKind::Reordered => self
                .entry_offsets
                .iter()
                .position(|at| *at == offset)
                .and_then(entry_at)
                .map(|line| (RECORDS_FILE, line, false)),
        }
    }
}

/// `keys.json` checked for form: each key parses, its hex is lower case and its id is the one
/// derived from it.
fn parse_keys(text: &str) -> Result<TrustedKeys, BundleError> {
    let file: KeysFile = parse_document(KEYS_FILE, text)?;
    let mut keys = TrustedKeys::new();
    for key in &file.keys {
        let public_key_line = line_of(text, &json_string(&key.public_key));
        let parsed = checkpoint::parse_public_key(&key.public_key)
            .ok()
            .filter(|parsed| hex::encode(parsed.as_bytes()) == key.public_key)
            .ok_or_else(|| {
                bad_line(
                    KEYS_FILE,
                    public_key_line,
                    "public_key is not an ed25519 public key in lower-case hex",
                )
            })?;
        let derived = checkpoint::key_id(&parsed);
        if derived != key.key_id {
            return Err(bad_line(
                KEYS_FILE,
                line_of(text, &json_string(&key.key_id)),
                format!(
                    "key_id {} is not the id of its public key ({derived})",
                    key.key_id
                ),
            ));
        }
        if keys.get(&derived).is_some() {
            return Err(bad_line(
                KEYS_FILE,
                public_key_line,
                "the key is listed twice",
            ));
        }
        keys.insert(parsed);
    }
    Ok(keys)
}

/// `schemas.json` as an offline decoder.
fn parse_schemas(text: &str) -> Result<OfflineDecoder, BundleError> {
    let file: SchemasFile = parse_document(SCHEMAS_FILE, text)?;
    let mut decoder = OfflineDecoder::new();
    let mut previous_id = None;
    for schema in &file.schemas {
        let line = line_of(text, &format!("\"id\": {}", schema.id));
        if previous_id >= Some(schema.id) {
            return Err(bad_line(
                SCHEMAS_FILE,
                line,
                "schema ids are not in ascending order, or one is listed twice",
            ));
        }
        previous_id = Some(schema.id);
        decoder
            .add(schema.id, &schema.schema)
            .map_err(|error| bad_line(SCHEMAS_FILE, line, error.to_string()))?;
    }
    Ok(decoder)
}

/// A JSON document (pretty, with a final newline) in exactly the layout export writes.
fn parse_document<T: Serialize + serde::de::DeserializeOwned>(
    file: &'static str,
    text: &str,
) -> Result<T, BundleError> {
    let value: T = serde_json::from_str(text)
        .map_err(|error| bad_line(file, error.line(), error.to_string()))?;
    let canonical = pretty(&value, file)?;
    if canonical != text {
        return Err(bad_line(
            file,
            first_different_line(text, &canonical),
            "not laid out as export writes it (whitespace, key order, escapes or number \
             spelling changed)",
        ));
    }
    Ok(value)
}

/// One JSON line in exactly the layout export writes.
fn parse_line<T: Serialize + serde::de::DeserializeOwned>(
    file: &'static str,
    number: usize,
    line: &str,
) -> Result<T, BundleError> {
    let value: T =
        serde_json::from_str(line).map_err(|error| bad_line(file, number, error.to_string()))?;
    let canonical = serde_json::to_string(&value).map_err(|source| BundleError::Encode {
        what: "a line",
        source,
    })?;
    if canonical != line {
        return Err(bad_line(
            file,
            number,
            "not laid out as export writes it (whitespace, key order, escapes or number \
             spelling changed)",
        ));
    }
    Ok(value)
}

/// The lines of a JSON Lines file with their 1-based numbers; every line, the last included,
/// must end with a newline, and none may be empty.
fn jsonl_lines<'a>(
    file: &'static str,
    text: &'a str,
) -> Result<Vec<(usize, &'a str)>, BundleError> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let body = text.strip_suffix('\n').ok_or_else(|| {
        bad_line(
            file,
            text.matches('\n').count() + 1,
            "the last line does not end with a newline",
        )
    })?;
    body.split('\n')
        .enumerate()
        .map(|(index, line)| {
            if line.is_empty() {
                Err(bad_line(file, index + 1, "empty line"))
            } else {
                Ok((index + 1, line))
            }
        })
        .collect()
}

fn pretty<T: Serialize>(value: &T, what: &'static str) -> Result<String, BundleError> {
    serde_json::to_string_pretty(value)
        .map(|text| text + "\n")
        .map_err(|source| BundleError::Encode { what, source })
}

fn file_sum(name: &str, text: &str) -> FileSum {
    FileSum {
        name: name.to_owned(),
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        lines: text.matches('\n').count() as u64,
    }
}

/// `manifest.json.sha256`, in `sha256sum`'s format.
fn seal_line(manifest_text: &str) -> String {
    format!(
        "{}  {MANIFEST_FILE}\n",
        hex::encode(Sha256::digest(manifest_text.as_bytes()))
    )
}

fn canonical_hex(text: &str, bytes: usize) -> bool {
    text.len() == bytes * 2
        && text
            .bytes()
            .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// The 1-based line of the first occurrence of `needle` (line 1 when absent).
fn line_of(text: &str, needle: &str) -> usize {
    text.find(needle)
        .map_or(1, |at| text[..at].matches('\n').count() + 1)
}

fn bad_line(file: &str, line: usize, reason: impl Into<String>) -> BundleError {
    BundleError::BadLine {
        file: file.to_owned(),
        line,
        reason: reason.into(),
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `out`, or accepts it when it is an empty directory.
fn prepare_out_dir(out: &Path) -> Result<(), BundleError> {
    match std::fs::read_dir(out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BundleError::NotEmpty {
                    path: out.to_owned(),
                });
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(out).map_err(io_error(out))
        }
        Err(source) => Err(BundleError::Io {
            path: out.to_owned(),
            source,
        }),
    }
}

/// Writes new files into `dir`, refusing to replace any, and flushes them to disk.
fn write_files(dir: &Path, files: &[NamedText]) -> Result<(), BundleError> {
    for (name, text) in files {
        let path = dir.join(name);
        let mut file = std::fs::File::create_new(&path).map_err(io_error(&path))?;
        file.write_all(text.as_bytes()).map_err(io_error(&path))?;
        file.sync_all().map_err(io_error(&path))?;
    }
    Ok(())
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BundleError> + Send + 'static,
) -> Result<T, BundleError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| BundleError::Task(error.to_string()))?
}

/// A new file written in chunks on the blocking pool, so a large export never blocks an async
/// worker and never holds more than a chunk in memory.
#[derive(Debug)]
struct ChunkedFile {
    path: PathBuf,
    /// `None` only after a write failed; the export has failed then.
    file: Option<std::fs::File>,
    buffer: Vec<u8>,
}

impl ChunkedFile {
    async fn create(path: PathBuf) -> Result<Self, BundleError> {
        let create_path = path.clone();
        let file = blocking(move || {
            std::fs::File::create_new(&create_path).map_err(io_error(&create_path))
        })
        .await?;
        Ok(Self {
            path,
            file: Some(file),
            buffer: Vec::with_capacity(WRITE_CHUNK_BYTES),
        })
    }

    async fn write(&mut self, text: &str) -> Result<(), BundleError> {
        self.buffer.extend_from_slice(text.as_bytes());
        if self.buffer.len() >= WRITE_CHUNK_BYTES {
            self.flush(false).await?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), BundleError> {
        self.flush(true).await
    }

    async fn flush(&mut self, sync: bool) -> Result<(), BundleError> {
        let mut file = self.file.take().ok_or_else(|| BundleError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("an earlier write failed"),
        })?;
        let chunk = std::mem::take(&mut self.buffer);
        let path = self.path.clone();
        let file = blocking(move || {
            file.write_all(&chunk).map_err(io_error(&path))?;
            if sync {
                file.sync_all().map_err(io_error(&path))?;
            }
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
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
    use super::super::checkpoint::ArchiveSigningKey;
    use super::super::proof::test_support::{self, Entry};
    use super::*;

    const CREATED_AT_US: i64 = 1_795_305_800_000_000;

    /// Two partitions: partition 0 with two segments of 4 and 2 unsigned entries (an
    /// undecodable one and a gap among them), partition 1 with one segment of 3 and 1 unsigned.
    fn archive() -> (ArchiveSigningKey, Vec<PartitionExport>) {
        let key = test_support::key();
        let (entries, checkpoints) = test_support::partition(
            &key,
            0,
            &[
                Entry::Event,
                Entry::Undecodable,
                Entry::Event,
                Entry::Gap(2),
                Entry::Event,
                Entry::Event,
                Entry::Event,
                Entry::Event,
                Entry::Event,
                Entry::Event,
            ],
            4,
        );
        let zero = PartitionExport {
            entries,
            checkpoints,
        };
        let (entries, checkpoints) = test_support::partition(&key, 1, &[Entry::Event; 4], 3);
        let one = PartitionExport {
            entries,
            checkpoints,
        };
        (key, vec![zero, one])
    }

    fn schemas() -> BTreeMap<u32, String> {
        BTreeMap::from([(
            test_support::SCHEMA_ID,
            test_support::schema_text().to_owned(),
        )])
    }

    fn write(dir: &Path, key: &ArchiveSigningKey, partitions: &[PartitionExport]) -> ExportSummary {
        write_bundle(
            dir,
            partitions,
            &[key.verifying_key()],
            &schemas(),
            &ExportOptions::default(),
            CREATED_AT_US,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_written_bundle_verifies() {
        let (key, partitions) = archive();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        let summary = write(&out, &key, &partitions);
        assert_eq!(
            summary,
            ExportSummary {
                dir: out.clone(),
                partitions: 2,
                records: 14,
                checkpoints: 3,
                unsigned: 3,
            }
        );
        let report = verify_bundle(&out, None).await.unwrap();
        assert!(report.intact, "{}", report.to_text());
        assert_eq!(report.partitions.len(), 2);
        assert_eq!(report.partitions[0].entries, 10);
        assert_eq!(report.partitions[0].unsigned_entries, 2);
        assert_eq!(report.partitions[0].gaps, 1);
        assert_eq!(report.partitions[0].undecodable, 1);
        assert_eq!(report.partitions[1].unsigned_entries, 1);

        // The key the reviewer got out of band: with it given, only it is trusted.
        let report = verify_bundle(&out, Some(&test_support::trusted(&key)))
            .await
            .unwrap();
        assert!(report.intact);
        let stranger = test_support::trusted(&test_support::key());
        let report = verify_bundle(&out, Some(&stranger)).await.unwrap();
        assert!(!report.intact);
        let problem = report.partitions[0].first_problem().unwrap();
        assert_eq!(problem.kind, ProblemKind::UnknownKey);
        assert!(
            problem.detail.ends_with("(checkpoints.jsonl line 1)"),
            "{}",
            problem.detail
        );

        let manifest: Manifest =
            serde_json::from_str(&std::fs::read_to_string(out.join(MANIFEST_FILE)).unwrap())
                .unwrap();
        assert_eq!(manifest.partitions[0].signed_through, Some(8));
        assert_eq!(manifest.partitions[0].unsigned, 2);
        assert_eq!(manifest.files[0].lines, 14);
    }

    #[tokio::test]
    async fn a_range_is_widened_to_segments_and_carries_the_checkpoint_chain() {
        let (key, partitions) = archive();
        let zero = &partitions[0];
        let options = ExportOptions {
            partition: Some(0),
            from: Some(6),
            to: Some(6),
        };
        let planned = plan(&zero.checkpoints, &options);
        // Offset 6 is in the second segment (offsets 5..=8); the first checkpoint comes along.
        assert_eq!((planned.first_offset, planned.last_offset), (5, 8));
        assert_eq!(planned.checkpoints, zero.checkpoints);

        let tail = plan(
            &zero.checkpoints,
            &ExportOptions {
                from: Some(10),
                ..ExportOptions::default()
            },
        );
        assert_eq!((tail.first_offset, tail.last_offset), (9, i64::MAX));
        assert_eq!(tail.checkpoints, zero.checkpoints);
        let head = plan(
            &zero.checkpoints,
            &ExportOptions {
                to: Some(2),
                ..ExportOptions::default()
            },
        );
        assert_eq!((head.first_offset, head.last_offset), (0, 4));
        assert_eq!(head.checkpoints, zero.checkpoints[..1]);
        assert_eq!(
            plan(&[], &ExportOptions::default()),
            PartitionPlan {
                first_offset: 0,
                last_offset: i64::MAX,
                checkpoints: Vec::new()
            }
        );

        for planned in [planned, tail, head] {
            let exported = PartitionExport {
                entries: zero
                    .entries
                    .iter()
                    .filter(|row| {
                        row.offset >= planned.first_offset && row.offset <= planned.last_offset
                    })
                    .cloned()
                    .collect(),
                checkpoints: planned.checkpoints.clone(),
            };
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &key, &[exported]);
            let report = verify_bundle(dir.path(), None).await.unwrap();
            assert!(report.intact, "{}", report.to_text());
        }
    }

    /// A rotation with nothing pending signs a checkpoint covering no entry; the next
    /// segment's checkpoint follows it.
    #[tokio::test]
    async fn a_checkpoint_covering_nothing_travels_along() {
        let key = test_support::key();
        let (entries, mut checkpoints) = test_support::partition(&key, 0, &[Entry::Event; 6], 3);
        let empty = test_support::empty_checkpoint(&key, &checkpoints[0]);
        // Re-sign the second segment's checkpoint on top of the empty one.
        let mut second = checkpoints[1].to_signed().unwrap().checkpoint;
        second.previous_checkpoint_hash = empty.to_signed().unwrap().checkpoint.hash();
        checkpoints[1] = CheckpointRow::from_signed(&second.sign(&key).unwrap());
        checkpoints.insert(1, empty);
        for options in [
            ExportOptions::default(),
            ExportOptions {
                from: Some(4),
                ..ExportOptions::default()
            },
            ExportOptions {
                to: Some(1),
                ..ExportOptions::default()
            },
        ] {
            let planned = plan(&checkpoints, &options);
            let exported = PartitionExport {
                entries: entries
                    .iter()
                    .filter(|row| {
                        row.offset >= planned.first_offset && row.offset <= planned.last_offset
                    })
                    .cloned()
                    .collect(),
                checkpoints: planned.checkpoints.clone(),
            };
            let dir = tempfile::tempdir().unwrap();
            write(dir.path(), &key, &[exported]);
            let report = verify_bundle(dir.path(), None).await.unwrap();
            assert!(report.intact, "{options:?}: {}", report.to_text());
        }
    }

    #[test]
    fn export_refuses_a_non_empty_directory() {
        let (key, partitions) = archive();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let error = write_bundle(
            dir.path(),
            &partitions,
            &[key.verifying_key()],
            &schemas(),
            &ExportOptions::default(),
            CREATED_AT_US,
        )
        .unwrap_err();
        assert!(matches!(error, BundleError::NotEmpty { .. }), "{error}");
    }

    #[tokio::test]
    async fn an_archive_broken_before_export_is_reported_by_line() {
        let (key, mut partitions) = archive();
        partitions[0].entries[4].message = "nothing to see".to_owned();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &key, &partitions);
        let report = verify_bundle(dir.path(), None).await.unwrap();
        assert!(!report.intact);
        let problem = report.partitions[0].first_problem().unwrap();
        assert_eq!(problem.kind, ProblemKind::Changed);
        assert!(problem.detail.contains("message"), "{}", problem.detail);
        assert!(
            problem.detail.ends_with("(records.jsonl line 5)"),
            "{}",
            problem.detail
        );
    }

    #[tokio::test]
    async fn a_malformed_line_is_named() {
        let (key, partitions) = archive();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &key, &partitions);
        let path = dir.path().join(RECORDS_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[2] = "{\"topic\":";
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        match verify_bundle(dir.path(), None).await.unwrap_err() {
            BundleError::BadLine { file, line, .. } => {
                assert_eq!((file.as_str(), line), (RECORDS_FILE, 3));
            }
            other => panic!("{other}"),
        }
        std::fs::write(dir.path().join("extra.txt"), "x").unwrap();
        assert!(matches!(
            verify_bundle(dir.path(), None).await,
            Err(BundleError::UnexpectedFile { .. })
        ));
    }

    /// Positions to change in a file: in a line-oriented file, a few spread over every line;
    /// otherwise every `stride`th byte. Verifying runs a few Ed25519 checks, about 20 ms each
    /// in unoptimised test builds, which is what keeps these sets small.
    fn positions(text: &str, per_line: Option<usize>, stride: usize) -> Vec<usize> {
        match per_line {
            None => (0..text.len()).step_by(stride).collect(),
            Some(count) => {
                let mut positions = Vec::new();
                let mut start = 0;
                for line in text.split_inclusive('\n') {
                    let step = (line.len() / count).max(1);
                    positions.extend((start..start + line.len()).step_by(step));
                    start += line.len();
                }
                positions
            }
        }
    }

    /// Flips one bit of one byte, in every file and in many places: verification must fail
    /// and name the file, and in a JSON Lines file the line changed whenever it names one.
    #[tokio::test]
    async fn any_one_byte_edit_fails_and_names_its_file() {
        let (key, partitions) = archive();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &key, &partitions);
        assert!(verify_bundle(dir.path(), None).await.unwrap().intact);
        let cases: [(&str, Option<usize>, usize); 6] = [
            (RECORDS_FILE, Some(5), 0),
            (CHECKPOINTS_FILE, Some(12), 0),
            (KEYS_FILE, None, 1),
            (SCHEMAS_FILE, None, 211),
            (MANIFEST_FILE, None, 3),
            (SEAL_FILE, None, 1),
        ];
        let mut localized = 0;
        let mut edits = 0;
        for (file, per_line, stride) in cases {
            let path = dir.path().join(file);
            let original = std::fs::read(&path).unwrap();
            let text = String::from_utf8(original.clone()).unwrap();
            for position in positions(&text, per_line, stride) {
                let mut edited = original.clone();
                edited[position] ^= 0x01;
                std::fs::write(&path, &edited).unwrap();
                let line = original[..position].iter().filter(|b| **b == b'\n').count() + 1;
                let what = format!(
                    "{file} byte {position} ({:?}) on line {line}",
                    original[position] as char
                );
                match verify_bundle(dir.path(), None).await {
                    Ok(report) => panic!("{what}: still verifies\n{}", report.to_text()),
                    Err(BundleError::BadLine {
                        file: named,
                        line: named_line,
                        reason,
                    }) => {
                        let expected = if file == SEAL_FILE { SEAL_FILE } else { file };
                        assert_eq!(named, expected, "{what}: {reason}");
                        if per_line.is_some() {
                            assert_eq!(named_line, line, "{what}: {reason}");
                            localized += 1;
                        }
                    }
                    Err(BundleError::SumMismatch {
                        file: named,
                        detail,
                    }) => {
                        assert_eq!(
                            named,
                            if file == SEAL_FILE {
                                MANIFEST_FILE
                            } else {
                                file
                            }
                        );
                        if file == SEAL_FILE {
                            assert!(detail.contains(SEAL_FILE), "{what}: {detail}");
                        }
                    }
                    Err(other) => panic!("{what}: unexpected {other}"),
                }
                edits += 1;
            }
            std::fs::write(&path, &original).unwrap();
        }
        assert!(verify_bundle(dir.path(), None).await.unwrap().intact);
        assert!(edits > 400, "{edits}");
        assert!(localized > 60, "{localized}");
    }
}
