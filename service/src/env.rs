//! Every environment variable Ledgerline reads, declared in one module (as Quickwit does), so
//! that an operator can find them all and the config loader knows which `LEDGERLINE_*`
//! variables are *not* configuration overrides.

/// Path of the TOML configuration file. When unset, `./ledgerline.toml` is read if present.
pub const CONFIG_PATH: &str = "LEDGERLINE_CONFIG";

/// Prefix of configuration overrides: `LEDGERLINE_<SECTION>__<KEY>` overrides `key` in
/// `[section]`, e.g. `LEDGERLINE_KAFKA__BROKERS=10.0.0.1:9092`. Nested tables add more `__`.
pub const OVERRIDE_PREFIX: &str = "LEDGERLINE_";

/// Separator between nesting levels in an override name.
pub const OVERRIDE_SEPARATOR: &str = "__";

/// Where the deploy scripts and the test harness cache the broker binary and build output
/// (default `~/.cache/ledgerline`). Read by scripts and the harness, never by services.
pub const CACHE_DIR: &str = "LEDGERLINE_CACHE_DIR";

/// Path of the Tansu broker binary used by the test harness (default: the cached build, then
/// `tansu` on `PATH`).
pub const TANSU_BIN: &str = "LEDGERLINE_TANSU_BIN";

/// Path of the `clickhouse-server` binary used by the test harness (default: on `PATH` or
/// `/usr/bin/clickhouse-server`).
pub const CLICKHOUSE_BIN: &str = "LEDGERLINE_CLICKHOUSE_BIN";

/// Python interpreter with the Confluent client (`tests/python/requirements.txt`) for the
/// interoperability tests (default: the deploy scripts' venv, then `python3`).
pub const PYTHON: &str = "LEDGERLINE_PYTHON";

/// State directory of the local stack (default `<repo>/.ledgerline`). Scripts only.
pub const STATE_DIR: &str = "LEDGERLINE_STATE_DIR";

/// Variables with the override prefix that are not configuration keys. The config loader skips
/// them; any other `LEDGERLINE_*` variable must name a real key, so a typo fails loudly instead
/// of being ignored.
pub const NOT_OVERRIDES: &[&str] = &[
    CONFIG_PATH,
    CACHE_DIR,
    TANSU_BIN,
    CLICKHOUSE_BIN,
    PYTHON,
    STATE_DIR,
];
