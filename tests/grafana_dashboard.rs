//! The Grafana dashboard, `deploy/grafana/tidegate.json`, against the real daemon: every
//! metric name its queries use (panel targets, rows' nested panels included, and template
//! variables) is one a running `tidegate` exports on `/metrics`, so a renamed metric cannot
//! leave a panel silently empty.
//!
//! The daemon runs on loopback with one Kafka upstream pointing at a port nobody listens on
//! (never connected, no broker needed) and with the constrained-uplink keys set (bandwidth,
//! live lane, budget, send windows), so that the lane, budget and window families are
//! exported; a small firmware-sim fleet gives the ingest and journal series samples.
//!
//! The names exported are read from the scrape's `# TYPE` lines and samples, the way
//! Prometheus stores them: a counter family `x` is queried as `x_total`, a histogram `x` as
//! `x_bucket`, `x_sum` and `x_count` (so a bare counter or histogram family name in a query
//! is reported missing, as it would match nothing in Prometheus). Families declared but
//! without a sample at the moment (e.g. `tidegate_upstream_budget_exhausted_at_seconds`
//! before any use of the budget) count as exported through their `# TYPE` line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::metrics::{self, Metrics};
use common::{free_port, Fleet, Gateway};
use serde_json::{json, Value};

/// The prefix of the daemon's own metric names, the ones the dashboard is checked for.
const PREFIX: &str = "tidegate_";

/// What the issue asks the dashboard to show: each name must be used by at least one
/// panel's query.
const REQUIRED: &[&str] = &[
    // Ingest rate by source, rejections by reason.
    "tidegate_readings_received_total",
    "tidegate_readings_rejected_total",
    // Journal bytes against its cap, commit latency (quantiles and mean).
    "tidegate_journal_bytes",
    "tidegate_journal_max_bytes",
    "tidegate_journal_commit_duration_seconds_bucket",
    "tidegate_journal_commit_duration_seconds_sum",
    "tidegate_journal_commit_duration_seconds_count",
    // Per upstream.
    "tidegate_upstream_backlog_records",
    "tidegate_upstream_oldest_unsent_age_seconds",
    "tidegate_upstream_sent_total",
    "tidegate_upstream_connected",
    // Constrained uplinks.
    "tidegate_upstream_wire_bytes_total",
    "tidegate_upstream_live_readings_total",
    "tidegate_upstream_live_skipped_total",
    "tidegate_upstream_bandwidth_bytes_per_second",
    "tidegate_upstream_budget_used_bytes",
    "tidegate_upstream_budget_left_bytes",
    "tidegate_upstream_budget_exhausted_at_seconds",
    "tidegate_upstream_send_window_open",
];

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/tidegate.json")
}

fn dashboard() -> Value {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel of `panels`, depth first: a row's nested `panels` (a collapsed row holds
/// its panels there) follow the row.
fn walk_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for p in panels.as_array().into_iter().flatten() {
        out.push(p);
        walk_panels(&p["panels"], out);
    }
}

fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    walk_panels(&dashboard["panels"], &mut out);
    out
}

/// Every PromQL expression of the dashboard, with where it is: each panel target's `expr`
/// (rows' nested panels included) and each template variable's query (a string, or an
/// object with a `query`) and `definition`.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dashboard) {
        let title = p["title"].as_str().unwrap_or("(untitled)");
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("panel {title:?}"), expr.to_owned()));
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = v["name"].as_str().unwrap_or("(unnamed)");
        let query = v["query"].as_str().or_else(|| v["query"]["query"].as_str());
        for q in [query, v["definition"].as_str()].into_iter().flatten() {
            out.push((format!("variable ${name}"), q.to_owned()));
        }
    }
    out
}

/// A character of a Prometheus metric name.
fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names starting with [`PREFIX`] in a PromQL expression: whole identifiers only
/// (`foo_tidegate_x` is not one), taken with every name character so that a misspelt name
/// (`tidegate_Journal_bytes`) stays whole and is reported.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut prev: Option<char> = None;
    for (i, c) in expr.char_indices() {
        if expr[i..].starts_with(PREFIX) && !prev.is_some_and(name_char) {
            let end = expr[i..]
                .find(|c: char| !name_char(c))
                .map_or(expr.len(), |n| i + n);
            out.insert(expr[i..end].to_owned());
        }
        prev = Some(c);
    }
    out
}

/// The metric names a `/metrics` text exports, as Prometheus stores them: every sample's
/// name, and for every `# TYPE` line the names its type gives (counter `x`: `x_total`;
/// histogram `x`: `x_bucket`, `x_sum`, `x_count`; summary `x`: `x`, `x_sum`, `x_count`;
/// others: `x`).
fn exported_names(scrape: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in scrape.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" if name.ends_with("_total") => &[""],
                "counter" => &["_total"],
                "histogram" | "gaugehistogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                _ => &[""],
            };
            out.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line.find(|c: char| !name_char(c)).unwrap_or(line.len());
            if end > 0 {
                out.insert(line[..end].to_owned());
            }
        }
    }
    out
}

/// The dashboard's metric names that `exported` lacks, each with where it is used.
fn missing(dashboard: &Value, exported: &BTreeSet<String>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (at, expr) in expressions(dashboard) {
        for name in metric_names(&expr) {
            if !exported.contains(&name) {
                out.entry(name).or_default().push(at.clone());
            }
        }
    }
    out
}

/// Every metric name the panels' queries use (not the template variables').
fn panel_metric_names(dashboard: &Value) -> BTreeSet<String> {
    expressions(dashboard)
        .into_iter()
        .filter(|(at, _)| at.starts_with("panel "))
        .flat_map(|(_, expr)| metric_names(&expr))
        .collect()
}

fn report(missing: &BTreeMap<String, Vec<String>>) -> String {
    missing
        .iter()
        .map(|(name, at)| format!("  {name} (used by {})", at.join(", ")))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A gateway with one Kafka upstream nobody answers for, on a constrained uplink: bandwidth,
/// a live lane, a budget and send windows, so that every uplink family is exported.
fn start_gateway() -> Gateway {
    let kafka = free_port();
    Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-grafana\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
             [[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\ntopic = \"readings\"\n\
             request_timeout = \"3s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n\
             bandwidth = \"1MiB\"\nlive_topic = \"readings-live\"\nbudget = \"1GiB\"\nbudget_period = \"month\"\n\
             send_windows = [\"00:00-00:01\"]\n",
            dir.join("journal").display()
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_grafana_dashboard_queries_is_exported_by_a_running_daemon() {
    let dashboard = dashboard();
    let gw = start_gateway();
    let report_ = Fleet::new(gw.mqtt_addr(), 3).count(20).run().await;
    assert!(report_.all_acked(), "{report_:?}");
    let acked = report_.acked() as f64;

    let cloud = [("upstream", "cloud")];
    let m: Metrics = metrics::scrape_until(
        &gw,
        "the fleet's readings and the uplink series",
        Duration::from_secs(90),
        |m| {
            m.find("tidegate_readings_received_total", &[("source", "mqtt")]) == Some(acked)
                && m.find("tidegate_upstream_backlog_records", &cloud) == Some(acked)
                && m.find("tidegate_upstream_live_active", &cloud).is_some()
                && m.find("tidegate_upstream_send_window_open", &cloud)
                    .is_some()
                && m.find("tidegate_upstream_budget_left_bytes", &cloud)
                    .is_some()
        },
    )
    .await;
    // Nobody listens on the upstream's port.
    assert_eq!(m.value("tidegate_upstream_connected", &cloud), 0.0);

    let exported = exported_names(&m.text);
    let gone = missing(&dashboard, &exported);
    assert!(
        gone.is_empty(),
        "{} queries metrics the daemon does not export:\n{}\n\nexported:\n  {}",
        dashboard_path().display(),
        report(&gone),
        exported.iter().cloned().collect::<Vec<_>>().join("\n  ")
    );

    // The same check, against the same scrape, finds a made-up name in a collapsed row.
    let mut bad = dashboard.clone();
    bad["panels"]
        .as_array_mut()
        .expect("the dashboard has panels")
        .push(json!({
            "type": "row", "title": "made up", "collapsed": true,
            "panels": [{"title": "nowhere", "targets": [{"expr": "rate(tidegate_not_a_metric[5m])"}]}]
        }));
    let gone = missing(&bad, &exported);
    assert_eq!(
        gone.keys().collect::<Vec<_>>(),
        ["tidegate_not_a_metric"],
        "{gone:?}"
    );
    assert_eq!(gone["tidegate_not_a_metric"], ["panel \"nowhere\""]);
}

#[test]
fn the_dashboard_has_the_panels_the_issue_asks_for() {
    let d = dashboard();
    let used = panel_metric_names(&d);
    let absent: Vec<&&str> = REQUIRED.iter().filter(|n| !used.contains(**n)).collect();
    assert!(
        absent.is_empty(),
        "no panel queries {absent:?}; the panels use {used:?}"
    );
    let exprs: Vec<String> = expressions(&d).into_iter().map(|(_, e)| e).collect();
    for quantile in ["histogram_quantile(0.5,", "histogram_quantile(0.99,"] {
        assert!(
            exprs.iter().any(|e| e.contains(quantile)
                && e.contains("tidegate_journal_commit_duration_seconds_bucket")),
            "no commit latency {quantile}…) over the histogram's buckets"
        );
    }
}

#[test]
fn the_dashboard_imports_with_a_prometheus_input_and_its_variables() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "{}",
        d["schemaVersion"]
    );
    assert!(d["id"].is_null(), "an exported dashboard has no id");
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "{inputs:?}"
    );

    let vars = d["templating"]["list"].as_array().expect("templating.list");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    let instance = var("instance");
    assert_eq!(
        instance["query"]["query"],
        "label_values(tidegate_info, instance)"
    );
    let upstream = var("upstream");
    assert!(
        upstream["query"]["query"].as_str().is_some_and(|q| q
            .starts_with("label_values(tidegate_upstream_connected")
            && q.ends_with(", upstream)")),
        "{upstream}"
    );
    assert_eq!(upstream["multi"], true);
    assert_eq!(upstream["includeAll"], true);
    for v in [instance, upstream] {
        assert_eq!(v["datasource"]["uid"], "${DS_PROMETHEUS}", "{v}");
    }

    let mut ids = BTreeSet::new();
    for p in all_panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(p["id"].as_u64()), "panel id repeated: {p}");
        if p["type"] == "row" {
            continue;
        }
        assert!(
            p["description"]
                .as_str()
                .is_some_and(|s| !s.trim().is_empty()),
            "panel {title:?} has no description"
        );
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} queries nothing");
        for t in targets {
            let expr = t["expr"].as_str().expect("every target has an expr");
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
            assert!(
                expr.contains("instance=\"$instance\""),
                "panel {title:?} ignores $instance: {expr}"
            );
            if metric_names(expr)
                .iter()
                .any(|n| n.starts_with("tidegate_upstream_"))
            {
                assert!(
                    expr.contains("upstream=~\"$upstream\""),
                    "panel {title:?} ignores $upstream: {expr}"
                );
            }
        }
    }
}

#[test]
fn the_extractor_reports_names_a_scrape_lacks() {
    let scrape = "# HELP tidegate_readings_received Readings.\n\
                  # TYPE tidegate_readings_received counter\n\
                  tidegate_readings_received_total{source=\"mqtt\",input=\"x\"} 3\n\
                  # TYPE tidegate_upstream_budget_exhausted_at_seconds gauge\n\
                  # TYPE tidegate_journal_commit_duration_seconds histogram\n\
                  tidegate_journal_commit_duration_seconds_sum 0.5\n\
                  # TYPE tidegate_info gauge\n\
                  tidegate_info{gateway=\"g\",version=\"0.1.0\"} 1\n\
                  # EOF\n";
    let exported = exported_names(scrape);
    for name in [
        "tidegate_readings_received_total",
        "tidegate_upstream_budget_exhausted_at_seconds",
        "tidegate_journal_commit_duration_seconds_bucket",
        "tidegate_journal_commit_duration_seconds_count",
        "tidegate_info",
    ] {
        assert!(exported.contains(name), "{name} not in {exported:?}");
    }
    // A counter's family name and a histogram's base name match nothing in Prometheus.
    assert!(!exported.contains("tidegate_readings_received"));
    assert!(!exported.contains("tidegate_journal_commit_duration_seconds"));

    assert_eq!(
        metric_names(
            "sum(rate(tidegate_not_a_metric[5m])) / on() group_left tidegate_info{x=\"$y\"} + foo_tidegate_info"
        ),
        BTreeSet::from(["tidegate_info".to_owned(), "tidegate_not_a_metric".to_owned()])
    );

    let d = json!({
        "panels": [
            {"type": "timeseries", "title": "top", "targets": [
                {"expr": "rate(tidegate_readings_received_total[5m])"},
                {"expr": "tidegate_readings_received"}
            ]},
            {"type": "row", "title": "collapsed", "collapsed": true, "panels": [
                {"type": "stat", "title": "nested", "targets": [{"expr": "tidegate_not_a_metric"}]}
            ]}
        ],
        "templating": {"list": [
            {"name": "instance", "query": "label_values(tidegate_info, instance)"},
            {"name": "upstream", "query": {"query": "label_values(tidegate_upstream_gone, upstream)"}}
        ]}
    });
    let gone = missing(&d, &exported);
    assert_eq!(
        gone.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "tidegate_not_a_metric",
            "tidegate_readings_received",
            "tidegate_upstream_gone"
        ],
        "{gone:?}"
    );
    assert_eq!(gone["tidegate_not_a_metric"], ["panel \"nested\""]);
    assert_eq!(gone["tidegate_upstream_gone"], ["variable $upstream"]);
}

/// `promtool check rules` on `exprs`, each as a recording rule: Prometheus's own parser and
/// type checker (a range vector where an instant one is needed, a bad function or matcher
/// fails). The dashboard's variables are replaced by values of their kind first. Returns
/// promtool's output, and whether it accepted every expression.
fn promtool_check(promtool: &Path, exprs: &[(String, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rules = String::from("groups:\n- name: dashboard\n  rules:\n");
    for (i, (_, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", "gw-grafana")
            .replace("$upstream", ".*");
        // A JSON string is a YAML double-quoted scalar.
        let quoted = serde_json::to_string(&expr).expect("a string");
        rules.push_str(&format!(
            "  - record: dashboard_expr_{i}\n    expr: {quoted}\n"
        ));
    }
    let path = dir.path().join("rules.yml");
    std::fs::write(&path, rules).expect("write rules");
    let out = std::process::Command::new(promtool)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every panel query is PromQL that Prometheus accepts (scripts/test.sh installs Debian's
/// `prometheus` for `promtool`; without it the check says so and is skipped). A broken
/// expression is refused by the same check.
#[test]
fn every_panel_query_is_promql_prometheus_accepts() {
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(promtool) = promtool else {
        eprintln!(
            "promtool is not installed; skipped (scripts/test.sh installs Debian's prometheus)"
        );
        return;
    };
    let panels: Vec<(String, String)> = expressions(&dashboard())
        .into_iter()
        .filter(|(at, _)| at.starts_with("panel "))
        .collect();
    assert!(panels.len() >= 20, "{} panel queries", panels.len());
    let (ok, text) = promtool_check(&promtool, &panels);
    assert!(ok, "promtool refused a panel query:\n{text}");
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", panels.len())),
        "{text}"
    );

    let broken = [(
        "panel \"broken\"".to_owned(),
        "sum by (upstream) (rate(tidegate_upstream_sent_total[$__rate_interval])".to_owned(),
    )];
    let (ok, text) = promtool_check(&promtool, &broken);
    assert!(!ok, "promtool accepted an unclosed expression:\n{text}");
}
