//! `ledgerline-producer` is the client crate services publish through.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use ledgerline_producer::{Ledger, event::{Actor, Outcome}};
//! use tracing_subscriber::prelude::*;
//!
//! let ledger = Ledger::builder("billing").service_version("1.4.0").build().await?;
//! tracing_subscriber::registry().with(ledger.tracing_layer()).init();
//!
//! let actor = Actor { id: "u-42".into(), kind: "user".into(), ip: "192.0.2.7".into(), user_agent: None };
//! ledger
//!     .audit("invoice.refund", actor, "refund", Outcome::Success, serde_json::json!({"amount": 12}))
//!     .message("Refund issued for the March invoice")
//!     .send()
//!     .await?;
//! ledger.flush(std::time::Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! - [`Ledger`]: the handle; `send` waits for the broker's acknowledgement (acks=all,
//!   idempotent), `publish` queues for background delivery (see [`ledger`] for the guarantees).
//! - [`draft`]: typed builders whose constructors take the mandatory fields.
//! - [`redact`]: secrets are removed before encoding.
//! - [`context`] and [`layer`]: span context propagation and the `tracing` layer.

pub mod config;
pub mod context;
pub mod draft;
pub mod error;
pub mod layer;
pub mod ledger;
pub mod redact;

pub use config::{ProducerConfig, QueueFullPolicy};
pub use error::{BuildError, FlushTimeout, PublishError};
pub use layer::LedgerLayer;
pub use ledger::{Delivered, DeliveryFailure, DeliveryStats, Ledger, LedgerBuilder};
pub use ledgerline_schemas::event;
