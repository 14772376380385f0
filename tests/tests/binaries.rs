//! Every binary, started with a bad configuration, exits non-zero on its own, within a bound,
//! and its error report (the `Error:` block `main` prints) names what is wrong: the key, with
//! its section, or the broker address it could not reach. Three kinds of bad configuration:
//! an unknown key, a bad value (of the wrong type, or one `validate()` refuses) and an
//! unreachable broker (a closed loopback port).
//!
//! Each run gets its own `ledgerline.toml` through `LEDGERLINE_CONFIG`, in its own working
//! directory, with every other `LEDGERLINE_*` variable, `RUST_LOG` and `RUST_BACKTRACE`
//! removed, so nothing from the developer's shell or the harness reaches the binary.
//!
//! The binaries are built and found by [`ledgerline_tests::binaries`].

// Test helpers may panic: a panic is the failure report.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use ledgerline_tests::binaries::binary;
use ledgerline_tests::process::{self, ManagedChild};
use ledgerline_tests::{names, Harness};

/// The consumer binary's subcommand for the projector (`clickhouse` is its old alias). The one
/// place to change when it is renamed.
const CONSUMER_SUBCOMMAND: &str = "projector";

/// A configuration error is found before any I/O; this only bounds a hang.
const CONFIG_ERROR_BOUND: Duration = Duration::from_secs(30);

/// An unreachable broker must end the process by itself, however the binary waits for it
/// (admin timeouts are 10 s); longer than this is a process that retries forever.
const UNREACHABLE_BROKER_BOUND: Duration = Duration::from_secs(60);

/// How a run ended.
struct Run {
    status: ExitStatus,
    /// Everything the process wrote, stdout and stderr.
    output: String,
}

impl Run {
    /// The error report `main` printed on its way out (`Error: ...` and its causes), without
    /// the log lines before it.
    fn error_report(&self) -> &str {
        self.output
            .rfind("Error: ")
            .map_or("", |start| &self.output[start..])
    }

    /// Asserts a non-zero exit (not a signal) whose error report contains every one of `names`.
    #[track_caller]
    fn assert_failed_naming(&self, what: &str, names: &[&str]) {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "{what}: expected a non-zero exit, got {}; output:\n{}",
            self.status,
            self.output
        );
        let report = self.error_report();
        assert!(
            !report.is_empty(),
            "{what}: no `Error:` report in the output:\n{}",
            self.output
        );
        for name in names {
            assert!(
                report.contains(name),
                "{what}: the error report does not name `{name}`:\n{report}\n(full output:\n{})",
                self.output
            );
        }
    }
}

/// Runs `binary args` with `config` as its `ledgerline.toml` and waits up to `bound` for it to
/// exit. A process still running then is killed, and the test fails saying so.
fn run(binary_name: &str, args: &[&str], config: &str, bound: Duration) -> Run {
    let dir = process::scratch_dir("binary-").unwrap();
    let config_path = dir.path().join("ledgerline.toml");
    std::fs::write(&config_path, config).unwrap();
    let log = dir.path().join("output.log");
    let mut command = Command::new(binary(binary_name));
    command.args(args).current_dir(dir.path());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("LEDGERLINE_") {
            command.env_remove(&name);
        }
    }
    // No log filter and no backtraces from the caller's shell: the report is the message alone.
    command
        .env_remove("RUST_LOG")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env(ledgerline_service::env::CONFIG_PATH, &config_path);
    let mut child = ManagedChild::spawn(binary_name, command, &log).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.exit_status() {
            break status;
        }
        if started.elapsed() > bound {
            child.kill();
            panic!(
                "`{binary_name} {}` was still running after {bound:?} with\n{config}\noutput:\n{}",
                args.join(" "),
                process::tail(&log, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Run {
        status,
        output: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// `127.0.0.1:<port>` with nothing listening: connections are refused at once.
fn closed_address() -> String {
    format!("127.0.0.1:{}", process::free_port().unwrap())
}

/// Runs each `(config, names)` case and checks that it fails naming `names`.
fn assert_each_fails(binary_name: &str, args: &[&str], cases: &[(&str, &[&str])]) {
    for (config, names) in cases {
        let what = format!("`{binary_name} {}` with\n{config}", args.join(" "));
        run(binary_name, args, config, CONFIG_ERROR_BOUND).assert_failed_naming(&what, names);
    }
}

// --- ledgerline-registry ---

#[test]
fn registry_refuses_an_unknown_key() {
    assert_each_fails(
        "ledgerline-registry",
        &[],
        &[
            ("[registry]\ntopik = \"_schemas\"\n", &["registry.topik"]),
            (
                "[kafka]\nbrokerz = \"127.0.0.1:9092\"\n",
                &["kafka.brokerz"],
            ),
        ],
    );
}

#[test]
fn registry_refuses_a_bad_value() {
    assert_each_fails(
        "ledgerline-registry",
        &[],
        &[
            // Wrong type: an address is a string.
            ("[registry]\nlisten = 8081\n", &["registry.listen"]),
            // Parses, but validate() refuses it.
            (
                "[registry]\ntopic = \"not a topic\"\n",
                &["registry.topic", "not a topic"],
            ),
        ],
    );
}

#[test]
fn registry_exits_naming_an_unreachable_broker() {
    let address = closed_address();
    let config = format!(
        "[kafka]\nbrokers = \"{address}\"\n[registry]\nlisten = \"127.0.0.1:0\"\ntopic = \"{}\"\n",
        names::unique("schemas")
    );
    run(
        "ledgerline-registry",
        &[],
        &config,
        UNREACHABLE_BROKER_BOUND,
    )
    .assert_failed_naming(
        "ledgerline-registry with an unreachable broker",
        &[&address],
    );
}

// --- ledgerline-admin ---

const ADMIN_HEALTH: &[&str] = &["kafka-health", "--timeout-secs", "3"];

#[test]
fn admin_refuses_an_unknown_key() {
    assert_each_fails(
        "ledgerline-admin",
        ADMIN_HEALTH,
        &[
            (
                "[kafka]\nbrokerz = \"127.0.0.1:9092\"\n",
                &["kafka.brokerz"],
            ),
            // An unknown section is as much a typo as an unknown key.
            ("[kafak]\nbrokers = \"127.0.0.1:9092\"\n", &["kafak"]),
        ],
    );
}

#[test]
fn admin_refuses_a_bad_value() {
    assert_each_fails(
        "ledgerline-admin",
        ADMIN_HEALTH,
        &[
            // Wrong type: not one of the compression names.
            (
                "[kafka]\ncompression = \"brotli\"\n",
                &["kafka.compression"],
            ),
            // Parses, but validate() refuses it.
            ("[kafka]\nbrokers = \" , \"\n", &["kafka.brokers"]),
            (
                "[kafka]\nsecurity_protocol = \"sasl_ssl\"\n",
                &["kafka.sasl"],
            ),
        ],
    );
}

#[test]
fn admin_exits_naming_an_unreachable_broker() {
    let address = closed_address();
    let config = format!("[kafka]\nbrokers = \"{address}\"\n");
    let topic = names::topic();
    let commands: [&[&str]; 2] = [ADMIN_HEALTH, &["create-topics", topic.as_str()]];
    for args in commands {
        let what = format!(
            "`ledgerline-admin {}` with an unreachable broker",
            args.join(" ")
        );
        run("ledgerline-admin", args, &config, UNREACHABLE_BROKER_BOUND)
            .assert_failed_naming(&what, &[&address]);
    }
}

// --- ledgerline-consumer ---

#[test]
fn consumer_refuses_an_unknown_key() {
    assert_each_fails(
        "ledgerline-consumer",
        &[CONSUMER_SUBCOMMAND],
        &[
            ("[projector]\ngrup_id = \"g\"\n", &["projector.grup_id"]),
            (
                "[kafka]\nbrokerz = \"127.0.0.1:9092\"\n",
                &["kafka.brokerz"],
            ),
        ],
    );
}

#[test]
fn consumer_refuses_a_bad_value() {
    assert_each_fails(
        "ledgerline-consumer",
        &[CONSUMER_SUBCOMMAND],
        &[
            // Wrong type.
            (
                "[projector]\nbatch_max_events = \"many\"\n",
                &["projector.batch_max_events"],
            ),
            // Parses, but validate() refuses it.
            (
                "[projector]\nbatch_max_events = 0\n",
                &["projector.batch_max_events"],
            ),
        ],
    );
}

/// Everything else reachable (the shared ClickHouse and registry), so the broker is the only
/// thing that can stop the consumer.
#[test]
fn consumer_exits_naming_an_unreachable_broker() {
    let harness = Harness::shared().unwrap();
    let address = closed_address();
    let config = format!(
        "[kafka]
brokers = \"{address}\"

[schema_registry]
url = \"{registry}\"

[projector]
group_id = \"{group}\"
listen = \"127.0.0.1:0\"

[projector.clickhouse]
url = \"{clickhouse}\"
user = \"{user}\"
password = \"{password}\"
database = \"{database}\"
",
        registry = harness.registry.url(),
        clickhouse = harness.clickhouse.url(),
        user = ledgerline_tests::clickhouse::ADMIN,
        password = harness.clickhouse.password(),
        database = names::database(),
        group = names::group(),
    );
    run(
        "ledgerline-consumer",
        &[CONSUMER_SUBCOMMAND],
        &config,
        UNREACHABLE_BROKER_BOUND,
    )
    .assert_failed_naming(
        &format!("`ledgerline-consumer {CONSUMER_SUBCOMMAND}` with an unreachable broker"),
        &[&address],
    );
}

// --- ledgerline-api ---

#[test]
fn api_refuses_an_unknown_key() {
    assert_each_fails(
        "ledgerline-api",
        &[],
        &[
            ("[api]\nlistn = \"127.0.0.1:1\"\n", &["api.listn"]),
            ("[api.limits]\nmax_pages = 5\n", &["max_pages"]),
        ],
    );
}

#[test]
fn api_refuses_a_bad_value() {
    assert_each_fails(
        "ledgerline-api",
        &[],
        &[
            // The API reads as the read-only users, never as a writer.
            (
                "[api.clickhouse]\nuser = \"projector\"\n",
                &["api.clickhouse.user"],
            ),
            ("[api.limits]\nmax_page = 0\n", &["api.limits.max_page"]),
            (
                "[[api.keys]]\nid = \"k\"\nrole = \"auditor\"\nsha256 = \"abc\"\n",
                &["api.keys", "`k`", "sha256"],
            ),
            (
                "[[api.keys]]\nid = \"k\"\nrole = \"root\"\nsha256 = \"abc\"\n",
                &["root"],
            ),
        ],
    );
}

/// `keys create` prints the key once and the config lines that hold only its SHA-256.
#[test]
fn api_keys_create_prints_a_key_and_its_hash_line() {
    let run = run(
        "ledgerline-api",
        &["keys", "create", "--role", "auditor", "--id", "sec-team"],
        "",
        CONFIG_ERROR_BOUND,
    );
    assert!(run.status.success(), "{}", run.output);
    let key = run
        .output
        .split_whitespace()
        .find(|word| word.starts_with("llk_"))
        .unwrap_or_else(|| panic!("no key in\n{}", run.output));
    assert!(key.len() >= 4 + 43, "{key}");
    let hash = ledgerline_query_api::auth::key_hash(key);
    let entry =
        format!("[[api.keys]]\nid = \"sec-team\"\nrole = \"auditor\"\nsha256 = \"{hash}\"\n");
    assert!(run.output.contains(&entry), "{}", run.output);
    assert_eq!(
        run.output.matches(key).count(),
        1,
        "the key is printed once"
    );
    let other = run_keys_plain();
    assert_ne!(other, key);
}

fn run_keys_plain() -> String {
    let run = run(
        "ledgerline-api",
        &["keys", "create", "--role", "analyst", "--plain"],
        "",
        CONFIG_ERROR_BOUND,
    );
    assert!(run.status.success(), "{}", run.output);
    let fields: Vec<&str> = run.output.trim().split('\t').collect();
    assert_eq!(fields.len(), 3, "{}", run.output);
    assert_eq!(ledgerline_query_api::auth::key_hash(fields[0]), fields[2]);
    assert!(fields[1].starts_with("analyst-"));
    fields[0].to_owned()
}

// --- ledgerline-consumer dlq ---

#[test]
fn dlq_inspect_and_replay_work_from_the_command_line() {
    let harness = Harness::shared().unwrap();
    let reason = names::unique("cli-reason");
    let source_topic = names::unique("cli-source");
    // One dead letter as the runtime writes them, with a reason no other test uses.
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let client = harness.broker.client_config();
        let layout = ledgerline_service::kafka::NewTopics::new(1, 1);
        ledgerline_service::kafka::ensure_topics(&client, &["ledgerline.dlq"], &layout)
            .await
            .unwrap();
        let producer: FutureProducer = client.create().unwrap();
        let values = [
            ("ledgerline.source.topic", source_topic.as_str()),
            ("ledgerline.source.partition", "0"),
            ("ledgerline.source.offset", "42"),
            ("ledgerline.dlq.reason", reason.as_str()),
            ("ledgerline.dlq.error", "a test dead letter"),
            ("ledgerline.dlq.time_us", "1764583200000000"),
        ];
        let headers = values
            .iter()
            .fold(OwnedHeaders::new(), |headers, (key, value)| {
                headers.insert(Header {
                    key,
                    value: Some(*value),
                })
            });
        producer
            .send(
                FutureRecord::<(), _>::to("ledgerline.dlq")
                    .payload("not an event")
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    });
    let config = format!("[kafka]\nbrokers = \"{}\"\n", harness.broker.bootstrap());
    let bound = Duration::from_secs(60);

    let inspect = run(
        "ledgerline-consumer",
        &["dlq", "inspect", "--reason", &reason],
        &config,
        bound,
    );
    assert!(inspect.status.success(), "{}", inspect.output);
    assert!(
        inspect.output.contains(&format!("reason={reason}")),
        "{}",
        inspect.output
    );
    assert!(
        inspect
            .output
            .contains(&format!("source={source_topic}/0/42")),
        "{}",
        inspect.output
    );
    assert!(
        inspect.output.contains("error: a test dead letter"),
        "{}",
        inspect.output
    );
    assert!(
        inspect
            .output
            .contains(&format!("1 dead letter(s) — {reason}: 1")),
        "{}",
        inspect.output
    );

    let json = run(
        "ledgerline-consumer",
        &["dlq", "inspect", "--reason", &reason, "--json"],
        &config,
        bound,
    );
    assert!(json.status.success(), "{}", json.output);
    let line: serde_json::Value =
        serde_json::from_str(json.output.lines().next().unwrap()).unwrap();
    assert_eq!(line["source_topic"], source_topic.as_str());
    assert_eq!(line["source_offset"], 42);
    assert_eq!(line["time_us"], 1_764_583_200_000_000_i64);

    let dry = run(
        "ledgerline-consumer",
        &["dlq", "replay", "--reason", &reason, "--dry-run"],
        &config,
        bound,
    );
    assert!(dry.status.success(), "{}", dry.output);
    assert!(
        dry.output.contains("would replay ledgerline.dlq/"),
        "{}",
        dry.output
    );
    assert!(
        dry.output.contains("0 replayed, 1 would be replayed"),
        "{}",
        dry.output
    );

    // A time that is not RFC 3339 is named.
    run(
        "ledgerline-consumer",
        &["dlq", "inspect", "--since", "yesterday"],
        &config,
        bound,
    )
    .assert_failed_naming("dlq inspect --since yesterday", &["--since", "yesterday"]);
}
