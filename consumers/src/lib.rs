//! `ledgerline-consumers` owns the one consumer runtime (subscribe, decode, batch, commit,
//! dead-letter, retry, shutdown) and its sinks, each in its own folder: `clickhouse` (the
//! projector), `archive` (the tamper-evident audit archive) and `fanout` (the live-stream hub
//! the query API embeds). The implementation arrives with the projector issue.
