//! The test bed's brokers (Tansu, Mosquitto) for the integration tests: failures to start
//! fail the test with the test bed's message, and a start that lost its port to another
//! process is tried again on a fresh one ([`retry_on_port_clash`]).
//!
//! The brokers themselves are firmware-sim's [`testbed`]; only the retry and the panics
//! live here.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use firmware_sim::testbed::{self, BrokerKind, MosquittoKind, MosquittoSetup, Process, TansuKind};
pub use firmware_sim::testbed::{port_open, TestbedError};

/// How many fresh ports a start may try before the clash fails the test.
const PORT_ATTEMPTS: usize = 5;

/// The value, or the test fails with the test bed's message.
pub fn or_fail<T>(r: Result<T, TestbedError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// A loopback port that was free a moment ago. Another process may take it before the
/// child that is given it binds it: start children through [`retry_on_port_clash`].
pub fn free_port() -> u16 {
    or_fail(testbed::free_port())
}

/// Whether a child that did not come up lost its port to another process: it exited, and
/// its log says the address was in use (EADDRINUSE, in the words of Rust's `io::Error`,
/// of its `Debug` form, or of Mosquitto).
pub fn is_port_clash(e: &TestbedError) -> bool {
    match e {
        TestbedError::NotListening { exit, log, .. } => {
            exit.starts_with("exited")
                && ["address already in use", "addrinuse", "address in use"]
                    .iter()
                    .any(|m| log.to_ascii_lowercase().contains(m))
        }
        _ => false,
    }
}

/// Runs `start` (which picks a fresh port each call) until it does not fail with a port
/// clash; any other failure, or [`PORT_ATTEMPTS`] clashes in a row, fails the test.
///
/// `free_port` binds port 0, reads the port and closes it, so another process (another
/// test binary, say) can bind it before the child does: the child then exits with
/// EADDRINUSE, and a fresh port is the cure.
pub fn retry_on_port_clash<T>(mut start: impl FnMut() -> Result<T, TestbedError>) -> T {
    for attempt in 1.. {
        match start() {
            Ok(t) => return t,
            Err(e) if is_port_clash(&e) && attempt < PORT_ATTEMPTS => {
                eprintln!("port clash (attempt {attempt}), trying a fresh port: {e}");
            }
            Err(e) => panic!("{e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// Tansu (in-memory storage) listening on `127.0.0.1:port` but advertising
/// `127.0.0.1:advertised`, where something of the test's (a fault proxy, stunnel) stands
/// in front of it; its log in `dir`. Clients that bootstrap through the advertised port
/// make every later connection there too.
pub fn tansu_behind(port: u16, advertised: u16, dir: &Path) -> Result<Process, TestbedError> {
    let mut command = Command::new(testbed::tansu_bin()?);
    command
        .arg("broker")
        .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
        ])
        .args(["--storage-engine", "memory://tansu/"]);
    Process::start(
        "tansu",
        command,
        port,
        dir.join("tansu.log"),
        Duration::from_secs(30),
    )
}

/// A broker of the test bed ([`testbed::Broker`]) whose failures to start fail the test.
/// Everything else (port, brokers, address, log, kill) is the test bed's, through `Deref`.
pub struct Broker<K>(testbed::Broker<K>);

/// A Tansu Kafka-protocol broker (in-memory storage) on a free loopback port.
pub type Tansu = Broker<TansuKind>;
/// A Mosquitto MQTT broker (persistence in its temp dir) on a free loopback port.
pub type Mosquitto = Broker<MosquittoKind>;

impl<K: BrokerKind> Broker<K> {
    /// Starts it on a free port (a fresh one after a port clash).
    pub fn start() -> Broker<K> {
        Broker(retry_on_port_clash(testbed::Broker::start))
    }

    /// Starts it on `port` (e.g. to bring a "dead" upstream to life on a port a gateway was
    /// configured with). No retry: the port is the point.
    pub fn start_on(port: u16) -> Broker<K> {
        Broker(or_fail(testbed::Broker::start_on(port)))
    }

    /// Kills it (if running) and starts it again on the same port.
    pub fn restart(&mut self) {
        or_fail(self.0.restart());
    }
}

impl Mosquitto {
    /// Starts a Mosquitto set up as `setup` says (users, TLS) on a free port.
    pub fn start_with(setup: &MosquittoSetup) -> Mosquitto {
        Broker(retry_on_port_clash(|| {
            testbed::Mosquitto::start_with(setup)
        }))
    }
}

impl<K> Deref for Broker<K> {
    type Target = testbed::Broker<K>;
    fn deref(&self) -> &testbed::Broker<K> {
        &self.0
    }
}

impl<K> DerefMut for Broker<K> {
    fn deref_mut(&mut self) -> &mut testbed::Broker<K> {
        &mut self.0
    }
}
