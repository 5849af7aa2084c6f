pub mod config;
pub mod journal;
pub mod record;
pub mod sinks;
