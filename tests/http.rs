//! The monitoring listener end to end: the real `tidegate` binary with a firmware-sim fleet
//! and a real Kafka-protocol broker (Tansu), all on loopback.
//!
//! * `/metrics` parses as Prometheus text (with `prometheus-parse`) and its counters move
//!   with traffic: readings per source, the journal, and per upstream sent, failures,
//!   retries, backlog and its age, connected state;
//! * `/health` is 200 while healthy and 503 with the reason when the journal refuses
//!   writes (a real full journal) or when an essential task ends (the task registry, in
//!   process);
//! * `status --json` matches the journal and carries the daemon's live figures;
//! * a constrained uplink (bandwidth, live lane, budget, send windows) has its series in
//!   `/metrics`, its `uplink` object in `/api/status` and its lines in `tidegate status`;
//!   a spent data budget is a warning on `/health`, which stays 200;
//! * a taken `http.listen` port stops the daemon at start-up, naming the key; a client
//!   that never sends a request is disconnected.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::metrics::{self, scrape, Metrics};
use common::status::{eventually, wait_for_health};
use common::{free_port, http_get, status_json, Fleet, Gateway, Tansu};
use firmware_sim::CancellationToken;

/// Longest any figure may take to reach the value a test waits for.
const SETTLE: Duration = Duration::from_secs(90);

fn config(mqtt: u16, dir: &Path, extra: &str, kafka_port: Option<u16>) -> String {
    let mut c = format!(
        "[gateway]\nid = \"gw-http\"\n[journal]\ndir = \"{}\"\n{extra}\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n",
        dir.join("journal").display()
    );
    if let Some(port) = kafka_port {
        c.push_str(&format!(
            "[[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{port}\"]\ntopic = \"metrics\"\nmax_batch = 500\nlinger = \"5ms\"\nrequest_timeout = \"3s\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"500ms\"\n"
        ));
    }
    c
}

/// The usual test fleet ([`Fleet`]): `devices` turbines from `first_device`, `count`
/// readings each.
fn fleet(gw: &Gateway, devices: usize, count: u64, first_device: usize) -> Fleet {
    Fleet::new(gw.mqtt_addr(), devices)
        .count(count)
        .first_device(first_device)
}

/// Scrapes until `ok` holds, for at most [`SETTLE`].
async fn scrape_until(gw: &Gateway, what: &str, ok: impl Fn(&Metrics) -> bool) -> Metrics {
    metrics::scrape_until(gw, what, SETTLE, ok).await
}

const MQTT: [(&str, &str); 1] = [("source", "mqtt")];
const CLUSTER: [(&str, &str); 1] = [("upstream", "cluster")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_follow_a_fleet_through_an_outage_of_the_cluster() {
    let tansu = Tansu::start();
    let kafka_port = tansu.port();
    let gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, "", Some(kafka_port)));

    let before = scrape(&gw).await;
    assert_eq!(before.value("tidegate_readings_received_total", &MQTT), 0.0);
    assert_eq!(before.value("tidegate_journal_appended_total", &[]), 0.0);
    assert!(before.value("process_resident_memory_bytes", &[]) > 0.0);
    assert!(before.value("process_open_fds", &[]) > 0.0);
    let sockets = before.value("tidegate_open_sockets", &[]);
    assert!(sockets >= 2.0, "the MQTT and HTTP listeners at least");
    assert_eq!(before.value("tidegate_healthy", &[]), 1.0);
    assert_eq!(
        before.value("tidegate_info", &[("gateway", "gw-http")]),
        1.0
    );

    // 1. Cluster up: a fleet's readings are journaled and forwarded.
    let report = fleet(&gw, 8, 250, 1).run().await;
    assert!(report.all_acked());
    let n = report.acked() as f64;
    assert_eq!(
        scrape(&gw)
            .await
            .value("tidegate_mqtt_connections_accepted_total", &[]),
        8.0
    );
    let m = scrape_until(&gw, "every reading forwarded", |m| {
        m.value("tidegate_upstream_sent_total", &CLUSTER) >= n
            && m.find("tidegate_upstream_backlog_records", &CLUSTER) == Some(0.0)
    })
    .await;
    assert_eq!(m.value("tidegate_readings_received_total", &MQTT), n);
    assert_eq!(m.value("tidegate_journal_appended_total", &[]), n);
    assert_eq!(m.value("tidegate_upstream_sent_total", &CLUSTER), n);
    assert_eq!(m.value("tidegate_upstream_connected", &CLUSTER), 1.0);
    assert_eq!(
        m.value("tidegate_upstream_oldest_unsent_age_seconds", &CLUSTER),
        0.0
    );
    assert!(m.value("tidegate_upstream_batches_total", &CLUSTER) >= 1.0);
    let commits = m.value("tidegate_journal_commits_total", &[]);
    assert!(commits >= 1.0);
    // Every commit is in the latency histogram (its largest bucket, +Inf, is the count).
    assert_eq!(
        m.value("tidegate_journal_commit_duration_seconds", &[]),
        commits,
        "{}",
        m.text
    );
    assert_eq!(
        m.value(
            "tidegate_readings_rejected_total",
            &[("source", "mqtt"), ("reason", "malformed")]
        ),
        0.0
    );

    // 2. Cluster down: the next readings pile up as backlog, sends fail and are retried.
    let mut tansu = tansu;
    tansu.kill();
    let down = fleet(&gw, 4, 100, 101).run().await;
    assert!(down.all_acked());
    let held = down.acked() as f64;
    let m = scrape_until(&gw, "the outage to show", |m| {
        m.value("tidegate_upstream_send_failures_total", &CLUSTER) >= 1.0
            && m.value("tidegate_upstream_retries_total", &CLUSTER) >= 1.0
            && m.find("tidegate_upstream_backlog_records", &CLUSTER) == Some(held)
            && m.value("tidegate_upstream_connected", &CLUSTER) == 0.0
    })
    .await;
    assert_eq!(m.value("tidegate_readings_received_total", &MQTT), n + held);
    assert_eq!(m.value("tidegate_journal_records", &[]), held);
    assert!(m.value("tidegate_journal_bytes", &[]) > 0.0);
    assert!(m.value("tidegate_upstream_oldest_unsent_age_seconds", &CLUSTER) >= 0.0);

    // 3. Cluster back: the backlog drains and the upstream shows connected again.
    tansu.restart();
    scrape_until(&gw, "the backlog to drain", |m| {
        m.value("tidegate_upstream_sent_total", &CLUSTER) >= n + held
            && m.find("tidegate_upstream_backlog_records", &CLUSTER) == Some(0.0)
            && m.value("tidegate_upstream_connected", &CLUSTER) == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_the_journal_and_carries_the_daemons_live_figures() {
    // No upstream reachable: everything stays in the journal as backlog.
    let kafka_port = free_port();
    let mut gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, "", Some(kafka_port)));
    let report = fleet(&gw, 5, 120, 1).run().await;
    assert!(report.all_acked());
    let n = report.acked();

    let status = status_json(&gw);
    // The journal's own figures, at the top level as before.
    assert_eq!(status["records"].as_u64(), Some(n), "{status}");
    assert_eq!(status["next_seq"].as_u64(), Some(n + 1), "{status}");
    let up = &status["upstreams"][0];
    assert_eq!(up["name"], "cluster");
    assert_eq!(up["backlog"].as_u64(), Some(n), "{status}");
    assert!(up["oldest_unsent_ms"].as_u64().is_some(), "{status}");
    // The daemon's, from /api/status.
    let d = &status["daemon"];
    assert_eq!(d["gateway"], "gw-http", "{status}");
    assert_eq!(d["healthy"], true, "{status}");
    assert_eq!(d["journal"]["appended_total"].as_u64(), Some(n), "{status}");
    assert_eq!(d["journal"]["records"].as_u64(), Some(n), "{status}");
    assert_eq!(d["upstreams"][0]["name"], "cluster");
    assert_eq!(d["upstreams"][0]["connected"], false);
    assert_eq!(d["upstreams"][0]["backlog"].as_u64(), Some(n), "{status}");

    // /metrics says the same about the journal.
    let m = scrape(&gw).await;
    assert_eq!(m.value("tidegate_journal_records", &[]), n as f64);
    assert_eq!(
        m.value("tidegate_upstream_backlog_records", &CLUSTER),
        n as f64
    );

    // The readable view shows the bar, the backlog and the connection state. The bar's
    // scale is journal.max_size: these few readings, all unsent, leave it empty.
    let out = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("daemon    healthy"), "{text}");
    assert!(
        text.contains("[....................]   0.0% of max_size"),
        "{text}"
    );
    assert!(text.contains(&format!("backlog {n:>10}")), "{text}");
    assert!(text.contains("NOT CONNECTED"), "{text}");

    // With the daemon stopped, the journal alone, and the JSON says why.
    let exit = gw.terminate();
    assert!(exit.success(), "{}", gw.log());
    let out = gw.command(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(status["records"].as_u64(), Some(n));
    assert!(status["daemon"].is_null(), "{status}");
    assert!(
        status["daemon_error"]
            .as_str()
            .is_some_and(|e| e.contains("http.listen")),
        "{status}"
    );
    let out = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("daemon    not reachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_with_the_reason_while_a_full_journal_refuses_readings() {
    // 1 MiB under "reject", nothing forwarded: a few thousand readings fill it (stored as
    // sent; compressed, they would not).
    let gw = Gateway::start_fresh(|mqtt, dir| {
        config(
            mqtt,
            dir,
            "max_size = \"1MiB\"\non_full = \"reject\"\ncompression = \"none\"\n",
            None,
        )
        .replace("[mqtt]\n", "[mqtt]\nmax_packet = \"64KiB\"\n")
    });
    let (code, body) = http_get(gw.http_addr(), "/health").await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));

    let stop = CancellationToken::new();
    // The devices keep what is refused; the fleet gives up on it after the drain timeout.
    let flood = fleet(&gw, 4, 3000, 1)
        .drain_timeout(Duration::from_secs(3))
        .spawn_until(stop.clone());
    let body = wait_for_health(&gw, 503, "journal full", SETTLE).await;
    assert!(body.starts_with("unhealthy\n"), "{body}");
    let m = scrape(&gw).await;
    assert!(m.value("tidegate_journal_rejected_full_total", &[]) >= 1.0);
    assert_eq!(m.value("tidegate_healthy", &[]), 0.0);
    stop.cancel();
    let _ = flood.await;
}

/// In process, with the library: `/health` answers 503 naming an essential task that
/// ended (as a forwarder whose loop returns), and 200 again for a non-essential one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_503_naming_an_essential_task_that_ended() {
    use tidegate::health::{supervise, Health};
    let dir = tempfile::tempdir().expect("temp dir");
    let journal_config = tidegate::config::JournalConfig {
        dir: dir.path().join("journal"),
        ..Default::default()
    };
    let (journal, writer) =
        tidegate::journal::Journal::open(&journal_config, &[]).expect("journal opens");
    let health = Health::new();
    let listener = tidegate::http::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr").to_string();
    let sources = tidegate::http::Sources {
        gateway: "gw-test".into(),
        started_ms: tidegate::journal::now_ms(),
        journal: journal.clone(),
        max_size: journal_config.max_size.as_u64(),
        mqtt_listen: "127.0.0.1:1883".parse().expect("addr"),
        ingest: Arc::default(),
        upstreams: tidegate::http::UpstreamList::default(),
        serial: Vec::new(),
        modbus: Vec::new(),
        subscriptions: Vec::new(),
        health: health.clone(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(tidegate::http::serve(
        listener,
        Arc::new(sources),
        stop.clone(),
    ));

    let task_stop = tokio_util::sync::CancellationToken::new();
    let essential = health.register("forwarder:cluster", true);
    let (end, ended) = tokio::sync::oneshot::channel::<()>();
    let forwarder = tokio::spawn(supervise(essential, task_stop.clone(), async move {
        let _ = ended.await;
    }));
    assert_eq!(http_get(&addr, "/health").await, (200, "ok\n".into()));

    // The task's loop returns without being asked to: the registry marks it dead.
    end.send(()).expect("task waiting");
    forwarder.await.expect("supervised");
    let (code, body) = http_get(&addr, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("forwarder:cluster is dead: returned before being asked to stop"),
        "{body}"
    );
    let (_, status) = http_get(&addr, "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["healthy"], false);
    assert!(status["problems"][0]
        .as_str()
        .is_some_and(|p| p.contains("forwarder:cluster")));

    stop.cancel();
    server.await.expect("server stops");
    drop(journal);
    writer.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_added_by_a_reload_appears_in_metrics_and_status() {
    let gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, "", Some(free_port())));
    let m = scrape(&gw).await;
    assert!(m.find("tidegate_upstream_connected", &CLUSTER).is_some());
    assert!(m
        .find("tidegate_upstream_connected", &[("upstream", "cloud")])
        .is_none());

    // A second Kafka upstream, then SIGHUP: the reload starts its forwarder.
    let path = gw.config_path().to_owned();
    let mut text = std::fs::read_to_string(&path).expect("read config");
    text.push_str(&format!(
        "\n[[upstream]]\nname = \"cloud\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{}\"]\ntopic = \"cloud\"\n",
        free_port()
    ));
    std::fs::write(&path, text).expect("write config");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(gw.pid().expect("running")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");

    scrape_until(&gw, "the new upstream in /metrics", |m| {
        m.find("tidegate_upstream_connected", &[("upstream", "cloud")])
            .is_some()
    })
    .await;
    let (_, status) = http_get(gw.http_addr(), "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let names: Vec<&str> = status["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, ["cluster", "cloud"], "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_sends_a_request_is_disconnected_and_holds_up_no_one() {
    use tokio::io::AsyncReadExt;
    let gw = Gateway::start_fresh(|mqtt, dir| config(mqtt, dir, "", None));
    let mut silent = tokio::net::TcpStream::connect(gw.http_addr())
        .await
        .expect("connects");
    // Others are served meanwhile.
    assert_eq!(
        http_get(gw.http_addr(), "/health").await,
        (200, "ok\n".into())
    );
    // The silent one is closed once its time to send headers is up (hyper may first
    // answer 408; either way the connection ends).
    let mut buf = Vec::new();
    let read = tokio::time::timeout(SETTLE, silent.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "a connection that sent nothing was still open after {SETTLE:?}"
    );
}

#[test]
fn a_taken_http_port_stops_the_daemon_at_start_naming_http_listen() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tidegate.toml");
    std::fs::write(
        &path,
        format!(
            "[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("journal").display(),
            free_port()
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidegate"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .expect("run tidegate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http.listen = 127.0.0.1:{port}")),
        "{err}"
    );
}

/// The `[[upstream]]` keys of a constrained uplink, appended to [`config`]'s upstream.
fn uplink_keys(extra: &str) -> String {
    format!(
        "bandwidth = \"64KiB\"\nlive_topic = \"metrics-live\"\nbudget = \"1GiB\"\nbudget_period = \"month\"\nsend_windows = [\"00:00-00:01\"]\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constrained_uplink_shows_its_lanes_budget_and_window_in_metrics_status_and_health() {
    // No upstream reachable: nothing is sent, so every figure is its configured value.
    let kafka_port = free_port();
    let gw = Gateway::start_fresh(|mqtt, dir| {
        config(mqtt, dir, "", Some(kafka_port)) + &uplink_keys("")
    });
    let report = fleet(&gw, 3, 20, 1).run().await;
    assert!(report.all_acked());

    let live = [("upstream", "cluster"), ("lane", "live")];
    let backlog = [("upstream", "cluster"), ("lane", "backlog")];
    let m = scrape_until(&gw, "the uplink series", |m| {
        m.find("tidegate_upstream_live_active", &CLUSTER).is_some()
            && m.find("tidegate_upstream_send_window_open", &CLUSTER)
                .is_some()
    })
    .await;
    let gib = 1024.0 * 1024.0 * 1024.0;
    for (name, want) in [
        ("tidegate_upstream_bandwidth_bytes_per_second", 65536.0),
        ("tidegate_upstream_budget_bytes", gib),
        ("tidegate_upstream_budget_used_bytes", 0.0),
        ("tidegate_upstream_budget_left_bytes", gib),
        ("tidegate_upstream_budget_spent", 0.0),
    ] {
        assert_eq!(m.value(name, &CLUSTER), want, "{name}");
    }
    // Nothing used: no projected exhaustion.
    assert_eq!(
        m.find("tidegate_upstream_budget_exhausted_at_seconds", &CLUSTER),
        None
    );
    let open = m.value("tidegate_upstream_send_window_open", &CLUSTER);
    assert!(open == 0.0 || open == 1.0, "{open}");
    for lane in [&backlog, &live] {
        assert_eq!(m.value("tidegate_upstream_wire_bytes_total", lane), 0.0);
        assert_eq!(
            m.value("tidegate_upstream_wire_received_bytes_total", lane),
            0.0
        );
        // Nothing delivered on either lane.
        assert_eq!(
            m.find("tidegate_upstream_newest_delivered_age_seconds", lane),
            None
        );
    }
    for counter in [
        "tidegate_upstream_live_readings_total",
        "tidegate_upstream_live_urgent_total",
        "tidegate_upstream_live_skipped_total",
    ] {
        assert!(
            m.find(counter, &CLUSTER).is_some(),
            "{counter}:\n{}",
            m.text
        );
    }

    // `status --json` carries the uplink object, and the text view its lines.
    let status = status_json(&gw);
    let u = &status["daemon"]["upstreams"][0]["uplink"];
    assert_eq!(u["bandwidth"].as_u64(), Some(65536), "{status}");
    assert_eq!(u["lanes"]["backlog"]["wire_bytes"].as_u64(), Some(0), "{u}");
    assert!(u["lanes"]["live"].is_object(), "{u}");
    assert_eq!(u["budget"]["limit"].as_u64(), Some(1 << 30), "{u}");
    assert_eq!(u["budget"]["left"].as_u64(), Some(1 << 30), "{u}");
    assert_eq!(u["budget"]["spent"], false, "{u}");
    assert!(u["budget"]["period_end_ms"].as_u64().is_some(), "{u}");
    let window = u["window"]["text"].as_str().expect("window text");
    assert!(
        window.starts_with("closed (opens in ") || window.starts_with("open (closes in "),
        "{window}"
    );
    let out = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("  lanes: backlog ") && text.contains("(limit 64 KiB/s)"),
        "{text}"
    );
    assert!(
        text.contains("  budget: 0 B of 1 GiB used, 1 GiB left, lasts the period"),
        "{text}"
    );
    assert!(text.contains("  window: "), "{text}");

    // Healthy, with no warning.
    let (code, body) = http_get(gw.http_addr(), "/health?format=json").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["warnings"], serde_json::json!([]), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_is_a_warning_on_health_while_it_stays_200() {
    // The backlog may use a hundredth of 1 MiB: a few batches spend it.
    let tansu = Tansu::start();
    let kafka_port = tansu.port();
    let gw = Gateway::start_fresh(|mqtt, dir| {
        config(mqtt, dir, "", Some(kafka_port))
            + "budget = \"1MiB\"\nbudget_period = \"day\"\nlive_reserve = 0.99\n"
    });
    let report = fleet(&gw, 4, 100, 1).run().await;
    assert!(report.all_acked());

    let m = scrape_until(&gw, "the budget spent", |m| {
        m.find("tidegate_upstream_budget_spent", &CLUSTER) == Some(1.0)
    })
    .await;
    let used = m.value("tidegate_upstream_budget_used_bytes", &CLUSTER);
    assert!(used >= 0.01 * 1024.0 * 1024.0, "{used}");
    // Read after `used`, so at most what `used` said is left.
    assert!(m.value("tidegate_upstream_budget_left_bytes", &CLUSTER) <= 1024.0 * 1024.0 - used);
    assert_eq!(m.value("tidegate_healthy", &[]), 1.0);

    let (code, body) = http_get(gw.http_addr(), "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok\n"), "{body}");
    assert!(
        body.contains("warning: cluster: data budget spent: backlog paused until "),
        "{body}"
    );
    let (code, body) = http_get(gw.http_addr(), "/health?format=json").await;
    assert_eq!(code, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["healthy"], true, "{health}");
    let warning = health["warnings"][0].as_str().unwrap_or_default();
    assert!(
        warning.starts_with("cluster: data budget spent: backlog paused until "),
        "{health}"
    );

    // More readings: now the backlog waits, and says why.
    let more = fleet(&gw, 2, 10, 101).run().await;
    assert!(more.all_acked());
    eventually(&gw, "the backlog held by the budget", SETTLE, async || {
        let (_, body) = http_get(gw.http_addr(), "/api/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let held = &status["upstreams"][0]["uplink"]["backlog_held"];
        match held.as_str() {
            Some(h) if h.starts_with("waiting for budget") => Ok(()),
            _ => Err(body),
        }
    })
    .await;
    let status = status_json(&gw);
    let d = &status["daemon"];
    assert_eq!(d["warnings"][0].as_str(), Some(warning), "{status}");
    let u = &d["upstreams"][0]["uplink"];
    assert_eq!(u["budget"]["spent"], true, "{u}");
    assert!(u["window"].is_null() && u["lanes"]["live"].is_null(), "{u}");
    let out = gw.command(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("spent: backlog paused until ")
            && text.contains("  backlog waiting for budget"),
        "{text}"
    );
}
