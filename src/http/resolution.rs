//! The resolution of the history held, in words: "oldest 6h at 1/8, then 2h at 1/2", from
//! the journal's thinned spans. Shared by `tidegate status` and the status page (through
//! `/api/status`), so both say it the same way.

use std::time::Duration;

use crate::journal::ThinnedSpan;

/// Runs of equal factor listed before the rest is summed up as "…".
const MAX_RUNS: usize = 4;

/// The resolution of the thinned part of the history, oldest first, or `None` when no
/// span is held (the whole history is at full resolution).
///
/// Neighbouring spans of one factor read as one run; a run lasts from the ingest time of
/// its first reading to that of its last. What follows the last run is at full resolution.
pub fn describe(spans: &[ThinnedSpan]) -> Option<String> {
    let mut runs: Vec<(u64, u64, u32)> = Vec::new();
    for s in spans {
        match runs.last_mut() {
            Some(run) if run.2 == s.factor => run.1 = s.last_ms.max(run.1),
            _ => runs.push((s.first_ms, s.last_ms, s.factor)),
        }
    }
    let mut words = Vec::new();
    for (i, &(first_ms, last_ms, factor)) in runs.iter().enumerate() {
        if i == MAX_RUNS {
            words.push("…".to_owned());
            break;
        }
        let lead = if i == 0 { "oldest" } else { "then" };
        words.push(format!(
            "{lead} {} at 1/{factor}",
            length(last_ms.saturating_sub(first_ms))
        ));
    }
    (!words.is_empty()).then(|| words.join(", "))
}

/// A span's length in its two largest units ("6h", "2h 30m", "3days 4h"), seconds at the
/// finest: the resolution of a history is told in hours, not milliseconds.
fn length(ms: u64) -> String {
    let text = humantime::format_duration(Duration::from_secs(ms / 1000)).to_string();
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn span(first: u64, first_h: u64, last_h: u64, factor: u32) -> ThinnedSpan {
        ThinnedSpan {
            first,
            last: first + 99,
            factor,
            first_ms: first_h * H,
            last_ms: last_h * H,
        }
    }

    #[test]
    fn the_resolution_reads_oldest_first_with_neighbouring_spans_of_one_factor_as_one() {
        assert_eq!(describe(&[]), None);
        let spans = [span(1, 0, 3, 8), span(101, 3, 6, 8), span(201, 6, 8, 2)];
        assert_eq!(
            describe(&spans).as_deref(),
            Some("oldest 6h at 1/8, then 2h at 1/2")
        );
        let odd = [ThinnedSpan {
            last_ms: 2 * H + 30 * 60_000 + 5_400,
            ..span(1, 0, 0, 64)
        }];
        assert_eq!(describe(&odd).as_deref(), Some("oldest 2h 30m at 1/64"));
    }

    #[test]
    fn many_runs_end_in_an_ellipsis() {
        let spans: Vec<ThinnedSpan> = (0..6)
            .map(|i| span(1 + i * 100, i, i + 1, if i % 2 == 0 { 4 } else { 2 }))
            .collect();
        assert_eq!(
            describe(&spans).as_deref(),
            Some("oldest 1h at 1/4, then 1h at 1/2, then 1h at 1/4, then 1h at 1/2, …")
        );
    }
}
