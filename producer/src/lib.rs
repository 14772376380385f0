//! `ledgerline-producer` is the client crate services publish through: a builder, typed
//! `audit`/`job`/`connection`/`system`/`session` events, a `tracing` layer, redaction before
//! encoding, context propagation, acknowledged and queued delivery, flush and metrics. Kafka
//! settings come from `ledgerline_service::kafka`. The implementation arrives with the
//! producer issue.
