//! The fan-out: one broadcast consumer per API process ([`FanoutSink`] on the consumer
//! runtime) hands every event to the [`Hub`], which offers it to every subscription whose
//! filter it passes.
//!
//! - Each event is decoded once (by the runtime) and turned into its whole `event` message
//!   once, cursor included, when at least one filter takes it; every client that gets it
//!   shares those bytes.
//! - Subscriptions with equal filters share one entry: a filter is evaluated once per event,
//!   however many clients use it.
//! - Offering never waits: a client whose queue is full loses the event, which is counted;
//!   it gets one `lagged` message with the count (and the cursor from before the first loss,
//!   to fetch what it lost with `since=`) as soon as its queue has room. The consumer and the
//!   other clients never wait for a slow one.
//! - [`Hub::positions`] is where the fan-out stands, per partition: every event before it was
//!   offered to every subscription there was at the time. A subscription registered under
//!   the same lock learns the positions its live events start from: how a resume joins the
//!   live stream without a gap or a duplicate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use ledgerline_consumers::runtime::{
    self, PartitionBatch, Record, Sink, SinkError, TopicPartition,
};
use ledgerline_schemas::{Category, Event};
use rdkafka::consumer::BaseConsumer;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cursor::{self, Positions};
use super::filter::StreamFilter;

/// One live event as every client receives it.
#[derive(Debug)]
pub struct LiveEvent {
    pub partition: (Category, i32),
    pub offset: i64,
    pub event_id: uuid::Uuid,
    /// The position right after this event.
    pub cursor: Arc<str>,
    /// `{"type":"event","cursor":…,"event":…}`, built once.
    pub message: Utf8Bytes,
}

/// What waits in a client's queue.
#[derive(Debug)]
pub enum Item {
    Event(Arc<LiveEvent>),
    /// Events were dropped since the last item; `cursor` is the position before the first.
    Lagged {
        dropped: u64,
        cursor: Arc<str>,
    },
}

#[derive(Debug, Default)]
struct Drops {
    /// Dropped since the last `lagged` notice was queued.
    pending: u64,
    /// The position before the first of them.
    cursor: Option<Arc<str>>,
    /// When this client started dropping; cleared once its queue empties.
    since: Option<Instant>,
}

/// One open stream, as the hub sees it.
#[derive(Debug)]
pub struct Subscriber {
    pub id: u64,
    tx: mpsc::Sender<Item>,
    drops: Mutex<Drops>,
    /// Cancelled when the hub gives up on the client (too slow for too long).
    pub kicked: CancellationToken,
    /// When the session started the write under way, milliseconds since the hub's start;
    /// 0 while none is. [`Hub::sweep`] kicks a client whose socket takes nothing for too
    /// long: one timer for all clients rather than one per write.
    writing_since: AtomicU64,
}

impl Subscriber {
    /// The client emptied its queue: whatever lag it had is over. Returns the losses no
    /// notice reported yet (their count and the cursor before the first), for the client to
    /// report now rather than with the next event, which may be long in coming.
    pub fn caught_up(&self) -> Option<(u64, Arc<str>)> {
        let mut drops = lock(&self.drops);
        drops.since = None;
        if drops.pending == 0 {
            return None;
        }
        let dropped = std::mem::take(&mut drops.pending);
        drops.cursor.take().map(|cursor| (dropped, cursor))
    }

    /// A write to the client's socket starts (`true`) or ended (`false`).
    pub fn writing(&self, hub: &Hub, started: bool) {
        let at = if started { hub.now_ms().max(1) } else { 0 };
        self.writing_since.store(at, Ordering::Relaxed);
    }

    /// Whether events were dropped that no `lagged` notice has reported yet.
    pub fn has_pending_drops(&self) -> bool {
        lock(&self.drops).pending > 0
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default)]
struct HubState {
    positions: Positions,
    groups: HashMap<Arc<StreamFilter>, Vec<Arc<Subscriber>>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Hub {
    state: Mutex<HubState>,
    /// The cursor of [`HubState::positions`] after the latest batch, for heartbeats.
    current: Mutex<Arc<str>>,
    /// The fan-out has its first assignment: positions are known and live events flow.
    ready: AtomicBool,
    queue_events: usize,
    slow_after: Duration,
    next_id: AtomicU64,
    started: Instant,
    offered: metrics::Counter,
    dropped: metrics::Counter,
}

impl Hub {
    pub fn new(queue_events: usize, slow_after: Duration) -> Self {
        let hub = Self {
            state: Mutex::new(HubState::default()),
            current: Mutex::new(Arc::from(cursor::encode_live(&Positions::new()))),
            ready: AtomicBool::new(false),
            queue_events,
            slow_after,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            offered: metrics::counter!("ledgerline_stream_fanout_events_total"),
            dropped: metrics::counter!("ledgerline_stream_dropped_total", "reason" => "queue_full"),
        };
        // Counted by the sessions; registered here at 0 so dashboards and alert rules see the
        // series before the first slow client.
        metrics::counter!("ledgerline_stream_lagged_total").increment(0);
        hub
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Where the fan-out stands (see the module documentation).
    pub fn positions(&self) -> Positions {
        lock(&self.state).positions.clone()
    }

    /// The cursor of [`Self::positions`] as of the latest batch.
    pub fn current_cursor(&self) -> Arc<str> {
        Arc::clone(&lock(&self.current))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Kicks every client whose socket has taken nothing for the slow-client limit (its
    /// session's write has waited that long); called every second by the stream service.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let limit = u64::try_from(self.slow_after.as_millis()).unwrap_or(u64::MAX);
        let state = lock(&self.state);
        for subscriber in state.groups.values().flatten() {
            let since = subscriber.writing_since.load(Ordering::Relaxed);
            if since != 0 && now.saturating_sub(since) >= limit {
                subscriber.kicked.cancel();
            }
        }
    }

    /// Registers a subscription: its queue, and the positions its first live event comes after.
    pub fn subscribe(
        &self,
        filter: Arc<StreamFilter>,
    ) -> (Arc<Subscriber>, mpsc::Receiver<Item>, Positions) {
        let (tx, rx) = mpsc::channel(self.queue_events);
        let subscriber = Arc::new(Subscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            drops: Mutex::new(Drops::default()),
            writing_since: AtomicU64::new(0),
            kicked: CancellationToken::new(),
        });
        let mut state = lock(&self.state);
        state
            .groups
            .entry(filter)
            .or_default()
            .push(Arc::clone(&subscriber));
        (subscriber, rx, state.positions.clone())
    }

    /// Moves a subscription to `new`; live events after the returned positions are those of
    /// `new`, those before were offered under `old`.
    pub fn change(
        &self,
        subscriber: &Arc<Subscriber>,
        old: &Arc<StreamFilter>,
        new: Arc<StreamFilter>,
    ) -> Positions {
        let mut state = lock(&self.state);
        remove(&mut state, subscriber.id, old);
        state
            .groups
            .entry(new)
            .or_default()
            .push(Arc::clone(subscriber));
        state.positions.clone()
    }

    pub fn unsubscribe(&self, subscriber: &Subscriber, filter: &Arc<StreamFilter>) {
        remove(&mut lock(&self.state), subscriber.id, filter);
    }

    /// The fan-out consumer starts `partitions` at `positions`.
    fn assigned(&self, positions: &Positions) {
        let mut state = lock(&self.state);
        for (partition, offset) in positions {
            state.positions.entry(*partition).or_insert(*offset);
        }
        *lock(&self.current) = Arc::from(cursor::encode_live(&state.positions));
        self.ready.store(true, Ordering::Release);
    }

    /// Offers one partition's events, in offset order, to every subscription; `None` is a
    /// record that holds no valid event, which only moves the position on.
    fn publish(&self, partition: (Category, i32), events: &[(i64, Option<Event>)]) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        let mut matched: Vec<Arc<Subscriber>> = Vec::new();
        for (offset, event) in events {
            let offset = *offset;
            let Some(event) = event else {
                state.positions.insert(partition, offset + 1);
                continue;
            };
            matched.clear();
            for (filter, subscribers) in &state.groups {
                if filter.matches(event) {
                    matched.extend(subscribers.iter().cloned());
                }
            }
            if !matched.is_empty() {
                self.offered.increment(1);
                let cursor: Arc<str> = Arc::from(cursor::encode_live_with(
                    &state.positions,
                    Some((partition, offset + 1)),
                ));
                let live = Arc::new(LiveEvent {
                    partition,
                    offset,
                    event_id: event.envelope().event_id,
                    message: super::messages::event(&cursor, event),
                    cursor,
                });
                // The position before this event, for a `lagged` notice: built only when a
                // client loses it.
                let mut before: Option<Arc<str>> = None;
                for subscriber in &matched {
                    if subscriber.kicked.is_cancelled() {
                        continue;
                    }
                    self.offer(subscriber, &live, &state.positions, &mut before, now);
                }
            }
            state.positions.insert(partition, offset + 1);
        }
        *lock(&self.current) = Arc::from(cursor::encode_live(&state.positions));
    }

    fn offer(
        &self,
        subscriber: &Subscriber,
        live: &Arc<LiveEvent>,
        positions: &Positions,
        before: &mut Option<Arc<str>>,
        now: Instant,
    ) {
        let mut drops = lock(&subscriber.drops);
        if drops.pending > 0 {
            // The notice first, then the event: two places are needed.
            if subscriber.tx.capacity() >= 2 {
                let cursor = drops
                    .cursor
                    .take()
                    .unwrap_or_else(|| Arc::from(cursor::encode_live(positions)));
                let _ = subscriber.tx.try_send(Item::Lagged {
                    dropped: drops.pending,
                    cursor,
                });
                drops.pending = 0;
                // The queue had room again: this stretch of losses is over.
                drops.since = None;
            } else {
                self.drop_one(subscriber, &mut drops, positions, before, now);
                return;
            }
        }
        match subscriber.tx.try_send(Item::Event(Arc::clone(live))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.drop_one(subscriber, &mut drops, positions, before, now);
            }
            // The connection is closing; it unsubscribes itself.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    fn drop_one(
        &self,
        subscriber: &Subscriber,
        drops: &mut Drops,
        positions: &Positions,
        before: &mut Option<Arc<str>>,
        now: Instant,
    ) {
        self.dropped.increment(1);
        if drops.pending == 0 {
            let cursor = before
                .get_or_insert_with(|| Arc::from(cursor::encode_live(positions)))
                .clone();
            drops.cursor = Some(cursor);
        }
        drops.pending += 1;
        let since = *drops.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.slow_after {
            subscriber.kicked.cancel();
        }
    }
}

fn remove(state: &mut HubState, id: u64, filter: &Arc<StreamFilter>) {
    if let Some(subscribers) = state.groups.get_mut(filter) {
        subscribers.retain(|subscriber| subscriber.id != id);
        if subscribers.is_empty() {
            state.groups.remove(filter);
        }
    }
}

/// The fan-out consumer's sink.
pub struct FanoutSink {
    pub(super) hub: Arc<Hub>,
    /// For watermarks, off the runtime's own consumer.
    pub(super) metadata: Arc<BaseConsumer>,
    started: bool,
}

impl std::fmt::Debug for FanoutSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutSink")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl FanoutSink {
    pub fn new(hub: Arc<Hub>, metadata: Arc<BaseConsumer>) -> Self {
        Self {
            hub,
            metadata,
            started: false,
        }
    }
}

type Prepared = ((Category, i32), Vec<(i64, Option<Event>)>);

/// Bad records come too (the fan-out runs with [`runtime::BadRecords::Deliver`]; the runtime
/// counts them by reason) and are skipped here, after moving the position past them: the
/// hub's positions are then exactly where a resume reading the same partitions stands.
fn prepare(partition: &TopicPartition, records: Vec<Record>) -> Prepared {
    // The fan-out reads only category topics.
    let category = Category::from_topic(&partition.topic).unwrap_or(Category::System);
    let events = records
        .into_iter()
        .map(|record| (record.offset, record.event.ok()))
        .collect();
    ((category, partition.partition), events)
}

impl Sink for FanoutSink {
    type Prepared = Prepared;
    type Preparer = fn(&TopicPartition, Vec<Record>) -> Prepared;
    const ERROR_KINDS: &'static [&'static str] = &["watermarks"];

    fn preparer(&self) -> Self::Preparer {
        prepare
    }

    /// Starts the first assignment at the end of each partition (the live tail), and
    /// partitions that appear later at their start, with the positions looked up here so
    /// the hub knows exactly where its events begin.
    async fn on_assign(
        &mut self,
        partitions: &[TopicPartition],
    ) -> Result<runtime::Positions, SinkError> {
        // The fan-out reads only the category topics.
        let wanted: Vec<(Category, i32)> = partitions
            .iter()
            .filter_map(|p| Category::from_topic(&p.topic).map(|c| (c, p.partition)))
            .collect();
        let latest = !self.started;
        let found = super::replay::watermarks(&self.metadata, wanted)
            .await
            .map_err(|error| SinkError::new("watermarks", true, &error))?;
        let mut positions = runtime::Positions::new();
        let mut hub_positions = Positions::new();
        for ((category, partition), (low, high)) in found {
            let offset = if latest { high } else { low };
            hub_positions.insert((category, partition), offset);
            positions.insert(
                TopicPartition::new(category.topic_name(), partition),
                offset,
            );
        }
        self.hub.assigned(&hub_positions);
        self.started = true;
        Ok(positions)
    }

    async fn write(&mut self, batch: &[PartitionBatch<Prepared>]) -> Result<(), SinkError> {
        for partition in batch {
            let (key, events) = &partition.prepared;
            self.hub.publish(*key, events);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;
    use crate::params::Params;
    use ledgerline_schemas::samples;

    const PARTITION: (Category, i32) = (Category::Job, 0);

    fn hub(queue: usize, slow_after: Duration) -> Hub {
        let hub = Hub::new(queue, slow_after);
        hub.assigned(&[(PARTITION, 0)].into_iter().collect());
        hub
    }

    fn everything() -> Arc<StreamFilter> {
        let mut params = Params::parse(None).unwrap();
        Arc::new(StreamFilter::from_params(&mut params, Role::Auditor).unwrap())
    }

    fn events(from: i64, count: i64) -> Vec<(i64, Option<Event>)> {
        (from..from + count)
            .map(|offset| (offset, Some(samples::event(Category::Job, offset as u64))))
            .collect()
    }

    fn offsets(rx: &mut mpsc::Receiver<Item>) -> Vec<i64> {
        let mut seen = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item {
                Item::Event(live) => seen.push(live.offset),
                Item::Lagged { dropped, .. } => seen.push(-(dropped as i64)),
            }
        }
        seen
    }

    #[test]
    fn a_full_queue_drops_counts_and_reports_with_the_cursor_before_the_first_loss() {
        let hub = hub(2, Duration::from_secs(60));
        let (subscriber, mut rx, at) = hub.subscribe(everything());
        assert_eq!(at.get(&PARTITION), Some(&0));
        hub.publish(PARTITION, &events(0, 5));
        assert_eq!(offsets(&mut rx), vec![0, 1]);
        // Reported when the client has emptied its queue...
        let (dropped, cursor) = subscriber.caught_up().unwrap();
        assert_eq!(dropped, 3);
        assert_eq!(
            cursor::decode(&cursor).unwrap().positions.get(&PARTITION),
            Some(&2),
            "resuming from it recovers offset 2 onwards"
        );
        assert!(subscriber.caught_up().is_none());
        // ...or before the next event.
        hub.publish(PARTITION, &events(5, 4));
        assert_eq!(offsets(&mut rx), vec![5, 6]);
        hub.publish(PARTITION, &events(9, 1));
        assert_eq!(offsets(&mut rx), vec![-2, 9]);
        assert_eq!(hub.positions().get(&PARTITION), Some(&10));
        assert!(!subscriber.kicked.is_cancelled());
    }

    #[test]
    fn only_losses_that_last_get_a_client_kicked() {
        let hub = hub(1, Duration::from_millis(100));
        let (subscriber, mut rx, _) = hub.subscribe(everything());
        hub.publish(PARTITION, &events(0, 3));
        offsets(&mut rx);
        let _ = subscriber.caught_up();
        // A later burst starts a new stretch: not kicked at its first loss.
        std::thread::sleep(Duration::from_millis(150));
        hub.publish(PARTITION, &events(3, 3));
        assert!(!subscriber.kicked.is_cancelled());
        // Losing for longer than the limit is.
        std::thread::sleep(Duration::from_millis(150));
        hub.publish(PARTITION, &events(6, 1));
        assert!(subscriber.kicked.is_cancelled());
    }

    #[test]
    fn a_socket_that_takes_nothing_for_too_long_gets_its_client_kicked() {
        let hub = hub(8, Duration::from_millis(100));
        let (stuck, _stuck_rx, _) = hub.subscribe(everything());
        let (fine, _fine_rx, _) = hub.subscribe(everything());
        stuck.writing(&hub, true);
        fine.writing(&hub, true);
        std::thread::sleep(Duration::from_millis(50));
        fine.writing(&hub, false);
        hub.sweep();
        assert!(!stuck.kicked.is_cancelled());
        std::thread::sleep(Duration::from_millis(100));
        hub.sweep();
        assert!(stuck.kicked.is_cancelled());
        assert!(!fine.kicked.is_cancelled());
    }

    #[test]
    fn equal_filters_share_an_entry_and_changes_move_between_them() {
        let hub = hub(8, Duration::from_secs(60));
        let (first, mut first_rx, _) = hub.subscribe(everything());
        let (_second, mut second_rx, _) = hub.subscribe(everything());
        assert_eq!(lock(&hub.state).groups.len(), 1);
        let mut params = Params::parse(Some("category=audit")).unwrap();
        let audit = Arc::new(StreamFilter::from_params(&mut params, Role::Auditor).unwrap());
        let at = hub.change(&first, &everything(), audit);
        assert_eq!(at.get(&PARTITION), Some(&0));
        hub.publish(PARTITION, &events(0, 2));
        assert!(offsets(&mut first_rx).is_empty(), "job events do not pass");
        assert_eq!(offsets(&mut second_rx), vec![0, 1]);
        hub.unsubscribe(
            &first,
            &Arc::new(
                StreamFilter::from_params(
                    &mut Params::parse(Some("category=audit")).unwrap(),
                    Role::Auditor,
                )
                .unwrap(),
            ),
        );
        assert_eq!(lock(&hub.state).groups.len(), 1);
    }
}
