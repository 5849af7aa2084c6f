//! The human-readable `tidegate status` view.

use std::fmt::Write;

use crate::config::Config;
use crate::journal::Summary;

/// Renders `summary` for a terminal; `now_ms` gives ages.
pub fn render(summary: &Summary, config: &Config, now_ms: u64) -> String {
    let mut s = String::new();
    let max = config.journal.max_size.as_u64().max(1);
    let _ = writeln!(s, "journal   {}", summary.dir.display());
    let _ = writeln!(
        s,
        "records   {} held (seq {}..{}), next seq {}",
        summary.records,
        summary.first_seq.map_or("-".into(), |v| v.to_string()),
        summary.last_seq.map_or("-".into(), |v| v.to_string()),
        summary.next_seq
    );
    let _ = writeln!(
        s,
        "size      {} of {} max ({:.1}%), {} on disk",
        bytesize::ByteSize::b(summary.bytes_held),
        config.journal.max_size,
        summary.bytes_held as f64 * 100.0 / max as f64,
        bytesize::ByteSize::b(summary.disk_bytes)
    );
    if summary.dropped_total > 0 {
        let _ = writeln!(
            s,
            "dropped   {} readings deleted by on_full = \"drop-oldest\" before every upstream had them",
            summary.dropped_total
        );
    }
    if summary.upstreams.is_empty() {
        let _ = writeln!(
            s,
            "upstreams none configured: readings are held until one is"
        );
    }
    for u in &summary.upstreams {
        let share = if summary.records == 0 {
            0.0
        } else {
            u.backlog as f64 / summary.records as f64
        };
        let filled = (share * 20.0).round() as usize;
        let age = u
            .oldest_unsent_ms
            .map(|t| {
                humantime::format_duration(std::time::Duration::from_secs(
                    now_ms.saturating_sub(t) / 1000,
                ))
                .to_string()
            })
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "upstream  {:<16} [{}{}] backlog {:>10}  oldest unsent {:>12}  cursor {}",
            u.name,
            "#".repeat(filled.min(20)),
            ".".repeat(20 - filled.min(20)),
            u.backlog,
            age,
            u.cursor
        );
    }
    s
}
