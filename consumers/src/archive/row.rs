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
        Self::from_event(event.clone())
    }

    /// [`Self::of`], moving the strings out of an event that is not needed afterwards.
    pub fn from_event(event: Event) -> Self {
        let (envelope, audit) = match event {
            Event::Audit(audit) => {
                let ledgerline_schemas::event::AuditEvent {
                    envelope,
                    actor,
                    action,
                    target,
                    outcome,
                    reason,
                    details,
                } = audit;
                (
                    envelope,
                    Some((actor, action, target, outcome, reason, details)),
                )
            }
            Event::Job(job) => (job.envelope, None),
            Event::Connection(connection) => (connection.envelope, None),
            Event::System(system) => (system.envelope, None),
            Event::Session(session) => (session.envelope, None),
        };
        // Attributes are a sorted map: the arrays come out sorted by key.
        let (attr_keys, attr_values) = envelope.attributes.into_iter().unzip();
        let mut fields = Self {
            event_id: envelope.event_id.hyphenated().to_string(),
            occurred_at_us: envelope.occurred_at,
            name: envelope.name,
            level: envelope.level.as_str().to_owned(),
            service: envelope.service,
            service_version: envelope.service_version,
            host: envelope.host,
            message: envelope.message,
            trace_id: envelope.trace_id,
            span_id: envelope.span_id,
            request_id: envelope.request_id,
            attr_keys,
            attr_values,
            ..Self::default()
        };
        if let Some((actor, action, target, outcome, reason, details)) = audit {
            fields.actor_id = actor.id;
            fields.actor_kind = actor.kind;
            fields.actor_ip = actor.ip;
            fields.actor_user_agent = actor.user_agent;
            fields.action = action;
            (fields.target_kind, fields.target_id) = match target {
                Some(target) => (Some(target.kind), Some(target.id)),
                None => (None, None),
            };
            fields.outcome = outcome.as_str().to_owned();
            fields.reason = reason;
            fields.details = details;
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

/// 64 hex digits (either case) as 32 bytes. Hand-written: `verify` decodes two per entry, and
/// the `hex` crate's general decoder cost as much as the entry's SHA-256.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            b'A'..=b'F' => Some(digit - b'A' + 10),
            _ => None,
        }
    }
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(bytes)
}

/// 32 bytes as 64 lower-case hex digits; the archiver encodes two per entry.
pub fn hex32_string(bytes: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
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
    fn hex_round_trips_and_refuses_what_is_not_32_bytes_of_hex() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let text = hex32_string(&bytes);
        assert_eq!(text, hex::encode(bytes));
        assert_eq!(hex32(&text), Some(bytes));
        assert_eq!(hex32(&text.to_uppercase()), Some(bytes));
        assert_eq!(hex32(&text[1..]), None);
        assert_eq!(hex32(&format!("{}g", &text[1..])), None);
        assert_eq!(hex32(&format!("{text}00")), None);
    }

    #[test]
    fn fields_moved_out_of_an_event_equal_those_copied() {
        for n in 0..5 {
            let event = samples::event(Category::Audit, n);
            assert_eq!(
                EventFields::from_event(event.clone()),
                EventFields::of(&event)
            );
        }
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
