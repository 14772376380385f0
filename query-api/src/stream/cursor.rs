//! Stream cursors: where a client stands, as opaque URL-safe text it sends back as `since=`.
//!
//! A **live** cursor is a Kafka position per partition of the event topics: the next offset
//! to deliver. Every client of one replica sees the fan-out's events in one order, so the
//! position right after an event is the same for every client that received it: the cursor
//! is encoded once per event and shared. Resuming from it delivers every later event of
//! every partition, and none before (see [`super`]).
//!
//! A **history** cursor is handed out while a `since=<time>` replay reads ClickHouse: the
//! replay's time, the last stored event sent (by `(occurred_at_us, event_id)`, the replay's
//! order), and the Kafka positions the replay hands over to, so a resume continues the same
//! replay exactly.
//!
//! Binary, then base64url: version byte, then for a history cursor `since_us`, the last
//! event's `occurred_at_us` and its 16-byte id (all zero before the first), then the count of
//! positions and per position the category's index, the partition and the offset as LEB128.
//! The topics are the five category topics, so a category index names one; 15 partitions
//! take about 120 characters.

use std::collections::BTreeMap;

use base64::Engine as _;
use ledgerline_schemas::Category;

/// Next offset to deliver, per `(category, partition)`.
pub type Positions = BTreeMap<(Category, i32), i64>;

const LIVE: u8 = 1;
const HISTORY: u8 = 2;
/// More partitions than any deployment has; bounds what a hostile cursor can make us allocate.
const MAX_POSITIONS: usize = 10_000;

/// Where a `since=<time>` replay stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPosition {
    /// The replay's `since`, microseconds.
    pub since_us: i64,
    /// The last stored event sent, `None` before the first.
    pub after: Option<(i64, uuid::Uuid)>,
}

/// A decoded cursor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamCursor {
    /// For a history cursor, where the replay hands over to Kafka.
    pub positions: Positions,
    pub history: Option<HistoryPosition>,
}

/// A cursor's text is not one this API issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream cursor: {0}")]
pub struct BadCursor(&'static str);

/// The opaque text of a live cursor.
pub fn encode_live(positions: &Positions) -> String {
    encode_live_with(positions, None)
}

/// The live cursor of `positions` with `(category, partition)` moved to `next`: the cursor
/// right after the event at `next - 1`, without copying the map.
pub fn encode_live_with(positions: &Positions, moved: Option<((Category, i32), i64)>) -> String {
    let mut bytes = Vec::with_capacity(2 + positions.len() * 6);
    bytes.push(LIVE);
    put_positions(&mut bytes, positions, moved);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The opaque text of a history cursor.
pub fn encode_history(history: &HistoryPosition, positions: &Positions) -> String {
    let mut bytes = Vec::with_capacity(34 + positions.len() * 6);
    bytes.push(HISTORY);
    bytes.extend_from_slice(&history.since_us.to_be_bytes());
    let (at, id) = history.after.unwrap_or((0, uuid::Uuid::nil()));
    bytes.extend_from_slice(&at.to_be_bytes());
    bytes.extend_from_slice(id.as_bytes());
    put_positions(&mut bytes, positions, None);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn put_positions(
    bytes: &mut Vec<u8>,
    positions: &Positions,
    moved: Option<((Category, i32), i64)>,
) {
    put_varint(bytes, positions.len() as u64);
    for (&(category, partition), &offset) in positions {
        let offset = match moved {
            Some((key, next)) if key == (category, partition) => next,
            _ => offset,
        };
        bytes.push(category_index(category));
        put_varint(bytes, u64::try_from(partition).unwrap_or(0));
        put_varint(bytes, u64::try_from(offset).unwrap_or(0));
    }
}

/// Decodes a cursor's text.
pub fn decode(text: &str) -> Result<StreamCursor, BadCursor> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| BadCursor("not base64url"))?;
    let mut input = bytes.as_slice();
    let version = take(&mut input, 1)?[0];
    let history = match version {
        LIVE => None,
        HISTORY => {
            let since_us = i64::from_be_bytes(fixed(&mut input)?);
            let at = i64::from_be_bytes(fixed(&mut input)?);
            let id = uuid::Uuid::from_bytes(fixed(&mut input)?);
            Some(HistoryPosition {
                since_us,
                after: (!id.is_nil()).then_some((at, id)),
            })
        }
        _ => return Err(BadCursor("unknown version")),
    };
    let count = usize::try_from(varint(&mut input)?).map_err(|_| BadCursor("too long"))?;
    if count > MAX_POSITIONS {
        return Err(BadCursor("too many partitions"));
    }
    let mut positions = Positions::new();
    for _ in 0..count {
        let index = take(&mut input, 1)?[0];
        let category = *Category::ALL
            .get(usize::from(index))
            .ok_or(BadCursor("unknown topic"))?;
        let partition =
            i32::try_from(varint(&mut input)?).map_err(|_| BadCursor("partition out of range"))?;
        let offset =
            i64::try_from(varint(&mut input)?).map_err(|_| BadCursor("offset out of range"))?;
        positions.insert((category, partition), offset);
    }
    if !input.is_empty() {
        return Err(BadCursor("trailing bytes"));
    }
    Ok(StreamCursor { positions, history })
}

fn category_index(category: Category) -> u8 {
    Category::ALL
        .iter()
        .position(|c| *c == category)
        .and_then(|index| u8::try_from(index).ok())
        .unwrap_or(u8::MAX)
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            bytes.push(byte);
            return;
        }
        bytes.push(byte | 0x80);
    }
}

fn varint(input: &mut &[u8]) -> Result<u64, BadCursor> {
    let mut value = 0_u64;
    for shift in (0..64).step_by(7) {
        let byte = take(input, 1)?[0];
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(BadCursor("number too long"))
}

fn take<'a>(input: &mut &'a [u8], count: usize) -> Result<&'a [u8], BadCursor> {
    if input.len() < count {
        return Err(BadCursor("truncated"));
    }
    let (head, rest) = input.split_at(count);
    *input = rest;
    Ok(head)
}

fn fixed<const N: usize>(input: &mut &[u8]) -> Result<[u8; N], BadCursor> {
    let mut out = [0_u8; N];
    out.copy_from_slice(take(input, N)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn positions() -> Positions {
        let mut positions = Positions::new();
        positions.insert((Category::Job, 0), 0);
        positions.insert((Category::Job, 2), 1_234_567_890_123);
        positions.insert((Category::Session, 1), 300);
        positions
    }

    #[test]
    fn live_and_history_cursors_round_trip() {
        let live = decode(&encode_live(&positions())).unwrap();
        assert_eq!(live.positions, positions());
        assert_eq!(live.history, None);
        let history = HistoryPosition {
            since_us: 1_795_996_800_000_000,
            after: Some((1_795_996_800_000_001, uuid::Uuid::now_v7())),
        };
        let decoded = decode(&encode_history(&history, &positions())).unwrap();
        assert_eq!(decoded.history, Some(history));
        assert_eq!(decoded.positions, positions());
        let first = HistoryPosition {
            since_us: 5,
            after: None,
        };
        assert_eq!(
            decode(&encode_history(&first, &Positions::new()))
                .unwrap()
                .history,
            Some(first)
        );
    }

    #[test]
    fn a_moved_position_is_the_cursor_after_that_event() {
        let text = encode_live_with(&positions(), Some(((Category::Session, 1), 301)));
        let mut expected = positions();
        expected.insert((Category::Session, 1), 301);
        assert_eq!(decode(&text).unwrap().positions, expected);
    }

    #[test]
    fn hostile_text_is_refused_not_panicked_on() {
        for text in [
            "",
            "!!",
            "AA",
            "AQ",
            "Af____8P",
            "BwAA",
            &"A".repeat(10_000),
        ] {
            assert!(decode(text).is_err(), "{text}");
        }
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(encode_live(&positions()))
            .unwrap();
        bytes.push(0);
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(decode(&text), Err(BadCursor("trailing bytes")));
    }
}
