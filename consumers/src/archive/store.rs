//! Reads of `ledgerline_audit`: what the archiver needs to resume a partition's chain, and what
//! `verify`, `prove` and `export` read. Every value is bound as a parameter; the database name
//! is checked as an identifier before it is written into SQL.

use clickhouse::Row;
use serde::Deserialize;

use super::row::{ArchiveRow, CheckpointRow};
use crate::clickhouse::error::query_failed;
use crate::clickhouse::{validate_identifier, Result};

/// The archive's tables in one database, read through one client.
#[derive(Clone)]
pub struct ArchiveStore {
    client: clickhouse::Client,
    database: String,
}

impl std::fmt::Debug for ArchiveStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// A partition's newest chain entry.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct ChainHead {
    pub last_offset: i64,
    pub hash: String,
}

/// One entry's offset and hash, to rebuild the segment not yet checkpointed.
#[derive(Debug, Clone, PartialEq, Eq, Row, Deserialize)]
pub struct EntryHash {
    pub offset: i64,
    pub last_offset: i64,
    pub hash: String,
}

/// A partition that has archived entries.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Row, Deserialize)]
pub struct ArchivedPartition {
    pub topic: String,
    pub partition: i32,
}

/// [`ArchiveRow`]'s columns, in its order, for [`ArchiveStore::chain_entries`]: the event
/// columns after `event_id` are their type's default on `event` rows.
const CHAIN_COLUMNS: &str = "topic, `partition`, `offset`, last_offset, kind, timestamp_ms, key, \
     value, schema_id, reject_reason, reject_error, event_id, \
     if(kind = 'event', defaultValueOfArgumentType(occurred_at_us), occurred_at_us), \
     if(kind = 'event', '', name), if(kind = 'event', '', level), \
     if(kind = 'event', '', service), if(kind = 'event', '', service_version), \
     if(kind = 'event', '', host), if(kind = 'event', '', message), \
     if(kind = 'event', NULL, trace_id), if(kind = 'event', NULL, span_id), \
     if(kind = 'event', NULL, request_id), \
     if(kind = 'event', defaultValueOfArgumentType(attr_keys), attr_keys), \
     if(kind = 'event', defaultValueOfArgumentType(attr_values), attr_values), \
     if(kind = 'event', '', actor_id), if(kind = 'event', '', actor_kind), \
     if(kind = 'event', '', actor_ip), if(kind = 'event', NULL, actor_user_agent), \
     if(kind = 'event', '', action), if(kind = 'event', NULL, target_kind), \
     if(kind = 'event', NULL, target_id), if(kind = 'event', '', outcome), \
     if(kind = 'event', NULL, reason), if(kind = 'event', '', details), \
     prev_hash, hash, archived_at_us";

impl ArchiveStore {
    pub fn new(client: clickhouse::Client, database: &str) -> Result<Self> {
        Ok(Self {
            client,
            database: validate_identifier(database)?.to_owned(),
        })
    }

    pub fn client(&self) -> &clickhouse::Client {
        &self.client
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The entry with the greatest offset; `None` for a partition never archived.
    pub async fn head(&self, topic: &str, partition: i32) -> Result<Option<ChainHead>> {
        self.client
            .query(&format!(
                "SELECT last_offset, hash FROM {}.records WHERE topic = ? AND `partition` = ? \
                 ORDER BY last_offset DESC LIMIT 1",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .fetch_optional()
            .await
            .map_err(query_failed(format!("chain head of {topic}/{partition}")))
    }

    /// The checkpoint with the greatest last offset (the newest when two share it).
    pub async fn last_checkpoint(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Option<CheckpointRow>> {
        self.client
            .query(&format!(
                "SELECT ?fields FROM {}.checkpoints WHERE topic = ? AND `partition` = ? \
                 ORDER BY last_offset DESC, created_at_us DESC LIMIT 1",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .fetch_optional()
            .await
            .map_err(query_failed(format!(
                "last checkpoint of {topic}/{partition}"
            )))
    }

    /// Offsets and hashes of the entries after `after_offset`, in offset order.
    pub async fn hashes_after(
        &self,
        topic: &str,
        partition: i32,
        after_offset: i64,
    ) -> Result<Vec<EntryHash>> {
        self.client
            .query(&format!(
                "SELECT `offset`, last_offset, hash FROM {}.records WHERE topic = ? AND `partition` = ? \
                 AND `offset` > ? ORDER BY `offset`",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .bind(after_offset)
            .fetch_all()
            .await
            .map_err(query_failed(format!("entries of {topic}/{partition}")))
    }

    /// Every partition with archived entries or checkpoints, sorted.
    pub async fn partitions(&self) -> Result<Vec<ArchivedPartition>> {
        self.client
            .query(&format!(
                "SELECT DISTINCT topic, `partition` FROM (\
                 SELECT topic, `partition` FROM {db}.records GROUP BY topic, `partition` \
                 UNION ALL \
                 SELECT topic, `partition` FROM {db}.checkpoints GROUP BY topic, `partition`) \
                 ORDER BY topic, `partition`",
                db = self.database
            ))
            .fetch_all()
            .await
            .map_err(query_failed("archived partitions"))
    }

    /// A partition's checkpoints, by last offset.
    pub async fn checkpoints(&self, topic: &str, partition: i32) -> Result<Vec<CheckpointRow>> {
        self.client
            .query(&format!(
                "SELECT ?fields FROM {}.checkpoints WHERE topic = ? AND `partition` = ? \
                 ORDER BY last_offset, first_offset, created_at_us",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .fetch_all()
            .await
            .map_err(query_failed(format!("checkpoints of {topic}/{partition}")))
    }

    /// A cursor over a partition's entries with `from <= offset <= to`, in offset order (rows
    /// sharing an offset in the order ClickHouse has them).
    pub fn entries(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<clickhouse::query::RowCursor<ArchiveRow>> {
        self.client
            .query(&format!(
                "SELECT ?fields FROM {}.records WHERE topic = ? AND `partition` = ? \
                 AND `offset` >= ? AND `offset` <= ? ORDER BY `offset`",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .bind(from)
            .bind(to)
            .fetch::<ArchiveRow>()
            .map_err(query_failed(format!("entries of {topic}/{partition}")))
    }

    /// [`Self::entries`] for a `verify` that does not decode the values (`Decoder::None`), so
    /// never compares an event's columns with its bytes: those columns of `event` entries come
    /// back empty (ClickHouse sorts and sends empty values instead of them), everything else as
    /// stored, including the event columns of undecodable entries and gaps, which must be empty.
    pub fn chain_entries(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
    ) -> Result<clickhouse::query::RowCursor<ArchiveRow>> {
        self.client
            .query(&format!(
                "SELECT {CHAIN_COLUMNS} FROM {}.records WHERE topic = ? AND `partition` = ? \
                 AND `offset` >= ? AND `offset` <= ? ORDER BY `offset`",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .bind(from)
            .bind(to)
            .fetch::<ArchiveRow>()
            .map_err(query_failed(format!("entries of {topic}/{partition}")))
    }

    /// The smallest stored offset at or after `from`, if any.
    pub async fn first_offset_from(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
    ) -> Result<Option<i64>> {
        let (count, first): (u64, i64) = self
            .client
            .query(&format!(
                "SELECT count(), min(`offset`) FROM {}.records WHERE topic = ? AND `partition` = ? \
                 AND `offset` >= ?",
                self.database
            ))
            .bind(topic)
            .bind(partition)
            .bind(from)
            .fetch_one()
            .await
            .map_err(query_failed(format!("next offset of {topic}/{partition}")))?;
        Ok((count > 0).then_some(first))
    }

    /// [`Self::entries`] (or, with `chain_only`, [`Self::chain_entries`]) read whole.
    pub async fn entries_between(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        to: i64,
        chain_only: bool,
    ) -> Result<Vec<ArchiveRow>> {
        let mut cursor = if chain_only {
            self.chain_entries(topic, partition, from, to)?
        } else {
            self.entries(topic, partition, from, to)?
        };
        let mut rows = Vec::new();
        while let Some(row) = cursor
            .next()
            .await
            .map_err(query_failed(format!("entries of {topic}/{partition}")))?
        {
            rows.push(row);
        }
        Ok(rows)
    }

    /// Every entry whose `event_id` is `event_id` (one, unless the archive was tampered with
    /// or the producer sent the event twice).
    pub async fn entries_of_event(&self, event_id: &str) -> Result<Vec<ArchiveRow>> {
        self.client
            .query(&format!(
                "SELECT ?fields FROM {}.records WHERE event_id = ? \
                 ORDER BY topic, `partition`, `offset`",
                self.database
            ))
            .bind(event_id)
            .fetch_all()
            .await
            .map_err(query_failed(format!("entries of event {event_id}")))
    }
}

#[cfg(test)]
mod tests {
    use clickhouse::Row;

    use super::*;

    /// `chain_entries` reads rows by position: its columns must be `ArchiveRow`'s, in order.
    #[test]
    fn chain_columns_are_the_row_columns_in_order() {
        let mut items = Vec::new();
        let (mut depth, mut item) = (0, String::new());
        for c in CHAIN_COLUMNS.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(std::mem::take(&mut item));
                    continue;
                }
                _ => {}
            }
            item.push(c);
        }
        items.push(item);
        let columns: Vec<String> = items
            .iter()
            .map(|item| {
                let item = item.trim().replace('`', "");
                match item.strip_prefix("if(kind = 'event', ") {
                    Some(rest) => rest
                        .rsplit(", ")
                        .next()
                        .unwrap_or_default()
                        .trim_end_matches(')')
                        .to_owned(),
                    None => item,
                }
            })
            .collect();
        assert_eq!(columns, ArchiveRow::COLUMN_NAMES);
    }
}
