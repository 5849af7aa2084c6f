//! The daemon's `/metrics`, parsed as Prometheus text (with `prometheus-parse`), so that
//! tests assert on counters rather than on log lines.

use std::time::Duration;

use super::daemon::{http_get, Gateway};
use super::status::eventually;

/// One scrape, parsed.
pub struct Metrics {
    pub samples: Vec<prometheus_parse::Sample>,
    pub text: String,
}

impl Metrics {
    /// The value of `name` whose labels include every pair of `labels`; panics if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in /metrics:\n{}", self.text))
    }

    /// The value of `name` whose labels include every pair of `labels`, if there is one (a
    /// histogram gives its count).
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            })
    }

    /// [`Metrics::value`] of a counter, as the whole number it is.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.value(name, labels) as u64
    }
}

/// `GET /metrics`, parsed; panics unless it is Prometheus text with HELP lines.
pub async fn scrape(gw: &Gateway) -> Metrics {
    let (code, text) = http_get(gw.http_addr(), "/metrics").await;
    assert_eq!(code, 200, "/metrics answered {code}: {text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text ({e}):\n{text}"));
    // Every family has HELP and TYPE lines (the parser keeps the HELP texts).
    assert!(
        scrape.docs.contains_key("tidegate_readings_received_total"),
        "HELP lines missing:\n{text}"
    );
    Metrics {
        samples: scrape.samples,
        text,
    }
}

/// Scrapes until `ok` holds, or fails with `what`, the last scrape and the log after
/// `within`.
pub async fn scrape_until(
    gw: &Gateway,
    what: &str,
    within: Duration,
    ok: impl Fn(&Metrics) -> bool,
) -> Metrics {
    eventually(gw, what, within, async || {
        let m = scrape(gw).await;
        if ok(&m) {
            Ok(m)
        } else {
            Err(m.text)
        }
    })
    .await
}
