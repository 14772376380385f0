//! `ledgerline-query-api` owns the axum server analysts and auditors use: search, stats, job
//! status, audit review (auditor role only), the websocket live stream, health, metrics and
//! OpenAPI. The implementation arrives with the query API issue.
