//! Archive rows: what one chain entry and one checkpoint look like in ClickHouse, and how the
//! event's filterable fields are derived from the decoded event (by the archiver when it writes
//! and by `verify` when it checks them against the stored bytes).

use clickhouse::Row;
use ledgerline_schemas::Event;
use serde::{Deserialize, Serialize};

use super::checkpoint::{Checkpoint, SignedCheckpoint, SIGNATURE_LENGTH};

/// `records.kind` of a decoded event.
pub const KIND_EVENT: &str = "event";
/// `records.kind` of a record whose bytes did not decode; `reject_reason` says why.
pub const KIND_UNDECODABLE: &str = "undecodable";
/// `records.kind` of offsets Kafka no longer held when the archiver reached them.
pub const KIND_GAP: &str = "gap";

/// One row of `records`, in the table's column order.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct ArchiveRow {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub last_offset: i64,
    pub kind: String,
    pub timestamp_ms: Option<i64>,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    pub schema_id: Option<u32>,
    pub reject_reason: String,
    pub reject_error: String,
    pub event_id: String,
    pub occurred_at_us: i64,
    pub name: String,
    pub level: String,
    pub service: String,
    pub service_version: String,
    pub host: String,
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub request_id: Option<String>,
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,
    pub actor_id: String,
    pub actor_kind: String,
    pub actor_ip: String,
    pub actor_user_agent: Option<String>,
    pub action: String,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
    pub archived_at_us: i64,
}

/// The event's fields as `records` stores them for filtering: all empty for undecodable
/// records and gaps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFields {
    pub event_id: String,
    pub occurred_at_us: i64,
    pub name: String,
    pub level: String,
    pub service: String,
    pub service_version: String,
    pub host: String,
    pub message: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    pub request_id: Option<String>,
    pub attr_keys: Vec<String>,
    pub attr_values: Vec<String>,
    pub actor_id: String,
    pub actor_kind: String,
    pub actor_ip: String,
    pub actor_user_agent: Option<String>,
    pub action: String,
    pub target_kind: Option<String>,
    pub target_id: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    pub details: String,
}

impl EventFields {
    /// The fields of `event`. Only audit events are archived (the archive reads
    /// `ledgerline.audit`, whose records decode as audit events); any other category keeps
    /// only its envelope here.
    pub fn of(event: &Event) -> Self {
        let envelope = event.envelope();
        let (attr_keys, attr_values) = envelope
            .attributes
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .unzip();
        let mut fields = Self {
            event_id: envelope.event_id.hyphenated().to_string(),
            occurred_at_us: envelope.occurred_at,
            name: envelope.name.clone(),
            level: envelope.level.as_str().to_owned(),
            service: envelope.service.clone(),
            service_version: envelope.service_version.clone(),
            host: envelope.host.clone(),
            message: envelope.message.clone(),
            trace_id: envelope.trace_id.clone(),
            span_id: envelope.span_id.clone(),
            request_id: envelope.request_id.clone(),
            attr_keys,
            attr_values,
            ..Self::default()
        };
        if let Event::Audit(audit) = event {
            fields.actor_id = audit.actor.id.clone();
            fields.actor_kind = audit.actor.kind.clone();
            fields.actor_ip = audit.actor.ip.clone();
            fields.actor_user_agent = audit.actor.user_agent.clone();
            fields.action = audit.action.clone();
            fields.target_kind = audit.target.as_ref().map(|target| target.kind.clone());
            fields.target_id = audit.target.as_ref().map(|target| target.id.clone());
            fields.outcome = audit.outcome.as_str().to_owned();
            fields.reason = audit.reason.clone();
            fields.details = audit.details.clone();
        }
        fields
    }
}

/// Runs `$m!` with the names of every [`EventFields`] field, which are also columns of
/// [`ArchiveRow`]: the one list the copy and the comparison below both use.
macro_rules! with_event_fields {
    ($m:ident) => {
        $m!(
            event_id,
            occurred_at_us,
            name,
            level,
            service,
            service_version,
            host,
            message,
            trace_id,
            span_id,
            request_id,
            attr_keys,
            attr_values,
            actor_id,
            actor_kind,
            actor_ip,
            actor_user_agent,
            action,
            target_kind,
            target_id,
            outcome,
            reason,
            details
        )
    };
}

impl ArchiveRow {
    /// Moves `fields` into the row's columns.
    pub fn set_fields(&mut self, fields: EventFields) {
        macro_rules! set {
            ($($field:ident),*) => { $(self.$field = fields.$field;)* };
        }
        with_event_fields!(set);
    }

    /// The name of the first column whose value differs from `fields` (what the stored bytes
    /// decode to), for `verify`'s report.
    pub fn first_field_difference(&self, fields: &EventFields) -> Option<&'static str> {
        macro_rules! compare {
            ($($field:ident),*) => {
                $(if self.$field != fields.$field { return Some(stringify!($field)); })*
            };
        }
        with_event_fields!(compare);
        None
    }

    /// A row with these coordinates and bytes and every event field empty.
    pub fn empty(topic: &str, partition: i32, offset: i64, kind: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
            last_offset: offset,
            kind: kind.to_owned(),
            timestamp_ms: None,
            key: None,
            value: Vec::new(),
            schema_id: None,
            reject_reason: String::new(),
            reject_error: String::new(),
            event_id: String::new(),
            occurred_at_us: 0,
            name: String::new(),
            level: String::new(),
            service: String::new(),
            service_version: String::new(),
            host: String::new(),
            message: String::new(),
            trace_id: None,
            span_id: None,
            request_id: None,
            attr_keys: Vec::new(),
            attr_values: Vec::new(),
            actor_id: String::new(),
            actor_kind: String::new(),
            actor_ip: String::new(),
            actor_user_agent: None,
            action: String::new(),
            target_kind: None,
            target_id: None,
            outcome: String::new(),
            reason: None,
            details: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
            archived_at_us: 0,
        }
    }

    /// The row's `hash`, decoded; `None` when the column does not hold 64 hex digits.
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        hex32(&self.hash)
    }

    /// The row's `prev_hash`, decoded.
    pub fn prev_hash_bytes(&self) -> Option<[u8; 32]> {
        hex32(&self.prev_hash)
    }

    /// What this entry's hash is, recomputed from its stored coordinates and bytes with
    /// `prev_hash` as the previous entry's hash.
    pub fn recompute_hash(&self, prev_hash: &[u8; 32]) -> [u8; 32] {
        self.recompute_hash_at(prev_hash, self.offset)
    }

    /// [`Self::recompute_hash`] as if the entry sat at `offset` (used to tell a reordered
    /// record from a changed one).
    pub fn recompute_hash_at(&self, prev_hash: &[u8; 32], offset: i64) -> [u8; 32] {
        if self.kind == KIND_GAP {
            super::chain::gap_hash(
                prev_hash,
                &self.topic,
                self.partition,
                offset,
                offset + (self.last_offset - self.offset),
            )
        } else {
            super::chain::record_hash(
                prev_hash,
                &self.topic,
                self.partition,
                offset,
                self.timestamp_ms,
                self.key.as_deref(),
                &self.value,
            )
        }
    }
}

/// One row of `checkpoints`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize, Deserialize)]
pub struct CheckpointRow {
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub count: u64,
    pub head_hash: String,
    pub merkle_root: String,
    pub previous_checkpoint_hash: String,
    pub created_at_us: i64,
    pub key_id: String,
    pub next_key_id: Option<String>,
    pub signature: String,
    pub checkpoint_hash: String,
}

impl CheckpointRow {
    pub fn from_signed(signed: &SignedCheckpoint) -> Self {
        let checkpoint = &signed.checkpoint;
        Self {
            topic: checkpoint.topic.clone(),
            partition: checkpoint.partition,
            first_offset: checkpoint.first_offset,
            last_offset: checkpoint.last_offset,
            count: checkpoint.count,
            head_hash: hex::encode(checkpoint.head_hash),
            merkle_root: hex::encode(checkpoint.merkle_root),
            previous_checkpoint_hash: hex::encode(checkpoint.previous_checkpoint_hash),
            created_at_us: checkpoint.created_at_us,
            key_id: checkpoint.key_id.clone(),
            next_key_id: checkpoint.next_key_id.clone(),
            signature: hex::encode(signed.signature),
            checkpoint_hash: hex::encode(checkpoint.hash()),
        }
    }

    /// The signed checkpoint this row holds; `Err` names the column that is not valid hex of
    /// the right length (which `verify` reports as a changed checkpoint).
    pub fn to_signed(&self) -> Result<SignedCheckpoint, &'static str> {
        let signature = hex::decode(&self.signature)
            .ok()
            .and_then(|bytes| <[u8; SIGNATURE_LENGTH]>::try_from(bytes).ok())
            .ok_or("signature")?;
        Ok(SignedCheckpoint {
            checkpoint: Checkpoint {
                key_id: self.key_id.clone(),
                topic: self.topic.clone(),
                partition: self.partition,
                first_offset: self.first_offset,
                last_offset: self.last_offset,
                count: self.count,
                head_hash: hex32(&self.head_hash).ok_or("head_hash")?,
                merkle_root: hex32(&self.merkle_root).ok_or("merkle_root")?,
                previous_checkpoint_hash: hex32(&self.previous_checkpoint_hash)
                    .ok_or("previous_checkpoint_hash")?,
                created_at_us: self.created_at_us,
                next_key_id: self.next_key_id.clone(),
            },
            signature,
        })
    }
}

/// 64 hex digits as 32 bytes.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use ledgerline_schemas::{samples, Category};

    use super::*;

    #[test]
    fn fields_of_an_audit_event_and_their_first_difference() {
        let event = samples::event(Category::Audit, 7);
        let fields = EventFields::of(&event);
        assert!(!fields.actor_id.is_empty());
        assert!(!fields.outcome.is_empty());
        let mut row = ArchiveRow::empty("ledgerline.audit", 0, 1, KIND_EVENT);
        assert_eq!(row.first_field_difference(&fields), Some("event_id"));
        row.set_fields(fields.clone());
        assert_eq!(row.first_field_difference(&fields), None);
        row.actor_ip = "10.9.9.9".to_owned();
        assert_eq!(row.first_field_difference(&fields), Some("actor_ip"));
    }

    #[test]
    fn checkpoint_rows_round_trip() {
        let key = super::super::checkpoint::generate().unwrap();
        let key = super::super::checkpoint::load_signing_key(&key.secret_file).unwrap();
        let signed = Checkpoint {
            key_id: key.key_id().to_owned(),
            topic: "ledgerline.audit".to_owned(),
            partition: 2,
            first_offset: 0,
            last_offset: 9,
            count: 10,
            head_hash: [1; 32],
            merkle_root: [2; 32],
            previous_checkpoint_hash: super::super::chain::GENESIS,
            created_at_us: 5,
            next_key_id: None,
        }
        .sign(&key)
        .unwrap();
        let row = CheckpointRow::from_signed(&signed);
        assert_eq!(row.to_signed().unwrap(), signed);
        let mut broken = row.clone();
        broken.head_hash.pop();
        assert_eq!(broken.to_signed().unwrap_err(), "head_hash");
    }
}
