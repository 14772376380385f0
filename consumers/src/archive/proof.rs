//! One event's inclusion proof, and its offline check with the public key alone.
//!
//! A proof ties one archived event to a signed checkpoint: the entry's bytes and chain hash,
//! its RFC 6962 audit path up to the Merkle root of the checkpoint's segment, and the signed
//! checkpoint itself. [`check`] needs nothing but the file and a trusted public key.
//!
//! # The file
//!
//! Pretty JSON, exactly as [`to_json`] writes it (two-space indent, a final newline):
//!
//! ```text
//! {
//!   "format": "ledgerline-archive-proof v1",
//!   "entry": {
//!     "topic", "partition", "offset",   the Kafka coordinates
//!     "timestamp_ms": i64 | null,
//!     "key": base64 | null,             the record's key bytes
//!     "value": base64,                  the record's value bytes (Confluent wire format)
//!     "schema_id": u32,                 the id in the value's header
//!     "kind": "event",
//!     "prev_hash", "hash": hex,         the chain hashes before and of this entry
//!     "fields": { "event_id", ... }     what the value decodes to (`EventFields`)
//!   },
//!   "inclusion": { "leaf_index", "tree_size", "audit_path": [hex, ...] },
//!   "checkpoint": { the `checkpoints` row: every signed field, "signature", "checkpoint_hash" },
//!   "writer_schema": "..."             the Avro schema the value was written with
//! }
//! ```
//!
//! # What binds each field (why a one-byte edit anywhere fails)
//!
//! - `prev_hash`, the coordinates, `timestamp_ms`, `key`, `value`: inputs of the entry's chain
//!   hash ([`super::chain::record_hash`]), which must recompute to `hash`;
//! - `hash`, `leaf_index`, `tree_size`, `audit_path`: RFC 9162 inclusion of `hash` at
//!   `leaf_index` in a tree of `tree_size` leaves whose root is the checkpoint's `merkle_root`,
//!   and `tree_size` must be the checkpoint's `count`;
//! - every checkpoint field: the Ed25519 signature, by a key the reviewer trusts, and
//!   `checkpoint_hash` must be the checkpoint's hash;
//! - `fields`, `schema_id`, `kind`: recomputed from the signed value bytes. They are decoded
//!   with `writer_schema`, which must be, byte for byte, one of the audit schemas compiled into
//!   the checking build (schema files are never edited once released). A schema supplied by
//!   the proof alone could not be trusted: reordering two string fields in it would show the
//!   same signed bytes as another event;
//! - `format`: must be [`PROOF_FORMAT`];
//! - the layout: [`from_json`] accepts only the exact text [`to_json`] writes, so whitespace,
//!   key order, number spellings, escapes and the case of hex digits cannot vary either.
//!
//! Hex must be lower case and base64 canonical (standard alphabet, padded) for the same reason:
//! `AB` and `ab` decode to the same byte, and a format that accepted both would let a byte of
//! the file change unnoticed.

use base64::Engine as _;
use ledgerline_schemas::avro::SCHEMA_FILES;
use ledgerline_schemas::{codec, Category, OfflineDecoder};
use serde::{Deserialize, Serialize};

use super::chain;
use super::checkpoint::{SignedCheckpoint, TrustedKeys, VerifyError};
use super::merkle;
use super::row::{hex32, ArchiveRow, CheckpointRow, EventFields, KIND_EVENT};
use super::store::ArchiveStore;
use super::verify::EntrySource as _;
use crate::clickhouse::ClickHouseError;

/// The `format` of every proof this version writes and checks.
pub const PROOF_FORMAT: &str = "ledgerline-archive-proof v1";

/// Why a proof could not be made, read or checked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// No archived event has this id.
    #[error("no archived event has id {event_id}")]
    NotFound { event_id: String },
    /// The event is archived but no signed checkpoint covers it yet.
    #[error(
        "event at {topic}/{partition} offset {offset} is archived but not yet covered by a signed \
         checkpoint ({}); no proof exists until the next checkpoint is cut",
        match checkpointed_through {
            Some(last) => format!("checkpoints cover offsets through {last}"),
            None => "the partition has no checkpoint yet".to_owned(),
        }
    )]
    NotYetCheckpointed {
        topic: String,
        partition: i32,
        offset: i64,
        /// The last offset the partition's newest checkpoint covers.
        checkpointed_through: Option<i64>,
    },
    /// The id is archived at more than one place (the producer sent the event twice, or a row
    /// was inserted); a proof of one of them would not say which the reviewer meant.
    #[error("event {event_id} is archived {} times ({}); run `archive verify`", entries.len(), entries.join(", "))]
    Ambiguous {
        event_id: String,
        /// `topic/partition@offset` of each.
        entries: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] ClickHouseError),
    /// The file is not a proof in this format.
    #[error("not a proof file: line {line}: {reason}")]
    Parse { line: usize, reason: String },
    /// The checkpoint's signature does not verify, or its key is not trusted.
    #[error("the proof's checkpoint does not verify: {0}")]
    Signature(#[from] VerifyError),
    /// What failed, by name: the proof (or the archive it was made from) is not intact.
    #[error("invalid proof: {0}")]
    Invalid(String),
}

/// One event's inclusion proof. See the module doc for the file layout and what binds each
/// field.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    pub entry: ProofEntry,
    pub inclusion: Inclusion,
    /// The signed checkpoint whose segment holds the entry, as its `checkpoints` row.
    pub checkpoint: CheckpointRow,
    /// The text of the audit schema the value was written with.
    pub writer_schema: String,
}

/// The proved chain entry: everything its hash covers, and the event its value decodes to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProofEntry {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    /// The record key, base64 (standard alphabet, padded); `null` when the record had none.
    pub key: Option<String>,
    /// The record value as Kafka delivered it, base64.
    pub value: String,
    /// The schema id in the value's header.
    pub schema_id: u32,
    /// Always `event`: only decoded events have an id to be proved by.
    pub kind: String,
    /// The previous entry's chain hash, hex.
    pub prev_hash: String,
    /// This entry's chain hash, hex: the Merkle leaf.
    pub hash: String,
    /// The event's fields as the value decodes.
    pub fields: EventFields,
}

/// Where the entry sits in the checkpoint's Merkle tree.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Inclusion {
    /// The entry's position among the segment's entries (0-based; a gap is one entry).
    pub leaf_index: u64,
    /// The number of entries in the segment: the checkpoint's `count`.
    pub tree_size: u64,
    /// RFC 6962 audit path, leaf to root, hex.
    pub audit_path: Vec<String>,
}

/// What a proof that checks establishes: this event was archived at these coordinates and is
/// covered by a checkpoint signed by `key_id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProofSummary {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_id: String,
    pub key_id: String,
    pub checkpoint_first_offset: i64,
    pub checkpoint_last_offset: i64,
    pub checkpoint_created_at_us: i64,
    /// The event, decoded from the signed bytes with a schema of this build.
    pub fields: EventFields,
}

/// Makes the proof of the event `event_id`: finds its entry, the checkpoint whose segment
/// covers it, and reads that segment to build the audit path.
pub async fn prove(store: &ArchiveStore, event_id: &str) -> Result<Proof, ProofError> {
    let entry = single_entry(event_id, store.entries_of_event(event_id).await?)?;
    let checkpoints = store.checkpoints(&entry.topic, entry.partition).await?;
    let covering = covering_checkpoints(&entry, &checkpoints)?;
    // Several rows can cover one offset only if a checkpoint row was written twice (or forged);
    // the first whose segment recomputes is the proof.
    let mut last_error = None;
    for checkpoint in covering {
        let mut cursor = store.entries(
            &entry.topic,
            entry.partition,
            checkpoint.first_offset,
            checkpoint.last_offset,
        )?;
        let mut segment = Vec::new();
        while let Some(row) = cursor.next_entry().await? {
            segment.push(row);
        }
        match build_proof(&entry, checkpoint, &segment) {
            Ok(proof) => return Ok(proof),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| ProofError::NotFound {
        event_id: event_id.to_owned(),
    }))
}

/// The one event entry among `rows` (what `entries_of_event` returned). Identical copies of one
/// entry count once.
pub fn single_entry(event_id: &str, rows: Vec<ArchiveRow>) -> Result<ArchiveRow, ProofError> {
    let mut events: Vec<ArchiveRow> = Vec::new();
    for row in rows.into_iter().filter(|row| row.kind == KIND_EVENT) {
        if !events.contains(&row) {
            events.push(row);
        }
    }
    match events.len() {
        0 => Err(ProofError::NotFound {
            event_id: event_id.to_owned(),
        }),
        1 => Ok(events.remove(0)),
        _ => Err(ProofError::Ambiguous {
            event_id: event_id.to_owned(),
            entries: events
                .iter()
                .map(|row| format!("{}/{}@{}", row.topic, row.partition, row.offset))
                .collect(),
        }),
    }
}

/// The checkpoints (of the entry's partition, by last offset) whose segment covers the entry.
pub fn covering_checkpoints<'a>(
    entry: &ArchiveRow,
    checkpoints: &'a [CheckpointRow],
) -> Result<Vec<&'a CheckpointRow>, ProofError> {
    let covering: Vec<&CheckpointRow> = checkpoints
        .iter()
        .filter(|checkpoint| {
            checkpoint.topic == entry.topic
                && checkpoint.partition == entry.partition
                && checkpoint.first_offset <= entry.offset
                && entry.offset <= checkpoint.last_offset
        })
        .collect();
    if !covering.is_empty() {
        return Ok(covering);
    }
    let checkpointed_through = checkpoints
        .iter()
        .filter(|checkpoint| {
            checkpoint.topic == entry.topic && checkpoint.partition == entry.partition
        })
        .map(|checkpoint| checkpoint.last_offset)
        .max();
    match checkpointed_through {
        Some(last) if last >= entry.offset => Err(ProofError::Invalid(format!(
            "no checkpoint covers offset {} of {}/{}, though checkpoints reach offset {last}: \
             the partition's checkpoints have a hole; run `archive verify`",
            entry.offset, entry.topic, entry.partition
        ))),
        _ => Err(ProofError::NotYetCheckpointed {
            topic: entry.topic.clone(),
            partition: entry.partition,
            offset: entry.offset,
            checkpointed_through,
        }),
    }
}

/// The proof of `entry` against `checkpoint`, given the entries of its segment in offset
/// order (what `store.entries(first_offset, last_offset)` returns). The I/O-free part of
/// [`prove`]; the result passes every check of [`check`] except the signature, which needs the
/// reviewer's keys.
pub fn build_proof(
    entry: &ArchiveRow,
    checkpoint: &CheckpointRow,
    segment: &[ArchiveRow],
) -> Result<Proof, ProofError> {
    let range = format!(
        "segment {}..={} of {}/{}",
        checkpoint.first_offset, checkpoint.last_offset, checkpoint.topic, checkpoint.partition
    );
    let mut leaves: Vec<[u8; 32]> = Vec::with_capacity(segment.len());
    let mut leaf_index = None;
    let mut previous: Option<&ArchiveRow> = None;
    for row in segment {
        if let Some(previous) = previous {
            if row.offset == previous.offset && row.hash == previous.hash {
                // The same entry stored twice: one leaf.
                continue;
            }
            if row.offset <= previous.offset {
                return Err(ProofError::Invalid(format!(
                    "{range} holds two different entries at offset {}; run `archive verify`",
                    row.offset
                )));
            }
        }
        let hash = row.hash_bytes().ok_or_else(|| {
            ProofError::Invalid(format!(
                "the hash of offset {} in {range} is not 64 hex digits; run `archive verify`",
                row.offset
            ))
        })?;
        if row.offset == entry.offset {
            if row.hash != entry.hash {
                return Err(ProofError::Invalid(format!(
                    "{range} holds another entry at offset {} than the event's; run `archive verify`",
                    row.offset
                )));
            }
            leaf_index = Some(leaves.len());
        }
        leaves.push(hash);
        previous = Some(row);
    }
    let leaf_index = leaf_index.ok_or_else(|| {
        ProofError::Invalid(format!(
            "{range} does not hold offset {}; run `archive verify`",
            entry.offset
        ))
    })?;
    let root = merkle::root(&leaves);
    if leaves.len() as u64 != checkpoint.count || hex::encode(root) != checkpoint.merkle_root {
        return Err(ProofError::Invalid(format!(
            "the entries of {range} do not recompute to its checkpoint's Merkle root and count; \
             run `archive verify`"
        )));
    }
    let audit_path = merkle::inclusion_proof(&leaves, leaf_index)
        .ok_or_else(|| ProofError::Invalid(format!("no audit path for leaf {leaf_index}")))?;
    let (writer_schema, fields) = compiled_writer_schema(entry)?;
    let proof = Proof {
        format: PROOF_FORMAT.to_owned(),
        entry: ProofEntry {
            topic: entry.topic.clone(),
            partition: entry.partition,
            offset: entry.offset,
            timestamp_ms: entry.timestamp_ms,
            key: entry.key.as_deref().map(|key| BASE64.encode(key)),
            value: BASE64.encode(&entry.value),
            schema_id: codec::schema_id(&entry.value)
                .map_err(|error| ProofError::Invalid(format!("the event's value: {error}")))?,
            kind: entry.kind.clone(),
            prev_hash: entry.prev_hash.clone(),
            hash: entry.hash.clone(),
            fields,
        },
        inclusion: Inclusion {
            leaf_index: leaf_index as u64,
            tree_size: leaves.len() as u64,
            audit_path: audit_path.iter().map(hex::encode).collect(),
        },
        checkpoint: checkpoint.clone(),
        writer_schema: writer_schema.to_owned(),
    };
    // A proof that fails its own check would only surface at the reviewer's; catch a broken
    // archive (a stored hash or field that does not recompute) here instead.
    check_contents(&proof)?;
    Ok(proof)
}

/// Checks `proof` offline: the entry's hash, its fields against its bytes, its inclusion in
/// the checkpoint's Merkle root and the checkpoint's signature by one of the `trusted` keys.
pub fn check(proof: &Proof, trusted: &TrustedKeys) -> Result<ProofSummary, ProofError> {
    let (signed, fields) = check_contents(proof)?;
    signed.verify(trusted)?;
    let checkpoint = &signed.checkpoint;
    Ok(ProofSummary {
        topic: proof.entry.topic.clone(),
        partition: proof.entry.partition,
        offset: proof.entry.offset,
        event_id: fields.event_id.clone(),
        key_id: checkpoint.key_id.clone(),
        checkpoint_first_offset: checkpoint.first_offset,
        checkpoint_last_offset: checkpoint.last_offset,
        checkpoint_created_at_us: checkpoint.created_at_us,
        fields,
    })
}

/// Everything [`check`] checks but the signature: what binds each field of the file.
fn check_contents(proof: &Proof) -> Result<(SignedCheckpoint, EventFields), ProofError> {
    let invalid = ProofError::Invalid;
    if proof.format != PROOF_FORMAT {
        return Err(invalid(format!(
            "format is `{}`, this build checks `{PROOF_FORMAT}`",
            proof.format
        )));
    }
    let entry = &proof.entry;
    if entry.kind != KIND_EVENT {
        return Err(invalid(format!(
            "entry kind is `{}`; only `{KIND_EVENT}` entries are proved",
            entry.kind
        )));
    }
    let key = match &entry.key {
        Some(key) => Some(base64_field(key, "entry.key")?),
        None => None,
    };
    let value = base64_field(&entry.value, "entry.value")?;
    let prev_hash = hex_field(&entry.prev_hash, "entry.prev_hash")?;
    let hash = hex_field(&entry.hash, "entry.hash")?;
    let recomputed = chain::record_hash(
        &prev_hash,
        &entry.topic,
        entry.partition,
        entry.offset,
        entry.timestamp_ms,
        key.as_deref(),
        &value,
    );
    if recomputed != hash {
        return Err(invalid(
            "entry.hash does not recompute from the entry's prev_hash, coordinates, timestamp, \
             key and value"
                .to_owned(),
        ));
    }

    // The fields: decoded from the signed bytes with a schema this build vouches for.
    let header_id = codec::schema_id(&value)
        .map_err(|error| invalid(format!("entry.value is not a wire-format record: {error}")))?;
    if header_id != entry.schema_id {
        return Err(invalid(format!(
            "entry.schema_id is {}, the value's header says {header_id}",
            entry.schema_id
        )));
    }
    if !audit_schema_texts().any(|text| text == proof.writer_schema) {
        return Err(invalid(
            "writer_schema is not one of the audit schemas this build knows (a schema the proof \
             supplied itself could show the signed bytes as other fields); check with a build \
             that has it"
                .to_owned(),
        ));
    }
    let fields = decode_fields(header_id, &proof.writer_schema, &value)
        .map_err(|error| invalid(format!("entry.value does not decode: {error}")))?;
    let mut stated = ArchiveRow::empty(&entry.topic, entry.partition, entry.offset, KIND_EVENT);
    stated.set_fields(entry.fields.clone());
    if let Some(column) = stated.first_field_difference(&fields) {
        return Err(invalid(format!(
            "entry.fields.{column} differs from what the signed value bytes hold"
        )));
    }

    // The checkpoint, in canonical form (lower-case hex, its own hash).
    let row = &proof.checkpoint;
    let signed = row
        .to_signed()
        .map_err(|column| invalid(format!("checkpoint.{column} is not valid hex")))?;
    if CheckpointRow::from_signed(&signed) != *row {
        return Err(invalid(
            "checkpoint.checkpoint_hash is not the checkpoint's hash, or one of its hex columns \
             is not lower case"
                .to_owned(),
        ));
    }
    let checkpoint = &signed.checkpoint;
    if checkpoint.topic != entry.topic
        || checkpoint.partition != entry.partition
        || entry.offset < checkpoint.first_offset
        || entry.offset > checkpoint.last_offset
    {
        return Err(invalid(format!(
            "the checkpoint covers {}/{} offsets {}..={}, not the entry at {}/{} offset {}",
            checkpoint.topic,
            checkpoint.partition,
            checkpoint.first_offset,
            checkpoint.last_offset,
            entry.topic,
            entry.partition,
            entry.offset
        )));
    }

    // Inclusion of the entry's hash in the signed root.
    let inclusion = &proof.inclusion;
    if inclusion.tree_size != checkpoint.count {
        return Err(invalid(format!(
            "inclusion.tree_size is {}, the checkpoint covers {} entries",
            inclusion.tree_size, checkpoint.count
        )));
    }
    if inclusion.leaf_index + 1 == inclusion.tree_size && checkpoint.head_hash != hash {
        return Err(invalid(
            "the entry is the segment's last, but its hash is not the checkpoint's head_hash"
                .to_owned(),
        ));
    }
    let audit_path = inclusion
        .audit_path
        .iter()
        .enumerate()
        .map(|(step, node)| hex_field(node, &format!("inclusion.audit_path[{step}]")))
        .collect::<Result<Vec<_>, _>>()?;
    if !merkle::verify_inclusion(
        &hash,
        inclusion.leaf_index,
        inclusion.tree_size,
        &audit_path,
        &checkpoint.merkle_root,
    ) {
        return Err(invalid(format!(
            "the audit path does not lead from entry.hash at leaf {} of {} to the checkpoint's \
             merkle_root",
            inclusion.leaf_index, inclusion.tree_size
        )));
    }
    Ok((signed, fields))
}

/// The proof file: pretty JSON and a final newline. [`from_json`] accepts exactly this text.
pub fn to_json(proof: &Proof) -> String {
    // Serializing plain structs with string keys cannot fail; were it ever to, an empty file
    // fails `from_json` rather than passing anything.
    serde_json::to_string_pretty(proof)
        .map(|text| text + "\n")
        .unwrap_or_default()
}

/// Reads a proof file. Only the exact text [`to_json`] writes is accepted: a reformatted file
/// could differ from the checked one in bytes no hash covers.
pub fn from_json(text: &str) -> Result<Proof, ProofError> {
    let proof: Proof = serde_json::from_str(text).map_err(|error| ProofError::Parse {
        line: error.line(),
        reason: error.to_string(),
    })?;
    let canonical = to_json(&proof);
    if canonical != text {
        return Err(ProofError::Parse {
            line: first_different_line(text, &canonical),
            reason: "not laid out as `archive prove` writes it (whitespace, key order, escapes \
                     or number spelling changed)"
                .to_owned(),
        });
    }
    Ok(proof)
}

/// The 1-based number of the first line where `text` and `expected` differ.
pub(crate) fn first_different_line(text: &str, expected: &str) -> usize {
    let mut actual_lines = text.split('\n');
    let mut expected_lines = expected.split('\n');
    let mut number = 1;
    loop {
        match (actual_lines.next(), expected_lines.next()) {
            (Some(actual), Some(expected)) if actual == expected => number += 1,
            _ => return number,
        }
    }
}

/// The writer schema for `entry` among the audit schemas compiled into this build: the one
/// its value decodes with to exactly the fields the archive stored, and those fields.
fn compiled_writer_schema(entry: &ArchiveRow) -> Result<(&'static str, EventFields), ProofError> {
    let id = codec::schema_id(&entry.value)
        .map_err(|error| ProofError::Invalid(format!("the event's value: {error}")))?;
    // Newest first: a value written with an old version can also resolve under a newer one,
    // but only its own version gives back exactly what was stored.
    let mut texts: Vec<&'static str> = audit_schema_texts().collect();
    texts.reverse();
    texts
        .into_iter()
        .find_map(|text| {
            let fields = decode_fields(id, text, &entry.value).ok()?;
            entry
                .first_field_difference(&fields)
                .is_none()
                .then_some((text, fields))
        })
        .ok_or_else(|| {
            ProofError::Invalid(format!(
                "the value of {}/{} offset {} does not decode, with any audit schema this build \
                 knows, to the fields the archive stores; run `archive verify`",
                entry.topic, entry.partition, entry.offset
            ))
        })
}

/// The text of every audit schema version compiled into this build, oldest first.
fn audit_schema_texts() -> impl Iterator<Item = &'static str> {
    SCHEMA_FILES
        .iter()
        .filter(|file| file.category == Category::Audit)
        .map(|file| file.text)
}

fn decode_fields(id: u32, schema_text: &str, value: &[u8]) -> Result<EventFields, String> {
    let mut decoder = OfflineDecoder::new();
    decoder
        .add(id, schema_text)
        .map_err(|error| error.to_string())?;
    decoder
        .decode(Category::Audit, value)
        .map(|event| EventFields::of(&event))
        .map_err(|error| error.to_string())
}

/// The base64 engine of proofs and bundles: standard alphabet, padded, and (as the engine does
/// by default) refusing non-zero trailing bits, so each byte string has exactly one spelling.
pub(crate) const BASE64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Base64 in its one canonical spelling, decoded.
pub(crate) fn canonical_base64(text: &str) -> Option<Vec<u8>> {
    BASE64
        .decode(text)
        .ok()
        .filter(|bytes| BASE64.encode(bytes) == text)
}

/// 64 lower-case hex digits, decoded.
pub(crate) fn canonical_hex32(text: &str) -> Option<[u8; 32]> {
    hex32(text).filter(|bytes| hex::encode(bytes) == text)
}

fn base64_field(text: &str, what: &str) -> Result<Vec<u8>, ProofError> {
    canonical_base64(text)
        .ok_or_else(|| ProofError::Invalid(format!("{what} is not canonical base64")))
}

fn hex_field(text: &str, what: &str) -> Result<[u8; 32], ProofError> {
    canonical_hex32(text)
        .ok_or_else(|| ProofError::Invalid(format!("{what} is not 64 lower-case hex digits")))
}

/// A small archive built in memory, for the proof and bundle tests: real Avro-encoded audit
/// events (encoded here from the schema text, since this crate has no Avro writer), chained
/// and checkpointed exactly as the sink does.
#[cfg(test)]
pub(crate) mod test_support {
    use ledgerline_schemas::{avro, samples, Event};
    use serde_json::Value;

    use super::super::chain::GENESIS;
    use super::super::checkpoint::{generate, load_signing_key, ArchiveSigningKey, Checkpoint};
    use super::super::row::{KIND_GAP, KIND_UNDECODABLE};
    use super::*;

    pub const TOPIC: &str = "ledgerline.audit";
    /// The registry id the test values claim.
    pub const SCHEMA_ID: u32 = 7;

    /// What to put at the next offsets of a partition.
    #[derive(Debug, Clone, Copy)]
    pub enum Entry {
        Event,
        Undecodable,
        /// A gap over this many offsets.
        Gap(i64),
    }

    pub fn key() -> ArchiveSigningKey {
        load_signing_key(&generate().unwrap().secret_file).unwrap()
    }

    pub fn trusted(key: &ArchiveSigningKey) -> TrustedKeys {
        let mut trusted = TrustedKeys::new();
        trusted.insert(key.verifying_key());
        trusted
    }

    pub fn schema_text() -> &'static str {
        avro::current(Category::Audit).text
    }

    /// A partition's chain of `entries` and a checkpoint after every `every` entries (the
    /// rest unsigned).
    pub fn partition(
        key: &ArchiveSigningKey,
        partition: i32,
        entries: &[Entry],
        every: usize,
    ) -> (Vec<ArchiveRow>, Vec<CheckpointRow>) {
        let mut rows = Vec::new();
        let mut head = GENESIS;
        let mut offset = 0i64;
        for (n, entry) in entries.iter().enumerate() {
            let mut row = match entry {
                Entry::Event => {
                    let mut row = ArchiveRow::empty(TOPIC, partition, offset, KIND_EVENT);
                    let (value, fields) = audit_value(n as u64);
                    row.schema_id = Some(SCHEMA_ID);
                    row.value = value;
                    row.key = Some(fields.actor_id.clone().into_bytes());
                    row.set_fields(fields);
                    row
                }
                Entry::Undecodable => {
                    let mut row = ArchiveRow::empty(TOPIC, partition, offset, KIND_UNDECODABLE);
                    row.value = vec![0, 0, 0, 0, SCHEMA_ID as u8, 0xff, 0xfe];
                    row.schema_id = Some(SCHEMA_ID);
                    row.reject_reason = "corrupt_avro".to_owned();
                    row.reject_error = "bytes do not decode".to_owned();
                    row
                }
                Entry::Gap(span) => {
                    let mut row = ArchiveRow::empty(TOPIC, partition, offset, KIND_GAP);
                    row.last_offset = offset + span - 1;
                    row
                }
            };
            if row.kind != KIND_GAP {
                row.timestamp_ms = Some(1_795_305_600_000 + n as i64);
            }
            row.prev_hash = hex::encode(head);
            head = row.recompute_hash(&head);
            row.hash = hex::encode(head);
            row.archived_at_us = 1_795_305_600_000_000 + n as i64;
            offset = row.last_offset + 1;
            rows.push(row);
        }
        let mut checkpoints = Vec::new();
        let mut previous_checkpoint_hash = GENESIS;
        for segment in rows.chunks(every).filter(|chunk| chunk.len() == every) {
            let leaves: Vec<[u8; 32]> = segment
                .iter()
                .map(|row| row.hash_bytes().unwrap())
                .collect();
            let first = &segment[0];
            let last = &segment[segment.len() - 1];
            let signed = Checkpoint {
                key_id: key.key_id().to_owned(),
                topic: TOPIC.to_owned(),
                partition,
                first_offset: first.offset,
                last_offset: last.last_offset,
                count: segment.len() as u64,
                head_hash: last.hash_bytes().unwrap(),
                merkle_root: merkle::root(&leaves),
                previous_checkpoint_hash,
                created_at_us: 1_795_305_700_000_000 + last.offset,
                next_key_id: None,
            }
            .sign(key)
            .unwrap();
            previous_checkpoint_hash = signed.checkpoint.hash();
            checkpoints.push(CheckpointRow::from_signed(&signed));
        }
        (rows, checkpoints)
    }

    /// A checkpoint covering nothing right after `last` (what a key rotation with nothing
    /// pending signs): it fixes the head `last` fixed.
    pub fn empty_checkpoint(key: &ArchiveSigningKey, last: &CheckpointRow) -> CheckpointRow {
        let last = last.to_signed().unwrap().checkpoint;
        let signed = Checkpoint {
            key_id: key.key_id().to_owned(),
            topic: last.topic.clone(),
            partition: last.partition,
            first_offset: last.last_offset + 1,
            last_offset: last.last_offset,
            count: 0,
            head_hash: last.head_hash,
            merkle_root: merkle::root(&[]),
            previous_checkpoint_hash: last.hash(),
            created_at_us: last.created_at_us + 1,
            next_key_id: None,
        }
        .sign(key)
        .unwrap();
        CheckpointRow::from_signed(&signed)
    }

    /// A sample audit event in the Confluent wire format under [`SCHEMA_ID`], and its fields.
    pub fn audit_value(n: u64) -> (Vec<u8>, EventFields) {
        let event = samples::audit(n);
        let schema: Value = serde_json::from_str(schema_text()).unwrap();
        let datum = serde_json::to_value(&event).unwrap();
        let mut bytes = vec![0];
        bytes.extend_from_slice(&SCHEMA_ID.to_be_bytes());
        encode(&schema, &datum, &mut bytes);
        let fields = EventFields::of(&Event::Audit(event));
        (bytes, fields)
    }

    /// Avro binary encoding of `datum` (serde's JSON of the Rust type) under `schema`: the
    /// subset Ledgerline's schemas use (records, enums, maps, nullable unions, strings, longs).
    fn encode(schema: &Value, datum: &Value, out: &mut Vec<u8>) {
        match schema {
            Value::String(primitive) => encode_primitive(primitive, datum, out),
            Value::Array(branches) => {
                let index = branches
                    .iter()
                    .position(|branch| (branch == "null") == datum.is_null())
                    .unwrap();
                encode_long(index as i64, out);
                encode(&branches[index], datum, out);
            }
            Value::Object(definition) => match definition["type"].as_str().unwrap() {
                "record" => {
                    for field in definition["fields"].as_array().unwrap() {
                        let name = field["name"].as_str().unwrap();
                        encode(&field["type"], &datum[name], out);
                    }
                }
                "enum" => {
                    let symbols = definition["symbols"].as_array().unwrap();
                    let index = symbols.iter().position(|symbol| symbol == datum).unwrap();
                    encode_long(index as i64, out);
                }
                "map" => {
                    let entries = datum.as_object().unwrap();
                    if !entries.is_empty() {
                        encode_long(entries.len() as i64, out);
                        for (key, value) in entries {
                            encode_primitive("string", &Value::String(key.clone()), out);
                            encode(&definition["values"], value, out);
                        }
                    }
                    encode_long(0, out);
                }
                primitive => encode_primitive(primitive, datum, out),
            },
            other => panic!("unexpected schema {other}"),
        }
    }

    fn encode_primitive(primitive: &str, datum: &Value, out: &mut Vec<u8>) {
        match primitive {
            "null" => {}
            "string" => {
                let text = datum.as_str().unwrap();
                encode_long(text.len() as i64, out);
                out.extend_from_slice(text.as_bytes());
            }
            "long" | "int" => encode_long(datum.as_i64().unwrap(), out),
            other => panic!("unexpected primitive {other}"),
        }
    }

    fn encode_long(value: i64, out: &mut Vec<u8>) {
        let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
        while zigzag >= 0x80 {
            out.push((zigzag as u8 & 0x7f) | 0x80);
            zigzag >>= 7;
        }
        out.push(zigzag as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{self, Entry};
    use super::*;

    const ENTRIES: &[Entry] = &[
        Entry::Event,
        Entry::Event,
        Entry::Undecodable,
        Entry::Event,
        Entry::Gap(3),
        Entry::Event,
        Entry::Event,
        Entry::Event,
        Entry::Event,
        Entry::Event,
        Entry::Event,
    ];

    /// The archive: checkpoints over entries 0..5 and 5..10, entry 10 unsigned.
    fn archive() -> (
        super::super::checkpoint::ArchiveSigningKey,
        Vec<ArchiveRow>,
        Vec<CheckpointRow>,
    ) {
        let key = test_support::key();
        let (rows, checkpoints) = test_support::partition(&key, 2, ENTRIES, 5);
        assert_eq!(checkpoints.len(), 2);
        (key, rows, checkpoints)
    }

    fn proof_of(rows: &[ArchiveRow], checkpoints: &[CheckpointRow], index: usize) -> Proof {
        let entry = &rows[index];
        let checkpoint = covering_checkpoints(entry, checkpoints).unwrap()[0];
        let segment: Vec<ArchiveRow> = rows
            .iter()
            .filter(|row| {
                row.offset >= checkpoint.first_offset && row.offset <= checkpoint.last_offset
            })
            .cloned()
            .collect();
        build_proof(entry, checkpoint, &segment).unwrap()
    }

    #[test]
    fn every_checkpointed_event_proves_and_checks() {
        let (key, rows, checkpoints) = archive();
        let trusted = test_support::trusted(&key);
        let mut proved = 0;
        for (index, row) in rows.iter().enumerate() {
            if row.kind != KIND_EVENT || index >= 10 {
                continue;
            }
            let proof = proof_of(&rows, &checkpoints, index);
            let text = to_json(&proof);
            assert_eq!(from_json(&text).unwrap(), proof);
            let summary = check(&from_json(&text).unwrap(), &trusted).unwrap();
            assert_eq!(summary.event_id, row.event_id);
            assert_eq!(summary.offset, row.offset);
            assert_eq!(summary.partition, 2);
            assert_eq!(summary.key_id, key.key_id());
            assert!(summary.checkpoint_first_offset <= row.offset);
            assert!(row.offset <= summary.checkpoint_last_offset);
            assert_eq!(summary.fields.actor_id, row.actor_id);
            proved += 1;
        }
        assert_eq!(proved, 8);
    }

    #[test]
    fn an_entry_after_the_last_checkpoint_has_no_proof_yet() {
        let (_, rows, checkpoints) = archive();
        let last = rows.last().unwrap();
        let error = covering_checkpoints(last, &checkpoints).unwrap_err();
        assert!(
            matches!(
                &error,
                ProofError::NotYetCheckpointed { offset, checkpointed_through: Some(through), .. }
                    if *offset == last.offset && *through == checkpoints[1].last_offset
            ),
            "{error}"
        );
        assert!(error
            .to_string()
            .contains("no proof exists until the next checkpoint"));
        let error = covering_checkpoints(&rows[0], &[]).unwrap_err();
        assert!(
            error.to_string().contains("has no checkpoint yet"),
            "{error}"
        );
    }

    #[test]
    fn one_entry_per_event_id() {
        let (_, rows, _) = archive();
        let id = rows[0].event_id.clone();
        assert_eq!(
            single_entry(&id, vec![rows[0].clone(), rows[0].clone()]).unwrap(),
            rows[0]
        );
        assert!(matches!(
            single_entry(&id, Vec::new()),
            Err(ProofError::NotFound { .. })
        ));
        let mut twin = rows[1].clone();
        twin.event_id = id.clone();
        let error = single_entry(&id, vec![rows[0].clone(), twin]).unwrap_err();
        assert!(matches!(&error, ProofError::Ambiguous { entries, .. } if entries.len() == 2));
    }

    #[test]
    fn a_broken_archive_yields_no_proof() {
        let (_, rows, checkpoints) = archive();
        let entry = &rows[1];
        let segment: Vec<ArchiveRow> = rows[..5].to_vec();

        let mut changed_field = entry.clone();
        changed_field.actor_ip = "10.0.0.1".to_owned();
        let mut segment_with_changed = segment.clone();
        segment_with_changed[1] = changed_field.clone();
        let error = build_proof(&changed_field, &checkpoints[0], &segment_with_changed);
        assert!(matches!(error, Err(ProofError::Invalid(_))), "{error:?}");

        let error = build_proof(entry, &checkpoints[0], &segment[..4]).unwrap_err();
        assert!(error.to_string().contains("Merkle root"), "{error}");
    }

    #[test]
    fn an_untrusted_key_or_a_foreign_schema_fails() {
        let (key, rows, checkpoints) = archive();
        let proof = proof_of(&rows, &checkpoints, 0);
        let stranger = test_support::trusted(&test_support::key());
        assert!(matches!(
            check(&proof, &stranger),
            Err(ProofError::Signature(VerifyError::UnknownKey { .. }))
        ));

        // The same schema, reformatted: it decodes the same, but the build does not vouch for
        // it, so it is refused rather than trusted.
        let mut proof = proof;
        let schema: serde_json::Value = serde_json::from_str(&proof.writer_schema).unwrap();
        proof.writer_schema = schema.to_string();
        let error = check(&proof, &test_support::trusted(&key)).unwrap_err();
        assert!(error.to_string().contains("writer_schema"), "{error}");
    }

    /// Bytes of the file, changed two ways (bit 0, and for `a`-`f` bit 5: the case of a hex
    /// digit), must make reading or checking fail. Every 3rd byte is changed (so every field
    /// and every run of digits is hit), and inside the long `writer_schema` line every 21st,
    /// since one byte-equality check covers it all: unoptimised test builds verify an Ed25519
    /// signature in about 20 ms.
    #[test]
    fn any_one_byte_edit_fails() {
        let (key, rows, checkpoints) = archive();
        let trusted = test_support::trusted(&key);
        // The last entry of the second segment (head_hash), and one with a longer path.
        for index in [9, 6] {
            let text = to_json(&proof_of(&rows, &checkpoints, index));
            assert!(check(&from_json(&text).unwrap(), &trusted).is_ok());
            let schema_line_start = text.find("  \"writer_schema\"").unwrap();
            let schema_line_end = schema_line_start + text[schema_line_start..].find('\n').unwrap();
            let bytes = text.as_bytes();
            let mut edits = 0;
            for position in 0..bytes.len() {
                let in_schema = (schema_line_start..schema_line_end).contains(&position);
                if position % if in_schema { 21 } else { 3 } != 0 {
                    continue;
                }
                let flips: &[u8] = if matches!(bytes[position].to_ascii_lowercase(), b'a'..=b'f') {
                    &[0x01, 0x20]
                } else {
                    &[0x01]
                };
                for flip in flips {
                    let mut edited = bytes.to_vec();
                    edited[position] ^= flip;
                    let edited = String::from_utf8(edited).unwrap();
                    let outcome = from_json(&edited).and_then(|proof| check(&proof, &trusted));
                    assert!(
                        outcome.is_err(),
                        "byte {position} ^ {flip:#x} ({:?} in {:?}) still checks",
                        bytes[position] as char,
                        text.lines()
                            .nth(first_different_line(&edited, &text) - 1)
                            .unwrap_or_default()
                    );
                    edits += 1;
                }
            }
            assert!(edits > 1_000, "{edits}");
        }
    }

    #[test]
    fn the_layout_is_exact() {
        let (_, rows, checkpoints) = archive();
        let text = to_json(&proof_of(&rows, &checkpoints, 0));
        assert!(text.ends_with("}\n"));
        let error = from_json(text.trim_end()).unwrap_err();
        assert!(matches!(error, ProofError::Parse { .. }), "{error}");
        let reindented = text.replacen("  \"entry\"", "\t\"entry\"", 1);
        assert!(matches!(
            from_json(&reindented),
            Err(ProofError::Parse { line: 3, .. })
        ));
        let extra = text.replacen('{', "{\n  \"note\": \"x\",", 1);
        assert!(from_json(&extra).unwrap_err().to_string().contains("note"));
    }
}
