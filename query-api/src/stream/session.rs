//! One open stream: the resume (history from ClickHouse, then Kafka), the join with the
//! live fan-out, and the live loop (events, lag notices, heartbeats, filter changes, limits).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::SinkExt as _;
use ledgerline_consumers::projector::queries::{Cursor, EventQuery};
use ledgerline_schemas::Category;
use tokio::sync::mpsc;

use super::cursor::{self, HistoryPosition, Positions, StreamCursor};
use super::filter::StreamFilter;
use super::hub::{Item, Subscriber};
use super::messages;
use super::replay::{self, Read, Replay};
use super::StreamService;
use crate::audit_trail::AuditRead;
use crate::auth::Role;

/// Where a stream starts.
#[derive(Debug, Clone)]
pub enum Since {
    /// The live tail.
    Live,
    Cursor(StreamCursor),
    /// Stored events from this time (microseconds), then live.
    Time(i64),
}

/// Who is streaming, for the audit trail and the limits.
#[derive(Debug, Clone)]
pub struct Client {
    pub key_id: String,
    pub role: Role,
    pub ip: String,
    pub user_agent: Option<String>,
}

/// Close codes: the standard ones where they fit, 44xx (HTTP's 4xx plus 4000) for the rest.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    pub const IDLE: u16 = 4408;
    pub const TOO_SLOW: u16 = 4410;
    pub const HISTORY_TOO_LARGE: u16 = 4413;
}

/// Why a stream ends.
#[derive(Debug)]
enum End {
    /// The client closed, or the connection broke: nothing more can be said.
    Gone,
    /// We close: an `error` message, then a close frame with `code` and `reason` (the error
    /// code).
    Close {
        code: u16,
        reason: &'static str,
        message: String,
    },
}

impl End {
    fn close(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        End::Close {
            code,
            reason,
            message: message.into(),
        }
    }

    /// ClickHouse failed a history replay.
    fn history_unavailable(error: &dyn std::error::Error) -> Self {
        End::close(
            close::INTERNAL,
            "history_unavailable",
            format!(
                "stored events cannot be read: {}",
                ledgerline_service::errors::error_chain(error)
            ),
        )
    }

    /// The broker failed a resume; `doing` says at what.
    fn kafka_unavailable(doing: &str, error: &dyn std::error::Error) -> Self {
        End::close(
            close::INTERNAL,
            "kafka_unavailable",
            format!(
                "{doing}: {}",
                ledgerline_service::errors::error_chain(error)
            ),
        )
    }
}

/// Resumes wait at most this long for records that should be there before giving up.
const STALL_LIMIT: Duration = Duration::from_secs(30);
/// Rounds of "read up to where the fan-out is now" before joining it regardless.
const MAX_CHASE_ROUNDS: usize = 5;
/// Rows per ClickHouse page of a history replay.
const HISTORY_PAGE: u64 = 1_000;
/// Kafka timestamps trail `occurred_at` by the time an event takes to be published; a
/// `since=<time>` replay starts reading Kafka this much before `since` to be sure.
const PUBLISH_MARGIN_MS: i64 = 60_000;
/// Messages written before one flush.
const FLUSH_EVERY: usize = 128;

/// Runs one stream until it ends, then closes it.
pub async fn run(
    service: Arc<StreamService>,
    socket: WebSocket,
    client: Client,
    filter: StreamFilter,
    since: Since,
) {
    let connected = metrics::gauge!("ledgerline_stream_clients");
    connected.increment(1.0);
    let mut session = Session {
        service: Arc::clone(&service),
        socket,
        client,
        filter: Arc::new(filter),
        subscription: None,
        budget: Budget::new(),
    };
    let shutdown = service.shutdown.clone();
    let down = service.down.clone();
    let end = tokio::select! {
        end = session.stream(since) => end,
        () = shutdown.cancelled() => End::close(close::GOING_AWAY, "shutting_down", "the server is shutting down"),
        () = down.cancelled() => End::close(
            close::INTERNAL,
            "fanout_down",
            "this server's fan-out consumer stopped; reconnect (to another replica) with since=<the last cursor>",
        ),
    };
    session.finish(end).await;
    connected.decrement(1.0);
}

struct Session {
    service: Arc<StreamService>,
    socket: WebSocket,
    client: Client,
    filter: Arc<StreamFilter>,
    subscription: Option<Subscription>,
    budget: Budget,
}

/// Client messages allowed: a burst, then a steady rate. Each filter change takes the hub's
/// lock and may publish an audit-trail event, so a client cannot send them without bound.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    last: Instant,
}

impl Budget {
    const BURST: f64 = 20.0;
    const PER_SECOND: f64 = 5.0;

    fn new() -> Self {
        Self {
            tokens: Self::BURST,
            last: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * Self::PER_SECOND;
        self.tokens = (self.tokens + earned).min(Self::BURST);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A registration with the hub, removed however the session ends.
struct Subscription {
    service: Arc<StreamService>,
    subscriber: Arc<Subscriber>,
    filter: Arc<StreamFilter>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.service.hub.unsubscribe(&self.subscriber, &self.filter);
    }
}

/// What the live loop needs from the resume that preceded it.
struct Joined {
    rx: mpsc::Receiver<Item>,
    /// Live events below these positions were already sent by the resume.
    sent_up_to: Option<Positions>,
    /// Ids of stored events a `since=<time>` replay sent: a copy of one at another offset is
    /// not sent twice.
    replayed: HashSet<uuid::Uuid>,
    cursor: Arc<str>,
}

impl Session {
    async fn stream(&mut self, since: Since) -> End {
        let joined = match since {
            Since::Live => {
                let (rx, at) = self.subscribe();
                let cursor: Arc<str> = Arc::from(cursor::encode_live(&at));
                if let Err(end) = self
                    .send(messages::subscribed(&self.filter.given, &cursor))
                    .await
                {
                    return end;
                }
                Ok(Joined {
                    rx,
                    sent_up_to: None,
                    replayed: HashSet::new(),
                    cursor,
                })
            }
            Since::Cursor(StreamCursor {
                positions,
                history: None,
            }) => {
                self.resume_from_kafka(positions, None, HashSet::new())
                    .await
            }
            Since::Cursor(StreamCursor {
                positions,
                history: Some(history),
            }) => self.replay_history(history, Some(positions)).await,
            Since::Time(since_us) => {
                self.replay_history(
                    HistoryPosition {
                        since_us,
                        after: None,
                    },
                    None,
                )
                .await
            }
        };
        match joined {
            Ok(joined) => self.live(joined).await,
            Err(end) => end,
        }
    }

    fn subscribe(&mut self) -> (mpsc::Receiver<Item>, Positions) {
        let (subscriber, rx, at) = self.service.hub.subscribe(Arc::clone(&self.filter));
        self.subscription = Some(Subscription {
            service: Arc::clone(&self.service),
            subscriber,
            filter: Arc::clone(&self.filter),
        });
        (rx, at)
    }

    /// Stored events from `history.since_us` out of ClickHouse, then [`Self::resume_from_kafka`] from
    /// where the stored ones end.
    async fn replay_history(
        &mut self,
        history: HistoryPosition,
        handover: Option<Positions>,
    ) -> Result<Joined, End> {
        let service = Arc::clone(&self.service);
        let permit = service.resumes.acquire().await;
        let since_us = history.since_us;
        let handover = match handover {
            Some(positions) => positions,
            None => handover_positions(&service, since_us).await?,
        };
        let query = EventQuery {
            since_us,
            until_us: i64::MAX,
            min_level: self.filter.min_level,
            conditions: self.filter.conditions.clone(),
            hidden: self.filter.hidden.clone(),
        };
        // History cursors are checked too: one could be forged to skip the check.
        {
            let count = service
                .events
                .count(&query)
                .await
                .map_err(|error| End::history_unavailable(&error))?;
            let max = service.config.max_history_events;
            if count > max {
                return Err(End::close(
                    close::HISTORY_TOO_LARGE,
                    "history_too_large",
                    format!(
                        "{count} stored events match since that time, more than the stream replays ({max}); \
                         page through them with /v1/events, or resume from a later time"
                    ),
                ));
            }
        }
        // Session events are never stored: they come from Kafka only.
        let bounds: Vec<(String, i32, i64)> = handover
            .iter()
            .filter(|((category, _), _)| *category != Category::Session)
            .map(|(&(category, partition), &offset)| {
                (category.topic_name().to_owned(), partition, offset)
            })
            .collect();
        let mut after = history.after.map(|(at, id)| Cursor {
            occurred_at_us: at,
            event_id: id.hyphenated().to_string(),
        });
        let mut replayed = HashSet::new();
        loop {
            let page = service
                .events
                .replay(&query, &bounds, after.as_ref(), HISTORY_PAGE)
                .await
                .map_err(|error| End::history_unavailable(&error))?;
            let full = page.len() as u64 == HISTORY_PAGE;
            for event in &page {
                let envelope = event.envelope();
                // The in-memory filter as well: it is the same, and a live filter decides.
                if !self.filter.matches(event) {
                    continue;
                }
                let position = HistoryPosition {
                    since_us,
                    after: Some((envelope.occurred_at, envelope.event_id)),
                };
                let cursor = cursor::encode_history(&position, &handover);
                self.feed(messages::event(&cursor, event)).await?;
                replayed.insert(envelope.event_id);
            }
            self.flush().await?;
            match page.last() {
                Some(last) if full => {
                    after = Some(Cursor {
                        occurred_at_us: last.envelope().occurred_at,
                        event_id: last.envelope().event_id.hyphenated().to_string(),
                    });
                }
                _ => break,
            }
        }
        drop(permit);
        self.resume_from_kafka(handover, Some(since_us), replayed)
            .await
    }

    /// Events from `start` straight from Kafka, up to where the fan-out is, then joined with
    /// it: the live events queued from the join on, less those the replay already sent.
    async fn resume_from_kafka(
        &mut self,
        mut start: Positions,
        floor_us: Option<i64>,
        replayed: HashSet<uuid::Uuid>,
    ) -> Result<Joined, End> {
        let service = Arc::clone(&self.service);
        let _permit = service.resumes.acquire().await;
        // Only the partitions the fan-out reads: a cursor naming others (a deleted topic, or a
        // forged cursor) must not send the replay after them. Those it does not name appeared
        // after it: all of them is new.
        let known = service.hub.positions();
        start.retain(|key, _| known.contains_key(key));
        let missing: Vec<(Category, i32)> = known
            .keys()
            .filter(|key| !start.contains_key(key))
            .copied()
            .collect();
        if !missing.is_empty() {
            let marks = replay::watermarks(&service.metadata, missing)
                .await
                .map_err(|error| {
                    End::kafka_unavailable("the backlog cannot be read from the broker", &error)
                })?;
            for (key, (low, _)) in marks {
                start.insert(key, low);
            }
        }
        let (mut replay, gaps) = Replay::open(
            &service.kafka,
            &service.metadata,
            Arc::clone(&service.codec),
            service.max_event_bytes,
            start,
        )
        .await
        .map_err(|error| {
            End::kafka_unavailable("the backlog cannot be read from the broker", &error)
        })?;
        let result = self
            .replay_and_join(&mut replay, gaps, floor_us, replayed)
            .await;
        replay.close().await;
        result
    }

    async fn replay_and_join(
        &mut self,
        replay: &mut Replay,
        gaps: Vec<replay::Gap>,
        floor_us: Option<i64>,
        replayed: HashSet<uuid::Uuid>,
    ) -> Result<Joined, End> {
        if !gaps.is_empty() {
            let cursor = cursor::encode_live(&replay.positions);
            self.send(messages::gap(&gaps, &cursor)).await?;
        }
        let backlog = replay.behind(&self.service.hub.positions());
        let max = self.service.config.max_resume_records;
        if backlog > i64::try_from(max).unwrap_or(i64::MAX) {
            return Err(End::close(
                close::HISTORY_TOO_LARGE,
                "backlog_too_large",
                format!(
                    "{backlog} records were published since that position, more than a resume reads ({max}); \
                     read them with /v1/events, or resume from a later time"
                ),
            ));
        }
        // Catch up with the fan-out without holding live events for it...
        for _ in 0..MAX_CHASE_ROUNDS {
            let target = self.service.hub.positions();
            if replay.behind(&target) <= (self.service.config.queue_events / 2) as i64 {
                break;
            }
            self.read_until(replay, &target, floor_us, &replayed)
                .await?;
        }
        // ...then join it, and read the little that came in between.
        let (rx, joined_at) = self.subscribe();
        self.read_until(replay, &joined_at, floor_us, &replayed)
            .await?;
        let sent_up_to = replay.positions.clone();
        let cursor: Arc<str> = Arc::from(cursor::encode_live(&sent_up_to));
        self.send(messages::subscribed(&self.filter.given, &cursor))
            .await?;
        Ok(Joined {
            rx,
            sent_up_to: Some(sent_up_to),
            replayed,
            cursor,
        })
    }

    async fn read_until(
        &mut self,
        replay: &mut Replay,
        target: &Positions,
        floor_us: Option<i64>,
        replayed: &HashSet<uuid::Uuid>,
    ) -> Result<(), End> {
        let mut progress = Instant::now();
        let mut unflushed = 0;
        while !replay.reached(target) {
            let read = replay
                .next(Duration::from_millis(250))
                .await
                .map_err(|error| {
                    End::kafka_unavailable("the backlog cannot be read from the broker", &error)
                })?;
            match read {
                Read::Event { event, .. } => {
                    progress = Instant::now();
                    let envelope = event.envelope();
                    if floor_us.is_some_and(|floor| envelope.occurred_at < floor)
                        || replayed.contains(&envelope.event_id)
                        || !self.filter.matches(&event)
                    {
                        continue;
                    }
                    let cursor = cursor::encode_live(&replay.positions);
                    self.feed(messages::event(&cursor, &event)).await?;
                    unflushed += 1;
                    if unflushed >= FLUSH_EVERY {
                        self.flush().await?;
                        unflushed = 0;
                    }
                }
                Read::Idle => {
                    if unflushed > 0 {
                        self.flush().await?;
                        unflushed = 0;
                    }
                    if progress.elapsed() > STALL_LIMIT {
                        return Err(End::close(
                            close::INTERNAL,
                            "kafka_unavailable",
                            format!(
                                "the broker sent none of the {} records left to resume from for {} s",
                                replay.behind(target),
                                STALL_LIMIT.as_secs()
                            ),
                        ));
                    }
                }
            }
        }
        self.flush().await
    }

    /// The live loop.
    async fn live(&mut self, mut joined: Joined) -> End {
        let config = &self.service.config;
        let heartbeat_every = Duration::from_secs(config.heartbeat_secs);
        let idle_after = Duration::from_secs(config.idle_timeout_secs);
        let slow_after = Duration::from_secs(config.slow_client_timeout_secs);
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + heartbeat_every,
            heartbeat_every,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // One timer for the idle limit, moved when the client is heard from (rather than one
        // made on every turn of the loop).
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        // Items taken from the queue that are still to be sent (see `change_filter`).
        let mut held: VecDeque<Item> = VecDeque::new();
        let Some(kicked) = self
            .subscription
            .as_ref()
            .map(|subscription| subscription.subscriber.kicked.clone())
        else {
            return End::close(close::INTERNAL, "internal", "the stream was not subscribed");
        };
        loop {
            if let Some(item) = held.pop_front() {
                match tokio::time::timeout(slow_after, self.deliver(item, &mut joined)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(end)) => return end,
                    Err(_) => return too_slow(slow_after),
                }
                continue;
            }
            tokio::select! {
                biased;
                () = kicked.cancelled() => return too_slow(slow_after),
                item = joined.rx.recv() => {
                    let Some(item) = item else {
                        return End::close(close::INTERNAL, "internal", "the fan-out dropped this stream");
                    };
                    // A client that takes nothing for the slow-client limit is as slow as one
                    // that keeps losing events: the hub's sweep kicks it, which ends the
                    // write (no timer per write: there are 500,000 a second at full load).
                    let Some(subscriber) = self.subscription.as_ref().map(|s| Arc::clone(&s.subscriber)) else {
                        return End::close(close::INTERNAL, "internal", "the stream was not subscribed");
                    };
                    subscriber.writing(&self.service.hub, true);
                    let delivered = tokio::select! {
                        biased;
                        () = kicked.cancelled() => Err(too_slow(slow_after)),
                        delivered = self.deliver_batch(item, &mut joined, &kicked) => delivered,
                    };
                    subscriber.writing(&self.service.hub, false);
                    if let Err(end) = delivered {
                        return end;
                    }
                }
                frame = self.socket.recv() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    match frame {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::Gone,
                        Some(Ok(Message::Text(text))) => {
                            match tokio::time::timeout(slow_after, self.client_message(&text, &mut joined, &mut held)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(end)) => return end,
                                Err(_) => return too_slow(slow_after),
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            // Answered within the message budget; beyond it, ignored.
                            if self.budget.take() {
                                if let Err(end) = self.send(messages::error("bad_message", "binary messages are not understood; send JSON text")).await {
                                    return end;
                                }
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                _ = heartbeat.tick() => {
                    self.settle_seam(&mut joined);
                    let cursor = self.heartbeat_cursor(&joined);
                    if let Err(end) = self.send(messages::heartbeat(&cursor)).await {
                        return end;
                    }
                    if let Err(end) = self.send_frame(Message::Ping(axum::body::Bytes::new())).await {
                        return end;
                    }
                }
                () = &mut idle => {
                    return End::close(
                        close::IDLE,
                        "idle_timeout",
                        format!("nothing was heard from this client (not even a pong) for {} s", idle_after.as_secs()),
                    );
                }
            }
        }
    }

    /// Forgets what the resume sent once no live event can repeat it any more: the fan-out is
    /// past every position the resume read to and the queue is empty.
    fn settle_seam(&self, joined: &mut Joined) {
        let Some(sent) = &joined.sent_up_to else {
            return;
        };
        let hub = self.service.hub.positions();
        let passed = sent
            .iter()
            .all(|(key, next)| hub.get(key).is_some_and(|at| at >= next));
        if passed && joined.rx.is_empty() {
            joined.sent_up_to = None;
            joined.replayed = HashSet::new();
        }
    }

    /// The cursor a heartbeat carries: where the fan-out is, when everything before it has
    /// been sent to this client; otherwise the last one sent.
    fn heartbeat_cursor(&self, joined: &Joined) -> Arc<str> {
        // Read before looking at the queue: the hub queues a batch's events before it moves
        // its cursor past them, so an empty queue means they were all sent.
        let current = self.service.hub.current_cursor();
        let settled = joined.rx.is_empty()
            && joined.sent_up_to.is_none()
            && self
                .subscription
                .as_ref()
                .is_some_and(|subscription| !subscription.subscriber.has_pending_drops());
        if settled {
            current
        } else {
            Arc::clone(&joined.cursor)
        }
    }

    /// Sends `first` and whatever else is queued already, with one flush.
    async fn deliver_batch(
        &mut self,
        first: Item,
        joined: &mut Joined,
        kicked: &tokio_util::sync::CancellationToken,
    ) -> Result<(), End> {
        let mut item = Some(first);
        let mut sent = 0;
        while let Some(next) = item.take() {
            self.feed_item(next, joined).await?;
            sent += 1;
            if sent >= FLUSH_EVERY || kicked.is_cancelled() {
                break;
            }
            item = joined.rx.try_recv().ok();
        }
        self.flush_raw().await?;
        if joined.rx.is_empty() {
            let unreported = self
                .subscription
                .as_ref()
                .and_then(|subscription| subscription.subscriber.caught_up());
            if let Some((dropped, cursor)) = unreported {
                self.feed_item(Item::Lagged { dropped, cursor }, joined)
                    .await?;
                self.flush_raw().await?;
            }
        }
        Ok(())
    }

    async fn deliver(&mut self, item: Item, joined: &mut Joined) -> Result<(), End> {
        self.feed_item(item, joined).await?;
        self.flush_raw().await
    }

    async fn feed_item(&mut self, item: Item, joined: &mut Joined) -> Result<(), End> {
        match item {
            Item::Event(live) => {
                if let Some(sent) = &joined.sent_up_to {
                    if sent
                        .get(&live.partition)
                        .is_some_and(|next| live.offset < *next)
                    {
                        return Ok(());
                    }
                }
                if !joined.replayed.is_empty() && joined.replayed.contains(&live.event_id) {
                    return Ok(());
                }
                match seam_cursor(joined, &live.cursor) {
                    // The resume read some partitions past the fan-out: the shared cursor
                    // would send the client back over what it has.
                    Some(merged) => {
                        let message = with_cursor(&live.message, &live.cursor, &merged);
                        joined.cursor = Arc::from(merged);
                        self.feed_raw(message).await
                    }
                    None => {
                        joined.cursor = Arc::clone(&live.cursor);
                        self.feed_raw(live.message.clone()).await
                    }
                }
            }
            Item::Lagged { dropped, cursor } => {
                metrics::counter!("ledgerline_stream_lagged_total").increment(1);
                let cursor = seam_cursor(joined, &cursor).map_or(cursor, Arc::from);
                self.feed_raw(messages::lagged(dropped, &cursor)).await
            }
        }
    }

    /// A message from the client: only filter changes are understood.
    async fn client_message(
        &mut self,
        text: &Utf8Bytes,
        joined: &mut Joined,
        held: &mut VecDeque<Item>,
    ) -> Result<(), End> {
        let max = self.service.config.max_message_bytes;
        if text.len() > max {
            return Err(End::close(
                close::TOO_BIG,
                "message_too_large",
                format!(
                    "a message of {} bytes is over the limit of {max} bytes",
                    text.len()
                ),
            ));
        }
        if !self.budget.take() {
            metrics::counter!("ledgerline_stream_refused_total", "reason" => "message_rate")
                .increment(1);
            return self
                .send(messages::error(
                    "rate_limited",
                    &format!(
                        "more than {} messages per second (bursts of {}); this one was ignored",
                        Budget::PER_SECOND,
                        Budget::BURST
                    ),
                ))
                .await;
        }
        let message: serde_json::Value = match serde_json::from_str(text.as_str()) {
            Ok(message) => message,
            Err(error) => {
                return self
                    .send(messages::error(
                        "bad_message",
                        &format!("the message is not JSON: {error}"),
                    ))
                    .await
            }
        };
        match message.get("type").and_then(serde_json::Value::as_str) {
            Some("filter") => {}
            other => {
                let shown = other.map_or_else(
                    || "no `type`".to_owned(),
                    |kind| format!("unknown type `{}`", kind.escape_debug()),
                );
                return self
                    .send(messages::error(
                        "bad_message",
                        &format!("{shown}; the one message understood is {{\"type\": \"filter\", \"filter\": {{...}}}}"),
                    ))
                    .await;
            }
        }
        let empty = serde_json::Value::Object(serde_json::Map::new());
        let filter = match StreamFilter::from_json(
            message.get("filter").unwrap_or(&empty),
            self.client.role,
        ) {
            Ok(filter) => filter,
            Err(error) => {
                return self
                    .send(messages::error("bad_filter", &error.message))
                    .await
            }
        };
        // Recorded before it applies, like every audit read.
        if let Err(error) = record_audit_watch(&self.service, &self.client, &filter, None).await {
            return self
                .send(messages::error("audit_trail_unavailable", &error))
                .await;
        }
        self.change_filter(filter, joined, held).await
    }

    /// Moves the subscription to `filter`: events the fan-out handled before the change are
    /// sent as the old filter chose them, the acknowledgement follows, then the new filter's.
    async fn change_filter(
        &mut self,
        filter: StreamFilter,
        joined: &mut Joined,
        held: &mut VecDeque<Item>,
    ) -> Result<(), End> {
        let Some(subscription) = self.subscription.as_mut() else {
            return Ok(());
        };
        let new = Arc::new(filter);
        let at = self.service.hub.change(
            &subscription.subscriber,
            &subscription.filter,
            Arc::clone(&new),
        );
        subscription.filter = Arc::clone(&new);
        self.filter = new;
        // Held items are older than anything queued.
        let mut before = Vec::new();
        while let Some(item) = held.pop_front() {
            before.push(item);
        }
        while let Ok(item) = joined.rx.try_recv() {
            let after_change = match &item {
                Item::Event(live) => at
                    .get(&live.partition)
                    .is_none_or(|next| live.offset >= *next),
                Item::Lagged { .. } => false,
            };
            if after_change {
                held.push_back(item);
                break;
            }
            before.push(item);
        }
        for item in before {
            self.feed_item(item, joined).await?;
        }
        // Past a resume's seam, what the resume sent counts as handled under the old filter.
        let mut at = at;
        if let Some(sent) = &joined.sent_up_to {
            merge_max(&mut at, sent);
        }
        let cursor = cursor::encode_live(&at);
        self.send(messages::subscribed(&self.filter.given, &cursor))
            .await
    }

    /// How long one write may wait for the client's socket: a client that takes nothing
    /// that long is as slow as one that keeps losing events.
    fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.service.config.slow_client_timeout_secs)
    }

    async fn feed(&mut self, message: Utf8Bytes) -> Result<(), End> {
        let limit = self.write_timeout();
        tokio::time::timeout(limit, self.feed_raw(message))
            .await
            .unwrap_or_else(|_| Err(too_slow(limit)))
    }

    async fn flush(&mut self) -> Result<(), End> {
        let limit = self.write_timeout();
        tokio::time::timeout(limit, self.flush_raw())
            .await
            .unwrap_or_else(|_| Err(too_slow(limit)))
    }

    /// [`Self::feed`] without its own timeout, for the live loop, which bounds each of its
    /// steps as a whole (a timer per message would cost more than the message at 500,000 a
    /// second).
    async fn feed_raw(&mut self, message: Utf8Bytes) -> Result<(), End> {
        metrics::counter!("ledgerline_stream_messages_sent_total").increment(1);
        self.socket
            .feed(Message::Text(message))
            .await
            .map_err(|_| End::Gone)
    }

    async fn flush_raw(&mut self) -> Result<(), End> {
        self.socket.flush().await.map_err(|_| End::Gone)
    }

    async fn send(&mut self, message: Utf8Bytes) -> Result<(), End> {
        metrics::counter!("ledgerline_stream_messages_sent_total").increment(1);
        self.send_frame(Message::Text(message)).await
    }

    async fn send_frame(&mut self, frame: Message) -> Result<(), End> {
        let limit = self.write_timeout();
        match tokio::time::timeout(limit, self.socket.send(frame)).await {
            Ok(result) => result.map_err(|_| End::Gone),
            Err(_) => Err(too_slow(limit)),
        }
    }

    async fn finish(mut self, end: End) {
        let reason = match end {
            End::Gone => "client_closed",
            End::Close {
                code,
                reason,
                message,
            } => {
                tracing::debug!(key_id = %self.client.key_id, code, reason, %message, "closing a stream");
                // The closing handshake: the error, our close frame, then the client's close
                // frame, read so that the connection ends cleanly (dropping it with the
                // client's pongs unread would reset it, losing the frames sent). A client that
                // stopped reading may never take them: bounded, longer for a slow one, which
                // is still reading its backlog.
                let wait = if code == close::TOO_SLOW {
                    Duration::from_secs(10)
                } else {
                    Duration::from_secs(2)
                };
                let _ = tokio::time::timeout(wait, async {
                    let _ = self
                        .socket
                        .send(Message::Text(messages::error(reason, &message)))
                        .await;
                    let _ = self
                        .socket
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: Utf8Bytes::from(reason),
                        })))
                        .await;
                    while let Some(Ok(frame)) = self.socket.recv().await {
                        if matches!(frame, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
                reason
            }
        };
        metrics::counter!("ledgerline_stream_disconnects_total", "reason" => reason).increment(1);
        drop(self.subscription.take());
    }
}

/// Where a `since=<time>` replay hands over from ClickHouse to Kafka, per partition: where
/// the stored events end, or the first record published from shortly before `since`,
/// whichever is later (earlier records hold earlier events, which the replay does not
/// want); for session events, which are not stored, the latter.
async fn handover_positions(service: &StreamService, since_us: i64) -> Result<Positions, End> {
    let partitions: Vec<(Category, i32)> = service.hub.positions().keys().copied().collect();
    let stored = service
        .events
        .stored_positions()
        .await
        .map_err(|error| End::history_unavailable(&error))?;
    let from_time = replay::offsets_for_time(
        &service.metadata,
        partitions,
        since_us
            .div_euclid(1_000)
            .saturating_sub(PUBLISH_MARGIN_MS)
            .max(0),
    )
    .await
    .map_err(|error| End::kafka_unavailable("the broker cannot be asked for offsets", &error))?;
    let mut positions = from_time;
    for (topic, partition, next) in stored {
        if let Some(category) = Category::from_topic(&topic) {
            if let Some(position) = positions.get_mut(&(category, partition)) {
                *position = (*position).max(next);
            }
        }
    }
    Ok(positions)
}

/// The per-partition maximum of both.
fn merge_max(into: &mut Positions, other: &Positions) {
    for (key, offset) in other {
        let at = into.entry(*key).or_insert(*offset);
        *at = (*at).max(*offset);
    }
}

/// While a resume's seam is open: `cursor` raised to what the resume sent, when that moves it.
fn seam_cursor(joined: &Joined, cursor: &str) -> Option<String> {
    let sent = joined.sent_up_to.as_ref()?;
    let mut positions = cursor::decode(cursor).ok()?.positions;
    let before = positions.clone();
    merge_max(&mut positions, sent);
    (positions != before).then(|| cursor::encode_live(&positions))
}

/// `message` (an `event` message built by [`messages::event`]) with `cursor` in place of `old`.
fn with_cursor(message: &Utf8Bytes, old: &str, cursor: &str) -> Utf8Bytes {
    let text = message.as_str();
    let prefix = "{\"type\":\"event\",\"cursor\":\"";
    match text
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix(old))
    {
        Some(rest) => Utf8Bytes::from(format!("{prefix}{cursor}{rest}")),
        None => message.clone(),
    }
}

fn too_slow(after: Duration) -> End {
    End::close(
        close::TOO_SLOW,
        "too_slow",
        format!(
            "this client read more slowly than events arrived for over {} s, losing events or taking none; \
             reconnect with since=<the cursor of the last message received>",
            after.as_secs()
        ),
    )
}

/// Records an auditor's watch of audit events; other filters and roles record nothing.
pub async fn record_audit_watch(
    service: &StreamService,
    client: &Client,
    filter: &StreamFilter,
    since: Option<&str>,
) -> Result<(), String> {
    if !client.role.can_review_audit() || !filter.may_deliver_audit() {
        return Ok(());
    }
    let read = AuditRead {
        key_id: client.key_id.clone(),
        role: client.role.as_str().to_owned(),
        ip: client.ip.clone(),
        user_agent: client.user_agent.clone(),
        route: "/v1/stream".to_owned(),
        filter: match since {
            Some(since) => serde_json::json!({"filter": filter.given, "since": since}),
            None => serde_json::json!({ "filter": filter.given }),
        },
        rows: 0,
        denied: false,
    };
    service.trail.record(read).await.map_err(|error| {
        format!(
            "the watch cannot be recorded in the audit trail: {}",
            error.message
        )
    })
}
