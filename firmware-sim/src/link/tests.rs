//! The link against real loopback sockets: the rate by the link's own log, outages that cut
//! and refuse connections, the schedule, the window figures, and the options it refuses.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::meter::max_window_sum;
use super::*;

/// Guards every socket wait so a broken link fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(30);

/// A target that reads each connection to its end and reports how many bytes it got.
async fn counting_target() -> (SocketAddr, tokio::sync::mpsc::Receiver<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = tx.send(got.len()).await;
            });
        }
    });
    (addr, rx)
}

/// A target that echoes every byte back.
async fn echo_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
    let addr = listener.local_addr().expect("target addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Sends `msg` and reads it back through an echo target.
async fn echoes(s: &mut TcpStream, msg: &[u8]) -> bool {
    if s.write_all(msg).await.is_err() {
        return false;
    }
    let mut back = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(GUARD, s.read_exact(&mut back)).await,
        Ok(Ok(_)) if back == msg
    )
}

/// Whether the peer closed `s`: a read ends (EOF or reset) instead of returning data.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    match tokio::time::timeout(GUARD, s.read(&mut b)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the link neither closed nor answered within {GUARD:?}"),
    }
}

#[tokio::test]
async fn a_shaped_link_passes_a_mebibyte_at_its_rate_by_its_own_log() {
    const RATE: u64 = 256 * 1024;
    const BURST: u64 = 16 * 1024;
    const TOTAL: usize = 1024 * 1024;
    let (target, mut got) = counting_target().await;
    let link = Link::start(LinkOptions {
        rate: Some(RATE),
        burst: Some(BURST),
        ..LinkOptions::new(target)
    })
    .await
    .expect("link starts");
    let mut client = TcpStream::connect(link.addr()).await.expect("connect");
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let received = tokio::time::timeout(GUARD, got.recv())
        .await
        .expect("the target got the end of the stream")
        .expect("a count");
    assert_eq!(received, TOTAL);
    assert_eq!(link.bytes_up(), TOTAL as u64);
    // Beyond the burst, 1 MiB at 256 KiB/s is 3.94 s of traffic in the log.
    let (first, last) = link.up_meter().active_span().expect("bytes were logged");
    let span = last + RESOLUTION - first;
    assert!(
        span >= Duration::from_millis(3500),
        "1 MiB passed within {span:?} at 256 KiB/s"
    );
    // No second of the log holds more than a second's worth plus the burst (with one bucket
    // of slack for a late wake-up).
    let max = link.max_bytes_in_window(Duration::from_secs(1));
    let bound = RATE + RATE / 10 + BURST;
    assert!(max <= bound, "{max} bytes in one second, bound {bound}");
    assert_eq!(
        link.bytes_up_since(link.started()),
        TOTAL as u64,
        "everything was logged after the start"
    );
}

#[tokio::test]
async fn a_link_going_down_cuts_connections_and_refuses_new_ones_until_it_is_up_again() {
    let target = echo_target().await;
    let link = Link::start(LinkOptions::new(target))
        .await
        .expect("link starts");
    let mut before = TcpStream::connect(link.addr()).await.expect("connect");
    assert!(
        echoes(&mut before, b"ping").await,
        "an up link passes bytes"
    );
    assert_eq!(link.bytes_up(), 4);
    assert_eq!(link.bytes_down(), 4);

    link.set_up(false);
    assert!(!link.is_up());
    assert!(closed(&mut before).await, "the open connection was cut");
    let mut during = TcpStream::connect(link.addr())
        .await
        .expect("the listener still accepts");
    assert!(
        closed(&mut during).await,
        "a new connection is closed at once"
    );
    assert_eq!(link.refused(), 1);

    link.set_up(true);
    let mut after = TcpStream::connect(link.addr()).await.expect("connect");
    assert!(echoes(&mut after, b"pong").await, "the link passes again");
    assert_eq!(link.bytes_up(), 8);
}

#[test]
fn overlapping_outages_merge_into_one() {
    let o = |after: u64, lasting: u64| Outage {
        after: Duration::from_secs(after),
        lasting: Duration::from_secs(lasting),
    };
    let s = |a: u64, b: u64| (Duration::from_secs(a), Duration::from_secs(b));
    assert_eq!(
        down_spans(vec![o(30, 1), o(12, 8), o(10, 5), o(20, 2)]),
        [s(10, 22), s(30, 31)]
    );
    assert_eq!(down_spans(Vec::new()), []);
}

#[tokio::test]
async fn the_outage_schedule_brings_the_link_down_and_up_again_no_earlier_than_planned() {
    let ms = Duration::from_millis;
    let link = Link::start(LinkOptions {
        outages: vec![
            Outage {
                after: ms(200),
                lasting: ms(300),
            },
            Outage {
                after: ms(800),
                lasting: ms(200),
            },
        ],
        ..LinkOptions::new(echo_target().await)
    })
    .await
    .expect("link starts");
    assert!(link.is_up(), "a link starts up");
    tokio::time::timeout(GUARD, async {
        while link.switches().len() < 4 {
            tokio::time::sleep(ms(50)).await;
        }
    })
    .await
    .expect("the schedule ran");
    let switches: Vec<(Duration, bool)> = link
        .switches()
        .into_iter()
        .map(|(at, up)| (at.saturating_duration_since(link.started()), up))
        .collect();
    let ups: Vec<bool> = switches.iter().map(|s| s.1).collect();
    assert_eq!(ups, [false, true, false, true], "{switches:?}");
    // A timer never fires early: each switch comes at or after its planned time.
    for ((at, _), planned) in switches.iter().zip([200, 500, 800, 1000]) {
        assert!(*at >= ms(planned), "{switches:?}");
    }
    assert!(link.is_up());
}

#[test]
fn window_figures_slide_over_the_log_bucket_by_bucket() {
    let t0 = Instant::now();
    let m = Meter::starting_at(t0);
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    m.record_at(at(0), 100);
    m.record_at(at(50), 100); // same bucket as the first
    m.record_at(at(250), 300);
    m.record_at(at(1_050), 50);
    m.record_at(at(1_150), 400);
    assert_eq!(m.total(), 950);
    assert_eq!(m.buckets(), [200, 0, 300, 0, 0, 0, 0, 0, 0, 0, 50, 400]);
    // Any 1 s: buckets 2..=11 hold 750.
    assert_eq!(m.max_in_window(Duration::from_secs(1)), 750);
    // 100 ms: the single largest bucket; 150 ms rounds up to two buckets.
    assert_eq!(m.max_in_window(Duration::from_millis(100)), 400);
    assert_eq!(m.max_in_window(Duration::from_millis(150)), 450);
    // A window longer than the log sums all of it.
    assert_eq!(m.max_in_window(Duration::from_secs(5)), 950);
    // From the bucket holding 1.0 s on.
    assert_eq!(m.since(at(1_000)), 450);
    assert_eq!(
        m.max_in_window_since(Duration::from_millis(100), at(1_000)),
        400
    );
    assert_eq!(m.since(at(60_000)), 0);
    assert_eq!(
        m.active_span(),
        Some((Duration::ZERO, Duration::from_millis(1_100)))
    );
    assert_eq!(max_window_sum(&[], 3), 0);
    assert_eq!(max_window_sum(&[1, 2, 3], 0), 3);
}

#[tokio::test]
async fn a_link_refuses_addresses_beyond_loopback_and_zero_rates() {
    let local = SocketAddr::from(([127, 0, 0, 1], 9092));
    let remote = SocketAddr::from(([10, 0, 0, 1], 9092));
    let err = Link::start(LinkOptions::new(remote))
        .await
        .expect_err("remote target");
    assert!(
        matches!(err, LinkError::NotLoopback { what: "target", .. }),
        "{err}"
    );
    let err = Link::start(LinkOptions {
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        ..LinkOptions::new(local)
    })
    .await
    .expect_err("wildcard listen");
    assert!(
        matches!(err, LinkError::NotLoopback { what: "listen", .. }),
        "{err}"
    );
    let err = Link::start(LinkOptions {
        rate: Some(0),
        ..LinkOptions::new(local)
    })
    .await
    .expect_err("zero rate");
    assert!(matches!(err, LinkError::Zero { what: "rate" }), "{err}");
    let v6 = Link::start(LinkOptions {
        listen: "[::1]:0".parse().expect("an address"),
        ..LinkOptions::new(local)
    })
    .await;
    // ::1 is loopback; a host without IPv6 fails to bind, never with NotLoopback.
    assert!(!matches!(v6, Err(LinkError::NotLoopback { .. })));
}

#[test]
fn outages_parse_as_after_plus_lasting() {
    assert_eq!(
        "30s+1m".parse::<Outage>().expect("parses"),
        Outage {
            after: Duration::from_secs(30),
            lasting: Duration::from_secs(60)
        }
    );
    assert!("30s".parse::<Outage>().is_err());
    assert!("30s+soon".parse::<Outage>().is_err());
}
