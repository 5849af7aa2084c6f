pub mod config;
pub mod record;
pub mod sinks;
