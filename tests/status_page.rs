//! The status page in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/test.sh`) driven over the DevTools protocol with `chromiumoxide`, against the
//! real `tidegate` binary, a firmware-sim fleet publishing all along, and a real
//! Kafka-protocol broker (Tansu).
//!
//! The page must load with no console error, no uncaught exception and no failed request;
//! show the upstream connected with its backlog, and its uplink (a bandwidth and a live
//! lane: both lanes and the limit); show figures that move with the traffic (journaled
//! total, sent total) and draw the charts once samples exist. A screenshot is
//! saved as `target/test-artifacts/status-page.png`.
//!
//! Every wait is bounded (`PAGE_SETTLE`), and the browser runs with a fresh profile in a
//! temp dir and is killed at the end whatever happens.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::log::EventEntryAdded;
use chromiumoxide::cdp::js_protocol::runtime::{EventConsoleApiCalled, EventExceptionThrown};
use chromiumoxide::page::ScreenshotParams;
use common::status::eventually;
use common::{Fleet, Gateway, Tansu};
use firmware_sim::CancellationToken;
use futures::StreamExt;

/// Longest the page may take to show what a step waits for.
const PAGE_SETTLE: Duration = Duration::from_secs(60);

/// Logged on the page's console last: once it arrives, every earlier event has.
const END_MARKER: &str = "tidegate-test-end";

/// The Chromium binary: `TIDEGATE_CHROMIUM_BIN`, else `chromium` on the PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TIDEGATE_CHROMIUM_BIN") {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("chromium is not installed: run scripts/test.sh (apt-get install chromium), or set TIDEGATE_CHROMIUM_BIN")
        })
}

/// Where test artifacts go: `target/test-artifacts/`.
fn artifacts_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// Evaluates `js` in the page until it returns a number above `above` (or, with `None`,
/// any number); fails with `what` after [`PAGE_SETTLE`].
async fn wait_for_number(
    page: &chromiumoxide::Page,
    js: &str,
    above: Option<f64>,
    what: &str,
    gw: &Gateway,
) -> f64 {
    eventually(gw, what, PAGE_SETTLE, async || {
        let value = match page.evaluate(js).await {
            Ok(r) => r.into_value::<Option<f64>>().ok().flatten(),
            Err(_) => None,
        };
        match value {
            Some(v) if above.is_none_or(|a| v > a) => Ok(v),
            other => Err(format!("value {other:?}")),
        }
    })
    .await
}

/// The text of `selector` as a number ("1,234" → 1234), or null.
fn number_of(selector: &str) -> String {
    format!(
        "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null; \
         const n = Number(e.textContent.replace(/[^0-9.]/g, '')); \
         return e.textContent.trim() === '' || e.textContent.includes('–') || Number.isNaN(n) ? null : n; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_figures_that_move_with_traffic_and_logs_no_error() {
    let tansu = Tansu::start();
    let kafka = tansu.port();
    let gw = Gateway::start_fresh(|mqtt, dir| {
        format!(
            "[gateway]\nid = \"gw-page\"\n[journal]\ndir = \"{}\"\n[mqtt]\nlisten = \"127.0.0.1:{mqtt}\"\n\
             [[upstream]]\nname = \"cluster\"\nkind = \"kafka\"\nbrokers = [\"127.0.0.1:{kafka}\"]\ntopic = \"page\"\nlinger = \"5ms\"\n\
             bandwidth = \"1MiB\"\nlive_topic = \"page-live\"\n",
            dir.join("journal").display()
        )
    });

    // Traffic all along: 5 turbines, 20 readings/s each, until the test stops them.
    let traffic = CancellationToken::new();
    let fleet = Fleet::new(gw.mqtt_addr(), 5)
        .window(10)
        .rate(20.0)
        .duration(Duration::from_secs(300))
        .drain_timeout(Duration::from_secs(10))
        .spawn_until(traffic.clone());

    let profile = tempfile::tempdir().expect("temp dir");
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1280, 1100)
        .viewport(None)
        .launch_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(30))
        .args([
            "disable-gpu",
            "disable-quic",
            "no-first-run",
            "disable-background-networking",
            "disable-component-update",
            "disable-sync",
        ])
        .build()
        .expect("browser config");
    let (mut browser, mut handler) = Browser::launch(config)
        .await
        .unwrap_or_else(|e| panic!("cannot start headless Chromium: {e}"));
    let driver = tokio::spawn(async move { while handler.next().await.is_some() {} });

    let outcome = async {
        let page = browser.new_page("about:blank").await.expect("new page");
        // Every console error, uncaught exception and browser log error (failed requests,
        // CSP violations) is collected from before the page loads.
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut console = page
            .event_listener::<EventConsoleApiCalled>()
            .await
            .expect("console events");
        let mut exceptions = page
            .event_listener::<EventExceptionThrown>()
            .await
            .expect("exception events");
        let mut log = page
            .event_listener::<EventEntryAdded>()
            .await
            .expect("log events");
        let e = errors.clone();
        let end_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let end = end_seen.clone();
        let collect_console = tokio::spawn(async move {
            while let Some(ev) = console.next().await {
                if format!("{:?}", ev.args).contains(END_MARKER) {
                    end.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let kind = format!("{:?}", ev.r#type).to_lowercase();
                if kind.contains("error") || kind.contains("assert") {
                    e.lock()
                        .unwrap()
                        .push(format!("console.{kind}: {:?}", ev.args));
                }
            }
        });
        let e = errors.clone();
        let collect_exceptions = tokio::spawn(async move {
            while let Some(ev) = exceptions.next().await {
                e.lock()
                    .unwrap()
                    .push(format!("exception: {:?}", ev.exception_details));
            }
        });
        let e = errors.clone();
        let collect_log = tokio::spawn(async move {
            while let Some(ev) = log.next().await {
                let level = format!("{:?}", ev.entry.level).to_lowercase();
                if level.contains("error") {
                    e.lock().unwrap().push(format!(
                        "log {level}: {} ({:?})",
                        ev.entry.text, ev.entry.url
                    ));
                }
            }
        });

        let url = format!("http://{}/", gw.http_addr());
        page.goto(url.as_str()).await.expect("page loads");

        // The first refresh has happened and the upstream row is there, connected.
        wait_for_number(
            &page,
            "Number(document.body.getAttribute('data-refreshes')) || null",
            None,
            "the first refresh",
            &gw,
        )
        .await;
        wait_for_number(
            &page,
            "(() => { const r = document.querySelector('tr[data-upstream=\"cluster\"] .connected'); \
             return r && r.textContent.trim() === 'connected' ? 1 : null; })()",
            None,
            "the cluster shown connected",
            &gw,
        )
        .await;
        // The backlog bar's scale is journal.max_size (1 GiB by default): the few readings
        // of this traffic not yet sent leave it all but empty, and its title says so.
        let share = wait_for_number(
            &page,
            "(() => { const b = document.querySelector('tr[data-upstream=\"cluster\"] .bar'); \
             return b && b.title.includes('of journal.max_size') ? Number(b.getAttribute('data-share')) : null; })()",
            None,
            "the backlog bar with its scale",
            &gw,
        )
        .await;
        assert!(
            share < 0.01,
            "backlog bar {share} of max_size for a small backlog"
        );
        // Its uplink row: both lanes, and the limit.
        wait_for_number(
            &page,
            "(() => { const r = document.querySelector('tr[data-uplink=\"cluster\"]'); \
             const limit = r && r.querySelector('.limit'); \
             return r && r.querySelector('.lane-backlog') && r.querySelector('.lane-live') \
             && limit && limit.textContent.includes('1.0 MiB/s') ? 1 : null; })()",
            None,
            "the cluster's lanes and bandwidth limit",
            &gw,
        )
        .await;

        // Figures move with the traffic, by themselves (no reload).
        let journaled = wait_for_number(
            &page,
            &number_of("#appended-total"),
            Some(0.0),
            "readings journaled",
            &gw,
        )
        .await;
        wait_for_number(
            &page,
            &number_of("#appended-total"),
            Some(journaled),
            "the journaled total to grow",
            &gw,
        )
        .await;
        let sent = wait_for_number(
            &page,
            &number_of("tr[data-upstream=\"cluster\"] .sent-total"),
            Some(0.0),
            "readings sent",
            &gw,
        )
        .await;
        wait_for_number(
            &page,
            &number_of("tr[data-upstream=\"cluster\"] .sent-total"),
            Some(sent),
            "the sent total to grow",
            &gw,
        )
        .await;
        wait_for_number(
            &page,
            &number_of("#ingest-rate"),
            Some(0.0),
            "a non-zero ingest rate",
            &gw,
        )
        .await;
        // Two points make a line: the ingest and forward charts each draw one once the
        // history holds two samples (5 s apart).
        wait_for_number(
            &page,
            "(() => { const n = [...document.querySelectorAll('#chart-ingest path, #chart-forward path')] \
             .filter(p => (p.getAttribute('d') || '').includes('L')).length; return n >= 2 ? n : null; })()",
            None,
            "the ingest and forward charts",
            &gw,
        )
        .await;

        let png = page
            .screenshot(ScreenshotParams::builder().full_page(true).build())
            .await
            .expect("screenshot");
        let shot = artifacts_dir().join("status-page.png");
        std::fs::write(&shot, &png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", shot.display()));
        assert!(png.len() > 1000, "screenshot is {} bytes", png.len());

        // Judge once the page's console has delivered a line logged after everything
        // else: events in flight before it have arrived.
        page.evaluate(format!("console.log({END_MARKER:?})"))
            .await
            .expect("log the end marker");
        eventually(
            &gw,
            "the end marker on the console",
            PAGE_SETTLE,
            async || {
                if end_seen.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("not yet".into())
                }
            },
        )
        .await;
        collect_console.abort();
        collect_exceptions.abort();
        collect_log.abort();
        let errors = errors.lock().unwrap().clone();
        assert!(
            errors.is_empty(),
            "the page logged errors:\n{}",
            errors.join("\n")
        );
    };
    // Bounded whatever Chromium does.
    let result = tokio::time::timeout(Duration::from_secs(180), outcome).await;
    let _ = browser.close().await;
    let _ = browser.kill().await;
    driver.abort();
    traffic.cancel();
    let _ = fleet.await;
    result.unwrap_or_else(|_| panic!("the status page test took over 180 s\n{}", gw.log()));
}
