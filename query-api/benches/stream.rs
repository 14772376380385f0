//! The live stream's delivery latency and memory with many websocket clients.
//!
//! `cargo bench -p ledgerline-query-api --bench stream`. It:
//!
//! 1. starts a Tansu broker (memory engine) and a schema registry with the test harness
//!    (`ledgerline-tests`) and creates the five event topics (and the dead-letter topic), three
//!    partitions each;
//! 2. runs the `ledgerline-api` binary as a child process (so that its resident memory can be
//!    read from `/proc/<pid>/status`) with a generated config: a free port, ten analyst keys,
//!    rate limits and `[api.stream] max_connections_per_key` out of the way, ClickHouse pointed
//!    at a closed port (the stream does not need it; `/health` reports it down), and waits
//!    until `/v1/stream` answers with `subscribed`;
//! 3. opens `LEDGERLINE_BENCH_STREAM_CLIENTS` (default 1,000) websocket clients
//!    (tokio-tungstenite, `Authorization: Bearer`, one of the ten keys each), client `i`
//!    filtered on `?service=bench-svc-<i mod 10>`, and waits for every `subscribed`;
//! 4. for each rate of `LEDGERLINE_BENCH_STREAM_RATES` (default `1000,5000` events/s), for
//!    `LEDGERLINE_BENCH_STREAM_SECS` (default 20) seconds, publishes system events
//!    round-robin over the ten services with the producer crate (`Ledger::publish_event`),
//!    paced every 10 ms (each tick builds and queues the events due by then), from
//!    `LEDGERLINE_BENCH_STREAM_PUBLISHERS` (default 1) tasks; then waits 3 s for stragglers;
//! 5. each client takes, per `event` message, latency = its wall clock at receipt − the
//!    event's `occurred_at_us` (set by the producer when the event is built, so the latency
//!    includes the producer's queue, Kafka, the fan-out and the websocket), found with a
//!    substring search rather than a JSON parse (the bench shares the cores with the server),
//!    and adds up `lagged` notices and their `dropped` counts;
//! 6. prints per rate, over the events built after a warm-up of
//!    `LEDGERLINE_BENCH_STREAM_WARMUP_SECS` (default 5) seconds until the end of publishing:
//!    events published per second (queued and acknowledged), messages delivered per second
//!    to all clients and what share of the expected deliveries arrived, latency p50/p90/p99/
//!    p99.9/max, `lagged` notices and dropped events, the API's VmRSS and VmHWM, and the CPU
//!    of the API, the broker, this process, the busiest other processes and the whole machine
//!    over the window, with the API's busiest threads;
//! 7. closes the clients, stops the API with SIGTERM and the servers.
//!
//! `LEDGERLINE_BENCH_STREAM_LOG` sets the API's `log_filter` (default `warn`). The API reads
//! every other `LEDGERLINE_*` variable as a config override (the bench's own
//! `LEDGERLINE_BENCH_*` are removed from its environment), e.g.
//! `LEDGERLINE_API__STREAM__FANOUT_FETCH_WAIT_MAX_MS=5`.
//!
//! Targets: p99 ≤ 250 ms at 5,000 events/s with 1,000 clients; API RSS ≤ 150 MB.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use ledgerline_producer::{Ledger, ProducerConfig};
use ledgerline_query_api::auth::{generate_key, Role};
use ledgerline_schemas::event::Level;
use ledgerline_schemas::topics::DLQ_TOPIC;
use ledgerline_schemas::{Category, Event};
use ledgerline_service::kafka::{KafkaConfig, NewTopics};
use ledgerline_service::schema_registry::SchemaRegistryConfig;
use ledgerline_tests::process::{free_port, ManagedChild};
use ledgerline_tests::{Broker, BrokerStorage, RegistryServer};
use tokio::sync::{Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

/// Services the events are spread over, and clients' filters with them.
const SERVICES: usize = 10;
/// Analyst keys the clients share.
const KEYS: usize = 10;
/// The publishers' pacing tick.
const TICK: Duration = Duration::from_millis(10);
/// After each rate, how long the clients get to receive what was published last.
const DRAIN: Duration = Duration::from_secs(3);
/// Clients opening their connection at once.
const CONNECTING_AT_ONCE: usize = 50;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn env_list(name: &str, default: &[u64]) -> Vec<u64> {
    std::env::var(name)
        .ok()
        .map(|value| {
            value
                .split(',')
                .filter_map(|item| item.trim().replace('_', "").parse().ok())
                .collect::<Vec<u64>>()
        })
        .filter(|list| !list.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_micros() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: 64 sub-buckets per power of two (about 1.6% wide), in microseconds.

const SUB_BITS: u32 = 6;
const BUCKETS: usize = 60 << SUB_BITS;

fn bucket(value: u64) -> usize {
    if value < (2 << SUB_BITS) {
        return value as usize;
    }
    let msb = 63 - value.leading_zeros();
    let shift = msb - SUB_BITS;
    let index =
        ((shift as usize + 1) << SUB_BITS) + ((value >> shift) as usize & ((1 << SUB_BITS) - 1));
    index.min(BUCKETS - 1)
}

/// The middle of bucket `index`.
fn bucket_value(index: usize) -> u64 {
    if index < (2 << SUB_BITS) {
        return index as u64;
    }
    let shift = (index >> SUB_BITS) as u32 - 1;
    let low = ((1u64 << SUB_BITS) + (index as u64 & ((1 << SUB_BITS) - 1))) << shift;
    low + (1u64 << shift) / 2
}

#[derive(Clone)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Histogram {
    fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    fn merge(&mut self, counts: &[u32], max: u64) {
        for (into, count) in self.counts.iter_mut().zip(counts) {
            *into += u64::from(*count);
            self.total += u64::from(*count);
        }
        self.max = self.max.max(max);
    }

    /// The value below which `q` of the samples are, in microseconds.
    fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return bucket_value(index).min(self.max);
            }
        }
        self.max
    }
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

// ---------------------------------------------------------------------------------------------
// What the clients share: the measurement windows and the running rate.

struct Shared {
    /// Per rate, `[start, end)` of `occurred_at_us` that counts (after the warm-up).
    windows: Vec<(AtomicI64, AtomicI64)>,
    /// The rate being published (index), or `usize::MAX` between rates.
    phase: AtomicUsize,
    /// Clients subscribed so far.
    subscribed: AtomicUsize,
    subscribed_notify: Notify,
}

impl Shared {
    fn window_of(&self, occurred_at: i64) -> Option<usize> {
        self.windows.iter().position(|(start, end)| {
            occurred_at >= start.load(Ordering::Relaxed)
                && occurred_at < end.load(Ordering::Relaxed)
        })
    }
}

/// One client's measurements, per rate.
struct RateStats {
    counts: Vec<u32>,
    max: u64,
    /// Events in the rate's window.
    delivered: u64,
    lagged: u64,
    dropped: u64,
}

impl RateStats {
    fn new() -> Self {
        Self {
            counts: Vec::new(),
            max: 0,
            delivered: 0,
            lagged: 0,
            dropped: 0,
        }
    }
}

#[derive(Default)]
struct ClientEnd {
    /// Every `event` message, whatever its time.
    events: u64,
    heartbeats: u64,
    errors: Vec<String>,
    /// Set when the server closed the stream or it broke before the bench ended it.
    ended_early: Option<String>,
}

/// `"name":<digits>` in `text`.
fn number_after(text: &str, field: &str) -> Option<i64> {
    let start = text.find(field)? + field.len();
    let digits = &text[start..];
    let end = digits
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str, key: &str) -> Result<Socket, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {key}")
            .parse()
            .map_err(|_| "bad key".to_owned())?,
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(0);
    match tokio_tungstenite::connect_async_with_config(request, Some(config), true).await {
        Ok((socket, _)) => Ok(socket),
        Err(tungstenite::Error::Http(response)) => Err(format!(
            "HTTP {}: {}",
            response.status(),
            response
                .body()
                .as_ref()
                .map(|body| String::from_utf8_lossy(body).into_owned())
                .unwrap_or_default()
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// Waits for `subscribed`; anything else first is an error.
async fn await_subscribed(socket: &mut Socket) -> Result<(), String> {
    let wait = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = socket.next().await {
            match message.map_err(|e| e.to_string())? {
                // `subscribed` is built with `json!`: its keys come sorted.
                Message::Text(text) if text.as_str().contains(r#""type":"subscribed""#) => {
                    return Ok(())
                }
                Message::Text(text) => {
                    return Err(format!("before `subscribed`: {}", text.as_str()))
                }
                Message::Close(frame) => {
                    return Err(format!("closed before `subscribed`: {frame:?}"))
                }
                _ => {}
            }
        }
        Err("the connection ended before `subscribed`".to_owned())
    });
    wait.await
        .map_err(|_| "no `subscribed` within 60 s".to_owned())?
}

/// One client: connects, waits for `subscribed`, then measures until `stop`.
async fn client(
    url: String,
    key: String,
    shared: Arc<Shared>,
    connecting: Arc<Semaphore>,
    stop: CancellationToken,
) -> Result<(Vec<RateStats>, ClientEnd), String> {
    let mut socket = {
        let _permit = connecting.acquire().await.map_err(|e| e.to_string())?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match connect(&url, &key).await {
                Ok(mut socket) => {
                    await_subscribed(&mut socket).await?;
                    break socket;
                }
                Err(error) if attempt >= 5 => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    };
    shared.subscribed.fetch_add(1, Ordering::AcqRel);
    shared.subscribed_notify.notify_waiters();
    let mut rates: Vec<RateStats> = (0..shared.windows.len())
        .map(|_| RateStats::new())
        .collect();
    let mut end = ClientEnd::default();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => {
                let _ = socket.close(None).await;
                // Read to the server's close frame (bounded), so it sees a clean close.
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Some(Ok(_)) = socket.next().await {}
                })
                .await;
                break;
            }
            message = socket.next() => message,
        };
        let text = match message {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                end.ended_early = Some(format!("closed by the server: {frame:?}"));
                break;
            }
            Some(Ok(_)) => continue,
            Some(Err(error)) => {
                end.ended_early = Some(format!("broken: {error}"));
                break;
            }
            None => {
                end.ended_early = Some("ended".to_owned());
                break;
            }
        };
        let text = text.as_str();
        if text.starts_with(r#"{"type":"event""#) {
            let received = now_us();
            end.events += 1;
            let Some(occurred_at) = number_after(text, r#""occurred_at_us":"#) else {
                end.errors
                    .push("an event without occurred_at_us".to_owned());
                continue;
            };
            if let Some(index) = shared.window_of(occurred_at) {
                let latency = (received - occurred_at).max(0) as u64;
                let stats = &mut rates[index];
                if stats.counts.is_empty() {
                    stats.counts = vec![0; BUCKETS];
                }
                stats.counts[bucket(latency)] += 1;
                stats.max = stats.max.max(latency);
                stats.delivered += 1;
            }
        } else if text.starts_with(r#"{"type":"lagged""#) {
            let phase = shared.phase.load(Ordering::Relaxed);
            if let Some(stats) = rates.get_mut(phase) {
                stats.lagged += 1;
                stats.dropped += number_after(text, r#""dropped":"#).unwrap_or(0) as u64;
            }
        } else if text.starts_with(r#"{"type":"heartbeat""#) {
            end.heartbeats += 1;
        } else if text.contains(r#""type":"error""#) && end.errors.len() < 5 {
            end.errors.push(text.to_owned());
        }
    }
    Ok((rates, end))
}

// ---------------------------------------------------------------------------------------------
// Publishing

struct Published {
    queued: u64,
    /// Per service, events built inside the measurement window.
    in_window: [u64; SERVICES],
}

/// Lane `lane` of `lanes`: every `lanes`-th event due at `rate`, for `duration`.
async fn publish(
    ledger: Ledger,
    services: Arc<Vec<String>>,
    rate: u64,
    duration: Duration,
    lane: u64,
    lanes: u64,
    window: (i64, i64),
) -> Published {
    let mut published = Published {
        queued: 0,
        in_window: [0; SERVICES],
    };
    let started = Instant::now();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent: u64 = 0;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        let due = (rate as u128 * elapsed.as_micros() / 1_000_000) as u64;
        // This lane's share of the events `0..due`: numbers `lane, lane + lanes, ...`.
        let mine = due.saturating_sub(lane).div_ceil(lanes);
        while sent < mine {
            let number = lane + sent * lanes;
            let service = number as usize % SERVICES;
            let mut event = ledger
                .system(
                    "bench.stream",
                    Level::Info,
                    "bench::stream",
                    &format!("stream bench event {number}"),
                )
                .build();
            if let Event::System(system) = &mut event {
                system.envelope.service.clone_from(&services[service]);
            }
            let at = event.envelope().occurred_at;
            if at >= window.0 && at < window.1 {
                published.in_window[service] += 1;
            }
            ledger
                .publish_event(event)
                .await
                .expect("the producer refused an event");
            sent += 1;
        }
    }
    published.queued = sent;
    published
}

// ---------------------------------------------------------------------------------------------
// /proc

fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// `(comm, ppid, utime + stime in ticks)` from a `stat` file.
fn read_stat(path: &Path) -> Option<(String, u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_owned();
    let fields: Vec<&str> = text[close + 2..].split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, ppid, utime + stime))
}

/// CPU ticks of this process, of each of its children (by pid), of each thread of the API, and
/// of the whole machine (busy, total).
struct CpuSample {
    at: Instant,
    processes: HashMap<u32, (String, u64)>,
    threads: HashMap<u32, (String, u64)>,
    machine: (u64, u64),
}

fn cpu_sample(api_pid: u32) -> CpuSample {
    let me = std::process::id();
    let mut processes = HashMap::new();
    if let Some((comm, _, ticks)) = read_stat(Path::new(&format!("/proc/{me}/stat"))) {
        processes.insert(me, (format!("{comm} (this bench)"), ticks));
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Every process, so that other load on the machine shows too.
            if let Some((comm, ppid, ticks)) = read_stat(&entry.path().join("stat")) {
                if pid != me {
                    let comm = if ppid == me {
                        comm
                    } else {
                        format!("{comm} (other)")
                    };
                    processes.insert(pid, (comm, ticks));
                }
            }
        }
    }
    let mut threads = HashMap::new();
    if let Ok(entries) = std::fs::read_dir(format!("/proc/{api_pid}/task")) {
        for entry in entries.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((comm, _, ticks)) = read_stat(&entry.path().join("stat")) {
                threads.insert(tid, (comm, ticks));
            }
        }
    }
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|text| {
            let line = text.lines().next()?.to_owned();
            let values: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let total: u64 = values.iter().take(8).sum();
            // idle + iowait
            let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
            Some((total - idle, total))
        })
        .unwrap_or((0, 0));
    CpuSample {
        at: Instant::now(),
        processes,
        threads,
        machine,
    }
}

/// CPU use between two samples, as text (percent of one core; the machine has `cores`).
fn cpu_report(before: &CpuSample, after: &CpuSample, api_pid: u32) -> String {
    let ticks_per_sec = 100.0; // USER_HZ
    let secs = after.at.duration_since(before.at).as_secs_f64().max(0.001);
    let percent = |ticks: u64| 100.0 * ticks as f64 / ticks_per_sec / secs;
    let mut out = String::new();
    let mut processes: Vec<(String, f64)> = after
        .processes
        .iter()
        .map(|(pid, (comm, ticks))| {
            let earlier = before.processes.get(pid).map_or(0, |(_, t)| *t);
            let name = if *pid == api_pid {
                format!("{comm} (API)")
            } else {
                comm.clone()
            };
            (name, percent(ticks.saturating_sub(earlier)))
        })
        .collect();
    processes.sort_by(|a, b| b.1.total_cmp(&a.1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (busy, total) = (
        after.machine.0.saturating_sub(before.machine.0),
        after.machine.1.saturating_sub(before.machine.1),
    );
    let _ = write!(
        out,
        "    CPU (% of one core, {cores} cores): machine busy {:.0}% of {}%",
        100.0 * busy as f64 / total.max(1) as f64 * cores as f64,
        100 * cores
    );
    for (name, used) in processes.iter().take(6).filter(|(_, used)| *used >= 0.5) {
        let _ = write!(out, "; {name} {used:.0}%");
    }
    let mut threads: HashMap<String, f64> = HashMap::new();
    for (tid, (comm, ticks)) in &after.threads {
        let earlier = before.threads.get(tid).map_or(0, |(_, t)| *t);
        // Group numbered threads (`rdk:broker3`, `tokio-runtime-w`) by name.
        *threads.entry(comm.clone()).or_default() += percent(ticks.saturating_sub(earlier));
    }
    let mut threads: Vec<(String, f64)> = threads.into_iter().collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = write!(out, "\n    API threads (by name):");
    for (name, used) in threads.iter().take(6) {
        let _ = write!(out, " {name} {used:.0}%;");
    }
    out
}

// ---------------------------------------------------------------------------------------------

fn api_config(
    port: u16,
    brokers: &str,
    registry: &str,
    keys: &str,
    clients: usize,
    log_filter: &str,
) -> String {
    // ClickHouse on a port nothing listens on: the stream does not need it, and the bench must
    // not reach a developer's local server.
    let clickhouse = free_port().expect("a free port");
    let limit = clients.max(10_000) + 10;
    format!(
        r#"[telemetry]
log_format = "pretty"
log_filter = "{log_filter}"

[kafka]
brokers = "{brokers}"

[schema_registry]
url = "{registry}"

[producer]
service_name = "ledgerline-api"
create_topics = false
linger_ms = 1

[api]
listen = "127.0.0.1:{port}"

[api.clickhouse]
url = "http://127.0.0.1:{clickhouse}"

[api.audit_clickhouse]
url = "http://127.0.0.1:{clickhouse}"

[api.limits]
rate_per_second = 100000
rate_burst = 100000

[api.stream]
max_connections = {limit}
max_connections_per_key = {limit}

{keys}"#
    )
}

fn main() {
    let clients = env_number("LEDGERLINE_BENCH_STREAM_CLIENTS", 1_000) as usize;
    let rates = env_list("LEDGERLINE_BENCH_STREAM_RATES", &[1_000, 5_000]);
    let secs = env_number("LEDGERLINE_BENCH_STREAM_SECS", 20).max(2);
    let warmup = env_number("LEDGERLINE_BENCH_STREAM_WARMUP_SECS", 5).min(secs - 1);
    let lanes = env_number("LEDGERLINE_BENCH_STREAM_PUBLISHERS", 1).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(clients, rates, secs, warmup, lanes));
}

async fn run(clients: usize, rates: Vec<u64>, secs: u64, warmup: u64, lanes: u64) {
    println!(
        "stream bench: {clients} clients over {SERVICES} services, rates {rates:?} events/s, \
         {secs} s each ({warmup} s warm-up), {lanes} publisher task(s)"
    );
    // 1. Broker, registry, topics.
    let broker = Broker::start(BrokerStorage::Memory).expect("broker");
    let registry = RegistryServer::start(&broker.bootstrap()).expect("registry");
    let mut topics: Vec<&str> = Category::ALL.iter().map(|c| c.topic_name()).collect();
    topics.push(DLQ_TOPIC);
    ledgerline_service::kafka::ensure_topics(
        &broker.client_config(),
        &topics,
        &NewTopics::new(3, 1).timeout(Duration::from_secs(10)),
    )
    .await
    .expect("topics");

    // 2. The API, as a child process.
    let mut keys = Vec::new();
    let mut entries = String::new();
    for _ in 0..KEYS {
        let new = generate_key(Role::Analyst, None).unwrap();
        entries.push_str(&new.config_toml());
        entries.push('\n');
        keys.push(new.key);
    }
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config_path = dir.path().join("ledgerline.toml");
    let log_filter =
        std::env::var("LEDGERLINE_BENCH_STREAM_LOG").unwrap_or_else(|_| "warn".to_owned());
    std::fs::write(
        &config_path,
        api_config(
            port,
            &broker.bootstrap(),
            &registry.url(),
            &entries,
            clients,
            &log_filter,
        ),
    )
    .unwrap();
    let log = dir.path().join("api.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ledgerline-api"));
    command
        .env("LEDGERLINE_CONFIG", &config_path)
        .env_remove("RUST_LOG");
    // The API reads every other `LEDGERLINE_*` variable as a config override.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|name| name.starts_with("LEDGERLINE_BENCH_"))
        {
            command.env_remove(name);
        }
    }
    let mut api = ManagedChild::spawn("ledgerline-api", command, &log).expect("spawn the API");
    let api_pid = api.pid();
    println!("API pid {api_pid}, log {}", log.display());

    let base = format!("ws://127.0.0.1:{port}/v1/stream");
    let started = Instant::now();
    let mut last_error = String::new();
    loop {
        assert!(
            api.is_running(),
            "the API exited on start-up:\n{}",
            ledgerline_tests::process::tail(&log, 30)
        );
        match connect(&format!("{base}?service=bench-svc-0"), &keys[0]).await {
            Ok(mut socket) => match await_subscribed(&mut socket).await {
                Ok(()) => {
                    let _ = socket.close(None).await;
                    break;
                }
                Err(error) => last_error = error,
            },
            Err(error) => last_error = error,
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "/v1/stream did not accept a client within 90 s; last: {last_error}\n{}",
            ledgerline_tests::process::tail(&log, 30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "/v1/stream accepts clients after {:.1} s (last refusal before: {})",
        started.elapsed().as_secs_f64(),
        if last_error.is_empty() {
            "none"
        } else {
            &last_error
        }
    );
    if let Ok(response) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        println!(
            "/health: {status} {}",
            body.chars().take(300).collect::<String>()
        );
    }
    println!(
        "API idle: VmRSS {}, VmHWM {}",
        mb(status_kb(api_pid, "VmRSS:")),
        mb(status_kb(api_pid, "VmHWM:"))
    );

    // 3. The clients.
    let shared = Arc::new(Shared {
        windows: rates
            .iter()
            .map(|_| (AtomicI64::new(i64::MAX), AtomicI64::new(i64::MAX)))
            .collect(),
        phase: AtomicUsize::new(usize::MAX),
        subscribed: AtomicUsize::new(0),
        subscribed_notify: Notify::new(),
    });
    let stop = CancellationToken::new();
    let connecting = Arc::new(Semaphore::new(CONNECTING_AT_ONCE));
    let opening = Instant::now();
    let mut per_service = [0u64; SERVICES];
    let mut tasks = Vec::with_capacity(clients);
    for i in 0..clients {
        per_service[i % SERVICES] += 1;
        tasks.push(tokio::spawn(client(
            format!("{base}?service=bench-svc-{}", i % SERVICES),
            keys[i % KEYS].clone(),
            Arc::clone(&shared),
            Arc::clone(&connecting),
            stop.clone(),
        )));
    }
    loop {
        let notified = shared.subscribed_notify.notified();
        let count = shared.subscribed.load(Ordering::Acquire);
        if count >= clients {
            break;
        }
        if let Some(finished) = tasks.iter().position(|task| task.is_finished()) {
            let result = tasks.swap_remove(finished).await;
            panic!(
                "a client failed to subscribe ({count} subscribed): {:?}",
                result.map(|r| r.err())
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        assert!(
            opening.elapsed() < Duration::from_secs(180),
            "only {count} of {clients} clients subscribed within 180 s"
        );
    }
    println!(
        "{clients} clients subscribed in {:.1} s; API VmRSS {}, VmHWM {}",
        opening.elapsed().as_secs_f64(),
        mb(status_kb(api_pid, "VmRSS:")),
        mb(status_kb(api_pid, "VmHWM:"))
    );

    // 4. The publisher.
    let services: Arc<Vec<String>> =
        Arc::new((0..SERVICES).map(|n| format!("bench-svc-{n}")).collect());
    let ledger = Ledger::builder("bench-publisher")
        .config(ProducerConfig {
            service_name: "bench-publisher".to_owned(),
            linger_ms: 1,
            create_topics: false,
            ..ProducerConfig::default()
        })
        .kafka(KafkaConfig {
            brokers: broker.bootstrap(),
            ..KafkaConfig::default()
        })
        .schema_registry(SchemaRegistryConfig {
            url: registry.url(),
            ..SchemaRegistryConfig::default()
        })
        .build()
        .await
        .expect("the publisher's ledger");

    struct RateRun {
        rate: u64,
        published: u64,
        acked: u64,
        in_window: [u64; SERVICES],
        window_secs: f64,
        rss_kb: u64,
        hwm_kb: u64,
        cpu: String,
    }
    let mut runs = Vec::new();
    for (index, &rate) in rates.iter().enumerate() {
        let duration = Duration::from_secs(secs);
        let start = now_us();
        let window = (
            start + warmup as i64 * 1_000_000,
            start + secs as i64 * 1_000_000,
        );
        shared.windows[index].0.store(window.0, Ordering::Relaxed);
        shared.windows[index].1.store(window.1, Ordering::Relaxed);
        shared.phase.store(index, Ordering::Relaxed);
        let acked_before = ledger.stats().delivered;
        let mut lane_tasks = Vec::new();
        for lane in 0..lanes {
            lane_tasks.push(tokio::spawn(publish(
                ledger.clone(),
                Arc::clone(&services),
                rate,
                duration,
                lane,
                lanes,
                window,
            )));
        }
        // CPU over the measurement window.
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        let before = cpu_sample(api_pid);
        let mut published = 0;
        let mut in_window = [0u64; SERVICES];
        for task in lane_tasks {
            let lane = task.await.unwrap();
            published += lane.queued;
            for (total, count) in in_window.iter_mut().zip(lane.in_window) {
                *total += count;
            }
        }
        let after = cpu_sample(api_pid);
        let acked = ledger.stats().delivered - acked_before;
        let rss_kb = status_kb(api_pid, "VmRSS:");
        let hwm_kb = status_kb(api_pid, "VmHWM:");
        tokio::time::sleep(DRAIN).await;
        shared.phase.store(usize::MAX, Ordering::Relaxed);
        println!("rate {rate}/s done: {published} events queued, {acked} acknowledged by its end",);
        runs.push(RateRun {
            rate,
            published,
            acked,
            in_window,
            window_secs: (window.1 - window.0) as f64 / 1e6,
            rss_kb,
            hwm_kb,
            cpu: cpu_report(&before, &after, api_pid),
        });
    }
    let _ = ledger.flush(Duration::from_secs(10)).await;

    // 5. Close the clients and gather their measurements.
    stop.cancel();
    let mut histograms: Vec<Histogram> = rates.iter().map(|_| Histogram::new()).collect();
    let mut delivered = vec![0u64; rates.len()];
    let mut lagged = vec![0u64; rates.len()];
    let mut dropped = vec![0u64; rates.len()];
    let mut lagged_clients = vec![0u64; rates.len()];
    let mut events_total = 0u64;
    let mut heartbeats = 0u64;
    let mut ended_early: HashMap<String, u64> = HashMap::new();
    let mut errors: Vec<String> = Vec::new();
    for task in tasks {
        match task.await {
            Ok(Ok((stats, end))) => {
                for (index, stats) in stats.into_iter().enumerate() {
                    if !stats.counts.is_empty() {
                        histograms[index].merge(&stats.counts, stats.max);
                    }
                    delivered[index] += stats.delivered;
                    lagged[index] += stats.lagged;
                    dropped[index] += stats.dropped;
                    lagged_clients[index] += u64::from(stats.lagged > 0);
                }
                events_total += end.events;
                heartbeats += end.heartbeats;
                if let Some(reason) = end.ended_early {
                    *ended_early.entry(reason).or_default() += 1;
                }
                errors.extend(end.errors.into_iter().take(2));
            }
            Ok(Err(error)) => *ended_early.entry(error).or_default() += 1,
            Err(error) => *ended_early.entry(error.to_string()).or_default() += 1,
        }
    }

    // 6. The report.
    println!("\n== Live stream: {clients} clients, {SERVICES} services ==");
    for (index, run) in runs.iter().enumerate() {
        let expected: u64 = run
            .in_window
            .iter()
            .zip(per_service)
            .map(|(events, subscribers)| events * subscribers)
            .sum();
        let histogram = &histograms[index];
        println!(
            "\nrate {} events/s ({} s, latency over the last {:.0} s):",
            run.rate, secs, run.window_secs
        );
        println!(
            "    published: {:.0} events/s queued, {:.0}/s acknowledged during the run",
            run.published as f64 / secs as f64,
            run.acked as f64 / secs as f64
        );
        println!(
            "    delivered: {:.0} messages/s to all clients ({} of {} expected, {:.2}%)",
            delivered[index] as f64 / run.window_secs,
            delivered[index],
            expected,
            100.0 * delivered[index] as f64 / expected.max(1) as f64
        );
        println!(
            "    latency: p50 {}, p90 {}, p99 {}, p99.9 {}, max {} ({} samples)",
            ms(histogram.quantile(0.50)),
            ms(histogram.quantile(0.90)),
            ms(histogram.quantile(0.99)),
            ms(histogram.quantile(0.999)),
            ms(histogram.max),
            histogram.total
        );
        println!(
            "    lagged: {} notices to {} clients, {} events dropped",
            lagged[index], lagged_clients[index], dropped[index]
        );
        println!(
            "    API memory at the end of publishing: VmRSS {}, VmHWM (peak so far) {}",
            mb(run.rss_kb),
            mb(run.hwm_kb)
        );
        println!("{}", run.cpu);
    }
    println!(
        "\nall clients: {events_total} event messages, {heartbeats} heartbeats; ended early: {}",
        if ended_early.is_empty() {
            "none".to_owned()
        } else {
            format!("{ended_early:?}")
        }
    );
    if !errors.is_empty() {
        println!(
            "client errors (first few): {:?}",
            &errors[..errors.len().min(5)]
        );
    }
    println!(
        "API final: VmRSS {}, VmHWM {}",
        mb(status_kb(api_pid, "VmRSS:")),
        mb(status_kb(api_pid, "VmHWM:"))
    );

    // 7. Shut down.
    drop(ledger);
    api.terminate(Duration::from_secs(15));
    println!("API stopped: {:?}", api.exit_status());
    drop(registry);
    drop(broker);
}
