//! The REST handlers, one module per area.

pub mod audit;
pub mod events;
pub mod jobs;
pub mod whoami;
