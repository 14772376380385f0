//! The query API's read latency over HTTP, against a ClickHouse holding a day of events.
//!
//! `cargo bench -p ledgerline-query-api` (the only bench of the crate). It:
//!
//! 1. starts its own ClickHouse 18.16 with the test harness (`ledgerline-tests`), creates
//!    `ledgerline` with the projector's migrations and loads `LEDGERLINE_BENCH_EVENTS`
//!    (default 10,000,000) generated events through the projector's own inserts
//!    (`projector::insert::insert_events` / `insert_job_statuses`, one category and one
//!    `ingested_at` per insert), then waits for ClickHouse's merges to settle;
//! 2. starts the API in process on `127.0.0.1:0` as the harness's read-only `api` user, with
//!    one generated analyst key and rate limits out of the way;
//! 3. times sequential requests (one connection, after a warm-up) for each scenario below and
//!    prints p50/p99, then what ClickHouse read for them (`system.query_log`, which the bench
//!    turns on for the `api` user's profile).
//!
//! The data: a day ending now, more by day (UTC 08–18) than by night, 35% job, 30%
//! connection, 30% system and 5% audit events (hidden from `/v1/events`), 20 services (skewed),
//! 40 hosts, levels 3% DEBUG / 85% INFO / 8% WARN / 3.5% ERROR / 0.5% CRITICAL, names from a
//! small set per category, jobs of 20 job and connection events each (1,000 jobs interleaved
//! at a time, so a job spans a few minutes), messages made of words, 0.1% of which contain
//! the term `quokka`. Every optional envelope field is set, as in the projector bench.
//!
//! Knobs (environment): `LEDGERLINE_BENCH_EVENTS` (events to load), `LEDGERLINE_BENCH_ITERS`
//! (timed requests per scenario, default 200), `LEDGERLINE_BENCH_BUDGET_SECS` (stop a scenario
//! early after this long, default 20, never before 20 requests), `LEDGERLINE_BENCH_WALKS`
//! (hours walked to page 50, default 1). Targets: one-hour search p50 ≤ 100 ms and
//! p99 ≤ 300 ms; 24-hour histogram p50 ≤ 300 ms.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use ledgerline_consumers::clickhouse::migrate;
use ledgerline_consumers::projector::schema::MIGRATIONS;
use ledgerline_consumers::projector::{event_row, insert, EventRow, JobStatusRow};
use ledgerline_query_api::audit_trail::{AuditRead, AuditTrail};
use ledgerline_query_api::auth::{generate_key, Role};
use ledgerline_query_api::error::ApiError;
use ledgerline_query_api::params::format_time;
use ledgerline_query_api::{build_state, server, ApiSettings};
use ledgerline_schemas::{samples, Category};
use ledgerline_service::config::ConfigSource;
use ledgerline_tests::ClickHouseServer;
use tokio_util::sync::CancellationToken;

const DATABASE: &str = "ledgerline";
const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// Events generated per chunk; each chunk is one insert per category (and one of job rows).
const CHUNK: usize = 100_000;
/// Jobs running at once: a job's 20 events are spread over 20,000 job and connection events.
const JOBS_AT_ONCE: u64 = 1_000;
const EVENTS_PER_JOB: u64 = 20;
/// The rare term of the free-text scenarios, in 0.1% of the messages.
const RARE: &str = "quokka";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A small deterministic generator for the request parameters.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(1);
        splitmix(self.0)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "?".to_owned())
}

// ---------------------------------------------------------------------------------------------
// Data

const SERVICES: [&str; 20] = [
    "billing",
    "auth",
    "inventory",
    "scheduler",
    "backup",
    "netconf-gateway",
    "ssh-proxy",
    "config-store",
    "notifier",
    "reporting",
    "discovery",
    "firmware",
    "metrics-agent",
    "ui-backend",
    "api-gateway",
    "ticketing",
    "compliance",
    "topology",
    "syslog-relay",
    "license",
];

const WORDS: [&str; 40] = [
    "router",
    "switch",
    "firewall",
    "config",
    "snapshot",
    "interface",
    "vlan",
    "uplink",
    "tunnel",
    "certificate",
    "session",
    "handshake",
    "timeout",
    "retry",
    "queue",
    "worker",
    "batch",
    "commit",
    "rollback",
    "checksum",
    "archive",
    "restore",
    "schedule",
    "policy",
    "template",
    "inventory",
    "firmware",
    "upgrade",
    "latency",
    "packet",
    "buffer",
    "cache",
    "replica",
    "primary",
    "standby",
    "heartbeat",
    "lease",
    "token",
    "quota",
    "ledger",
];

fn names(category: Category) -> &'static [&'static str] {
    match category {
        Category::Job => &[
            "job.queued",
            "job.started",
            "job.progress",
            "job.completed",
            "job.failed",
        ],
        Category::Connection => &[
            "device.connect",
            "device.authenticate",
            "device.command",
            "device.disconnect",
        ],
        Category::System => &[
            "system.log",
            "system.startup",
            "system.health",
            "system.config.reload",
            "system.gc",
        ],
        _ => &[
            "user.login.success",
            "user.login.failure",
            "config.change",
            "api.key.create",
        ],
    }
}

/// The job id of job number `number`.
fn job_id(number: u64) -> String {
    format!("job-{:012x}", splitmix(number ^ 0x5eed) & 0xffff_ffff_ffff)
}

/// Events per hour of the day (UTC): busier by day.
fn hour_weight(hour_of_day: i64) -> f64 {
    match hour_of_day {
        8..=17 => 1.6,
        18..=22 => 1.0,
        _ => 0.5,
    }
}

/// Generates the events, in time order, chunk by chunk.
struct Generator {
    total: u64,
    next: u64,
    start_us: i64,
    /// Cumulative event counts at the start of each hour of the window (25 entries).
    cumulative: Vec<u64>,
    templates: [EventRow; 4],
    offsets: [i64; 4],
    /// Job and connection events generated so far.
    job_events: u64,
    /// Some job ids that have job events, for the timeline scenario.
    sample_jobs: Vec<String>,
}

const CATEGORIES: [Category; 4] = [
    Category::Job,
    Category::Connection,
    Category::System,
    Category::Audit,
];

impl Generator {
    fn new(total: u64, start_us: i64) -> Self {
        let weights: Vec<f64> = (0..24)
            .map(|hour| hour_weight((start_us / HOUR_US + hour).rem_euclid(24)))
            .collect();
        let sum: f64 = weights.iter().sum();
        let mut cumulative = vec![0u64];
        let mut acc = 0.0;
        for weight in &weights {
            acc += weight;
            cumulative.push(((acc / sum) * total as f64).round() as u64);
        }
        *cumulative.last_mut().unwrap() = total;
        let templates = CATEGORIES.map(|category| {
            let event = samples::event(category, 1);
            event_row(&event, category.topic_name(), 0, 0, 0).unwrap()
        });
        Self {
            total,
            next: 0,
            start_us,
            cumulative,
            templates,
            offsets: [0; 4],
            job_events: 0,
            sample_jobs: Vec::new(),
        }
    }

    fn occurred_at(&self, n: u64, hash: u64) -> i64 {
        let hour = self
            .cumulative
            .windows(2)
            .position(|pair| n < pair[1])
            .unwrap_or(23);
        let (first, end) = (self.cumulative[hour], self.cumulative[hour + 1]);
        let in_hour = (end - first).max(1);
        let slot_us = HOUR_US / in_hour as i64;
        self.start_us
            + hour as i64 * HOUR_US
            + ((n - first) as i64 * HOUR_US) / in_hour as i64
            + (hash % slot_us.max(1) as u64) as i64
    }

    /// The next chunk: rows per category (job, connection, system, audit) and job rows.
    fn chunk(&mut self) -> Option<([Vec<EventRow>; 4], Vec<JobStatusRow>)> {
        if self.next >= self.total {
            return None;
        }
        let end = (self.next + CHUNK as u64).min(self.total);
        let mut rows: [Vec<EventRow>; 4] = Default::default();
        let mut jobs = Vec::new();
        for n in self.next..end {
            let hash = splitmix(n);
            let pick = hash % 100;
            let index = match pick {
                0..=34 => 0,
                35..=64 => 1,
                65..=94 => 2,
                _ => 3,
            };
            let category = CATEGORIES[index];
            let mut row = self.templates[index].clone();
            let occurred_at_us = self.occurred_at(n, hash >> 7);
            let bits = splitmix(hash);
            let mut random = [0u8; 10];
            random.copy_from_slice(&bits.to_le_bytes().repeat(2)[..10]);
            row.event_id =
                uuid::Builder::from_unix_timestamp_millis((occurred_at_us / 1_000) as u64, &random)
                    .into_uuid()
                    .hyphenated()
                    .to_string();
            row.occurred_at_us = occurred_at_us;
            row.occurred_date = (occurred_at_us.div_euclid(DAY_US)) as u16;
            let service_index = ((hash >> 8) % 20).min((hash >> 16) % 20) as usize;
            row.service = SERVICES[service_index].to_owned();
            row.host = format!("host-{:02}", (hash >> 24) % 40);
            let level = match (hash >> 32) % 1000 {
                0..=29 => "DEBUG",
                30..=879 => "INFO",
                880..=959 => "WARN",
                960..=994 => "ERROR",
                _ => "CRITICAL",
            };
            row.level = level.to_owned();
            let category_names = names(category);
            row.name =
                category_names[((bits >> 8) % category_names.len() as u64) as usize].to_owned();
            let word = |shift: u32| WORDS[((bits >> shift) % WORDS.len() as u64) as usize];
            let device = format!("dev-{:05}", (bits >> 40) % 5_000);
            let rare = if (bits >> 20).is_multiple_of(1000) {
                RARE
            } else {
                ""
            };
            row.message = match category {
                Category::Job => format!(
                    "{} {} {} step on {device} {} {rare}",
                    word(0),
                    word(6),
                    word(12),
                    word(18)
                ),
                Category::Connection => format!(
                    "{} session to {device} {} after {} ms {} {rare}",
                    word(0),
                    word(6),
                    (bits >> 30) % 2_000,
                    word(12)
                ),
                Category::System => format!(
                    "worker {} {} {} {} from queue {} {rare}",
                    (bits >> 30) % 64,
                    word(0),
                    word(6),
                    word(12),
                    word(18)
                ),
                _ => format!("user {} {} {} {rare}", (bits >> 30) % 500, word(0), word(6)),
            };
            row.request_id = Some(format!("req-{n:x}"));
            row.trace_id = Some(format!(
                "{:032x}",
                u128::from(bits) << 64 | u128::from(hash)
            ));
            row.topic = category.topic_name().to_owned();
            row.partition = ((bits >> 50) % 3) as i32;
            row.offset = self.offsets[index];
            self.offsets[index] += 1;
            match category {
                Category::Job | Category::Connection => {
                    let k = self.job_events;
                    self.job_events += 1;
                    let block = k / (JOBS_AT_ONCE * EVENTS_PER_JOB);
                    let number = block * JOBS_AT_ONCE + k % JOBS_AT_ONCE;
                    let position = (k % (JOBS_AT_ONCE * EVENTS_PER_JOB)) / JOBS_AT_ONCE;
                    let id = job_id(number);
                    row.job_id = Some(id.clone());
                    if category == Category::Job {
                        let (status, progress) = match position {
                            0 => ("QUEUED", 0),
                            19 if bits.is_multiple_of(20) => ("FAILED", 95),
                            19 => ("COMPLETED", 100),
                            p => ("RUNNING", (p * 5) as i32),
                        };
                        row.job_status = Some(status.to_owned());
                        row.progress = Some(progress);
                        row.parent_job_id = None;
                        if number.is_multiple_of(997) && position == 19 {
                            self.sample_jobs.push(id.clone());
                        }
                        jobs.push(JobStatusRow {
                            job_id: id,
                            job_type: row.job_type.clone().unwrap_or_default(),
                            job_name: row.job_name.clone().unwrap_or_default(),
                            status: status.to_owned(),
                            progress,
                            details: row.details.clone().unwrap_or_default(),
                            service: row.service.clone(),
                            event_id: row.event_id.clone(),
                            occurred_at_us,
                            topic: row.topic.clone(),
                            partition: row.partition,
                            offset: row.offset,
                            updated_at: 0,
                        });
                    } else {
                        row.device_id = Some(device);
                        row.outcome = Some(
                            if level == "ERROR" {
                                "FAILURE"
                            } else {
                                "SUCCESS"
                            }
                            .to_owned(),
                        );
                        row.error = (level == "ERROR").then(|| "authentication failed".to_owned());
                    }
                }
                Category::System if !matches!(level, "ERROR" | "CRITICAL") => {
                    row.error = None;
                    row.error_chain = Vec::new();
                }
                _ => {}
            }
            rows[index].push(row);
        }
        self.next = end;
        // One `ingested_at` per insert, a moment after the chunk's newest event.
        for category_rows in &mut rows {
            let newest = category_rows
                .iter()
                .map(|row| row.occurred_at_us)
                .max()
                .unwrap_or(self.start_us);
            let ingested_at = (newest / 1_000_000 + 2) as u32;
            for row in category_rows.iter_mut() {
                row.ingested_at = ingested_at;
            }
        }
        let newest = jobs.iter().map(|job| job.occurred_at_us).max().unwrap_or(0);
        for job in &mut jobs {
            job.updated_at = (newest / 1_000_000 + 2) as u32;
        }
        Some((rows, jobs))
    }
}

/// Loads `total` events; returns some job ids for the timeline scenario.
async fn load(client: &clickhouse::Client, total: u64, start_us: i64) -> Vec<String> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1);
    let generator = std::thread::spawn(move || {
        let mut generator = Generator::new(total, start_us);
        while let Some(chunk) = generator.chunk() {
            if sender.blocking_send(chunk).is_err() {
                break;
            }
        }
        generator.sample_jobs
    });
    let started = Instant::now();
    let mut loaded = 0u64;
    let mut reported = Instant::now();
    while let Some((rows, jobs)) = receiver.recv().await {
        let inserts = rows
            .iter()
            .filter(|rows| !rows.is_empty())
            .map(|rows| insert::insert_events(client, DATABASE, rows));
        let (events, statuses) = tokio::join!(
            futures::future::try_join_all(inserts),
            insert::insert_job_statuses(client, DATABASE, &jobs)
        );
        events.unwrap();
        statuses.unwrap();
        loaded += rows.iter().map(|rows| rows.len() as u64).sum::<u64>();
        if reported.elapsed() > Duration::from_secs(10) {
            reported = Instant::now();
            println!(
                "  loaded {loaded} events ({:.0} events/s so far, load {})",
                loaded as f64 / started.elapsed().as_secs_f64(),
                load_average()
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "loaded {loaded} events (and their job_status rows) in {elapsed:.1} s: {:.0} events/s",
        loaded as f64 / elapsed
    );
    generator.join().unwrap()
}

/// Waits (at most 15 minutes) until ClickHouse has had no merge running for 5 s.
async fn settle(client: &clickhouse::Client) {
    let started = Instant::now();
    let mut quiet_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(900) {
        let merges: u64 = client
            .query("SELECT count() FROM system.merges")
            .fetch_one()
            .await
            .unwrap();
        if merges == 0 {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(5) {
                break;
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (parts, rows, bytes): (u64, u64, u64) = client
        .query(
            "SELECT count(), sum(rows), sum(bytes_on_disk) FROM system.parts \
             WHERE database = ? AND table = 'events' AND active",
        )
        .bind(DATABASE)
        .fetch_one()
        .await
        .unwrap_or_default();
    println!(
        "merges settled after {:.0} s: events has {parts} active parts, {rows} rows, {:.0} MiB on disk",
        started.elapsed().as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0)
    );
}

// ---------------------------------------------------------------------------------------------
// The API

/// The bench calls no audit route.
struct NoTrail;

impl AuditTrail for NoTrail {
    fn record(&self, _read: AuditRead) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Turns on `log_queries` for the read-only profile: the harness renders `users.xml` from the
/// deploy template and ClickHouse reloads it within seconds. Returns whether it took effect.
async fn log_api_queries(server: &ClickHouseServer) -> bool {
    let Some(dir) = server.log().parent().map(std::path::Path::to_path_buf) else {
        return false;
    };
    let path = dir.join("users.xml");
    let Ok(users) = std::fs::read_to_string(&path) else {
        return false;
    };
    let edited = users.replacen(
        "<readonly>2</readonly>",
        "<readonly>2</readonly><log_queries>1</log_queries>",
        1,
    );
    if std::fs::write(&path, edited).is_err() {
        return false;
    }
    let api = server.client_as("api");
    for _ in 0..40 {
        let value: Result<String, _> = api
            .query("SELECT value FROM system.settings WHERE name = 'log_queries'")
            .fetch_one()
            .await;
        if matches!(value.as_deref(), Ok("1")) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

async fn start_api(server: &ClickHouseServer) -> (String, String, CancellationToken) {
    let key = generate_key(Role::Analyst, Some("bench")).unwrap();
    let toml = format!(
        r#"
[api]
listen = "127.0.0.1:0"

[api.clickhouse]
url = "{url}"
user = "api"
password = "{password}"
database = "{DATABASE}"
compression = "none"

[api.audit_clickhouse]
url = "{url}"
user = "auditor"
password = "{password}"
compression = "none"

[api.limits]
rate_per_second = 1000000
rate_burst = 1000000

{keys}
"#,
        url = server.url(),
        password = server.password(),
        keys = key.config_toml(),
    );
    let settings = ApiSettings::load(&ConfigSource::from_toml_str(&toml).unwrap()).unwrap();
    let (state, health) = build_state(&settings, Arc::new(NoTrail)).unwrap();
    let metrics = ledgerline_service::telemetry::prometheus().unwrap();
    let app = server::router(state, health, metrics);
    let shutdown = CancellationToken::new();
    let (addr, _task) = server::serve(settings.api.listen, app, shutdown.clone())
        .await
        .unwrap();
    (format!("http://{addr}"), key.key, shutdown)
}

// ---------------------------------------------------------------------------------------------
// Measuring

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    /// GETs `path` with `query`; the JSON answer and the time it took. Panics on non-200.
    async fn get(&self, path: &str, query: &[(&str, String)]) -> (serde_json::Value, Duration) {
        let started = Instant::now();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .query(query)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        let elapsed = started.elapsed();
        assert!(
            status.is_success(),
            "{path} {query:?}: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        (serde_json::from_slice(&body).unwrap(), elapsed)
    }
}

struct Outcome {
    name: &'static str,
    target: &'static str,
    samples: Vec<Duration>,
    /// Events (or buckets) per answer, averaged.
    answer: f64,
    load: String,
    /// What ClickHouse did for the scenario's requests, per kind of query.
    server: Vec<(String, u64, f64, f64, f64, u64)>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// How many items an answer holds: events, buckets, or timeline events.
fn answer_size(body: &serde_json::Value) -> usize {
    ["events", "buckets", "timeline"]
        .iter()
        .find_map(|key| body.get(*key).and_then(|v| v.as_array()).map(Vec::len))
        .unwrap_or(0)
}

struct Bench {
    api: Api,
    admin: clickhouse::Client,
    query_log: bool,
    iterations: u64,
    budget: Duration,
}

impl Bench {
    /// Times `request(i)` sequentially after 5 warm-up calls.
    async fn run<F>(&self, name: &'static str, target: &'static str, mut request: F) -> Outcome
    where
        F: FnMut(u64) -> (String, Vec<(&'static str, String)>),
    {
        for i in 0..5 {
            let (path, query) = request(1_000_000 + i);
            self.api.get(&path, &query).await;
        }
        // query_log's event_time has whole seconds: start on a fresh second.
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let log_from: u32 = self
            .admin
            .query("SELECT toUInt32(now())")
            .fetch_one()
            .await
            .unwrap();
        let load = load_average();
        let started = Instant::now();
        let mut samples = Vec::new();
        let mut items = 0usize;
        for i in 0..self.iterations {
            if i >= 20 && started.elapsed() > self.budget {
                break;
            }
            let (path, query) = request(i);
            let (body, elapsed) = self.api.get(&path, &query).await;
            items += answer_size(&body);
            samples.push(elapsed);
        }
        let answer = items as f64 / samples.len().max(1) as f64;
        let server = if self.query_log {
            self.server_side(log_from).await
        } else {
            Vec::new()
        };
        samples.sort();
        let outcome = Outcome {
            name,
            target,
            samples,
            answer,
            load: format!("{load} → {}", load_average()),
            server,
        };
        print_outcome(&outcome);
        outcome
    }

    async fn server_side(&self, from: u32) -> Vec<(String, u64, f64, f64, f64, u64)> {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        let to: u32 = self
            .admin
            .query("SELECT toUInt32(now())")
            .fetch_one()
            .await
            .unwrap();
        if self
            .admin
            .query("SYSTEM FLUSH LOGS")
            .execute()
            .await
            .is_err()
        {
            return Vec::new();
        }
        self.admin
            .query(
                "WITH replaceRegexpAll(replaceRegexpAll(query, '\\\\s+', ' '), '[0-9]+', 'N') AS q0, \
                 replaceRegexpAll(q0, '\\'[^\\']*\\'', 'S') AS q \
                 SELECT concat(substring(q, 1, 32), ' … ', substring(q, position(q, ' WHERE '), 110)) AS shape, \
                 toUInt64(count()), toFloat64(quantile(0.5)(query_duration_ms)), \
                 toFloat64(avg(read_rows)), toFloat64(avg(read_bytes)), toUInt64(max(memory_usage)) \
                 FROM system.query_log \
                 WHERE toString(type) IN ('2', 'QueryFinish') AND user = 'api' \
                 AND event_time >= toDateTime(?) AND event_time < toDateTime(?) \
                 GROUP BY shape ORDER BY shape",
            )
            .bind(from)
            .bind(to)
            .fetch_all()
            .await
            .unwrap_or_default()
    }
}

fn print_outcome(outcome: &Outcome) {
    let s = &outcome.samples;
    println!(
        "{}: n={} p50={:.1} ms p99={:.1} ms max={:.1} ms ({:.0} items/answer, load {})",
        outcome.name,
        s.len(),
        ms(percentile(s, 50.0)),
        ms(percentile(s, 99.0)),
        ms(s.last().copied().unwrap_or_default()),
        outcome.answer,
        outcome.load
    );
    for (shape, count, p50, rows, bytes, memory) in &outcome.server {
        println!(
            "    clickhouse ×{count}: p50 {p50:.0} ms, {rows:.0} rows, {:.1} MiB read, peak {:.0} MiB — {shape}",
            bytes / (1024.0 * 1024.0),
            *memory as f64 / (1024.0 * 1024.0)
        );
    }
}

/// `since`/`until` of a range of `length_us` starting at a random whole second in the day.
fn range(rng: &mut Rng, start_us: i64, end_us: i64, length_us: i64) -> [(&'static str, String); 2] {
    let room_secs = ((end_us - start_us - length_us) / 1_000_000).max(1) as u64;
    let since = start_us + rng.below(room_secs) as i64 * 1_000_000;
    [
        ("since", format_time(since)),
        ("until", format_time(since + length_us)),
    ]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let total = env_number("LEDGERLINE_BENCH_EVENTS", 10_000_000);
    let iterations = env_number("LEDGERLINE_BENCH_ITERS", 200);
    let budget = Duration::from_secs(env_number("LEDGERLINE_BENCH_BUDGET_SECS", 20));
    let walks = env_number("LEDGERLINE_BENCH_WALKS", 1);
    println!(
        "query API bench: {total} events, {iterations} requests per scenario (budget {} s), \
         {} cores, load {}",
        budget.as_secs(),
        std::thread::available_parallelism().map_or(0, usize::from),
        load_average()
    );

    let clickhouse = ClickHouseServer::start().unwrap();
    let admin = clickhouse.client();
    let version: String = admin.query("SELECT version()").fetch_one().await.unwrap();
    println!("clickhouse {version} at {}", clickhouse.url());
    migrate(&admin, DATABASE, MIGRATIONS).await.unwrap();
    // The archive database the API's audit side points at (unused here, but it must exist
    // for /health).
    admin
        .query("CREATE DATABASE IF NOT EXISTS ledgerline_audit")
        .execute()
        .await
        .unwrap();

    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let end_us = now_us / 1_000_000 * 1_000_000;
    let start_us = end_us - DAY_US;
    let jobs = load(&admin, total, start_us).await;
    settle(&admin).await;
    let stored: u64 = admin
        .query(&format!("SELECT count() FROM {DATABASE}.events"))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(stored, total, "every generated event is stored");

    let query_log = log_api_queries(&clickhouse).await;
    if !query_log {
        println!(
            "(system.query_log could not be turned on for the api user: no server-side figures)"
        );
    }
    let (base, key, shutdown) = start_api(&clickhouse).await;
    let bench = Bench {
        api: Api {
            http: reqwest::Client::builder().build().unwrap(),
            base,
            key,
        },
        admin: admin.clone(),
        query_log,
        iterations,
        budget,
    };

    let mut outcomes = Vec::new();
    let mut rng = Rng(1);
    outcomes.push(
        bench
            .run(
                "search, 1 h, first page (limit 100)",
                "p50 ≤ 100 ms, p99 ≤ 300 ms",
                |_| {
                    let mut query = range(&mut rng, start_us, end_us, HOUR_US).to_vec();
                    query.push(("limit", "100".to_owned()));
                    ("/v1/events".to_owned(), query)
                },
            )
            .await,
    );

    // Page 50: walk there once per sampled hour, then time the 50th page's request.
    let mut walked = Vec::new();
    let walk_started = Instant::now();
    for _ in 0..walks.max(1) {
        let window = range(&mut rng, start_us, end_us, HOUR_US).to_vec();
        let mut cursor: Option<String> = None;
        for _ in 0..49 {
            let mut query = window.clone();
            query.push(("limit", "100".to_owned()));
            if let Some(cursor) = &cursor {
                query.push(("cursor", cursor.clone()));
            }
            let (body, _) = bench.api.get("/v1/events", &query).await;
            cursor = body["next_cursor"].as_str().map(str::to_owned);
            assert!(cursor.is_some(), "an hour holds more than 50 pages");
        }
        walked.push((window, cursor.unwrap()));
    }
    println!(
        "walked {} hours to page 50 in {:.1} s ({:.1} ms per page on average)",
        walked.len(),
        walk_started.elapsed().as_secs_f64(),
        walk_started.elapsed().as_secs_f64() * 1e3 / (walked.len() * 49) as f64
    );
    outcomes.push(
        bench
            .run("search, 1 h, page 50 (by cursor)", "", |i| {
                let (window, cursor) = &walked[(i as usize) % walked.len()];
                let mut query = window.clone();
                query.push(("limit", "100".to_owned()));
                query.push(("cursor", cursor.clone()));
                ("/v1/events".to_owned(), query)
            })
            .await,
    );

    for (name, target, interval) in [
        (
            "histogram, 24 h by level, 1 h buckets",
            "p50 ≤ 300 ms",
            "1h",
        ),
        ("histogram, 24 h by level, 5 m buckets", "", "5m"),
    ] {
        outcomes.push(
            bench
                .run(name, target, |_| {
                    (
                        "/v1/stats/histogram".to_owned(),
                        vec![
                            ("since", format_time(start_us)),
                            ("until", format_time(end_us)),
                            ("interval", interval.to_owned()),
                            ("by", "level".to_owned()),
                        ],
                    )
                })
                .await,
        );
    }

    assert!(!jobs.is_empty(), "some jobs were sampled");
    outcomes.push(
        bench
            .run("job timeline (/v1/jobs/{id}, 20 events)", "", |_| {
                let job = &jobs[rng.below(jobs.len() as u64) as usize];
                (format!("/v1/jobs/{job}"), Vec::new())
            })
            .await,
    );

    for (name, length) in [
        ("free text `quokka` (0.1 %), 1 h", HOUR_US),
        ("free text `quokka` (0.1 %), 24 h", DAY_US),
    ] {
        outcomes.push(
            bench
                .run(name, "", |_| {
                    let mut query = if length == DAY_US {
                        vec![
                            ("since", format_time(start_us)),
                            ("until", format_time(end_us)),
                        ]
                    } else {
                        range(&mut rng, start_us, end_us, length).to_vec()
                    };
                    query.push(("text", RARE.to_owned()));
                    query.push(("limit", "100".to_owned()));
                    ("/v1/events".to_owned(), query)
                })
                .await,
        );
    }
    shutdown.cancel();

    println!();
    println!("{total} events over 24 h; sequential requests over one keep-alive connection");
    println!();
    println!("| scenario | n | p50 (ms) | p99 (ms) | max (ms) | items/answer | target |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | --- |");
    for outcome in &outcomes {
        let s = &outcome.samples;
        let p50 = ms(percentile(s, 50.0));
        let p99 = ms(percentile(s, 99.0));
        let verdict = match outcome.target {
            "" => String::new(),
            target if target.contains("p99") => format!(
                "{target}: {}",
                if p50 <= 100.0 && p99 <= 300.0 {
                    "met"
                } else {
                    "**missed**"
                }
            ),
            target => format!(
                "{target}: {}",
                if p50 <= 300.0 { "met" } else { "**missed**" }
            ),
        };
        println!(
            "| {} | {} | {p50:.1} | {p99:.1} | {:.1} | {:.0} | {verdict} |",
            outcome.name,
            s.len(),
            ms(s.last().copied().unwrap_or_default()),
            outcome.answer
        );
    }
    println!();
    println!("load average at the end: {}", load_average());
}
