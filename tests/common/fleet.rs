//! The firmware-sim fleet of the tests: QoS 1 turbines sending as fast as the in-flight
//! window allows, built in this one place so that a change of firmware-sim's options
//! touches one file of the suite; and the check that what it saw acknowledged arrived.

use std::time::Duration;

use firmware_sim::{
    run_fleet, wait_until_complete, CancellationToken, FleetError, FleetOptions, FleetReport,
    PayloadFormat, Protocol, VerifyReport,
};

use super::daemon::Gateway;

/// A fleet to run against `broker`: [`Fleet::new`] and the setters say what differs from
/// the usual test fleet, [`Fleet::run`] or [`Fleet::spawn`] run it.
#[derive(Clone, Debug)]
pub struct Fleet(FleetOptions);

impl Fleet {
    /// `devices` MQTT 3.1.1 turbines from `wt-0001` sending QoS 1 readings to `broker`,
    /// 20 in flight each, with no pause between readings and until stopped; a minute to
    /// drain at the end.
    pub fn new(broker: impl Into<String>, devices: usize) -> Fleet {
        let mut o = FleetOptions::default();
        o.broker = broker.into();
        o.workload.devices = devices;
        o.qos = firmware_sim::Qos::AtLeastOnce;
        o.window = 20;
        o.workload.rate = None;
        o.drain_timeout = Duration::from_secs(60);
        Fleet(o)
    }

    /// Readings per device; the run ends after them.
    pub fn count(mut self, count: u64) -> Fleet {
        self.0.workload.count = Some(count);
        self
    }

    /// Sending time; the run ends after it.
    pub fn duration(mut self, duration: Duration) -> Fleet {
        self.0.workload.duration = Some(duration);
        self
    }

    /// Number of the first turbine (so that several fleets share a gateway).
    pub fn first_device(mut self, first: usize) -> Fleet {
        self.0.workload.first_device = first;
        self
    }

    /// Readings per second per device.
    pub fn rate(mut self, per_second: f64) -> Fleet {
        self.0.workload.rate = Some(per_second);
        self
    }

    /// Each payload padded to exactly `bytes`.
    pub fn payload_size(mut self, bytes: usize) -> Fleet {
        self.0.workload.payload_size = Some(bytes);
        self
    }

    pub fn payload_format(mut self, format: PayloadFormat) -> Fleet {
        self.0.workload.payload_format = format;
        self
    }

    /// Faults each device injects (reboots, flaps…).
    pub fn faults(mut self, plan: firmware_sim::FaultPlan) -> Fleet {
        self.0.workload.faults = plan;
        self
    }

    pub fn protocol(mut self, protocol: Protocol) -> Fleet {
        self.0.protocol = protocol;
        self
    }

    /// Readings in flight per device.
    pub fn window(mut self, window: u16) -> Fleet {
        self.0.window = window;
        self
    }

    /// Bounds of the reconnect backoff.
    pub fn reconnect(mut self, min: Duration, max: Duration) -> Fleet {
        self.0.reconnect_min = min;
        self.0.reconnect_max = max;
        self
    }

    /// How long the end of the run waits for outstanding acknowledgements.
    pub fn drain_timeout(mut self, timeout: Duration) -> Fleet {
        self.0.drain_timeout = timeout;
        self
    }

    /// Every device logs in as `user` with `password`.
    pub fn credentials(mut self, user: &str, password: &str) -> Fleet {
        self.0.credentials = Some((user.into(), password.into()));
        self
    }

    /// Any other option of firmware-sim's, set by `f`.
    pub fn with(mut self, f: impl FnOnce(&mut FleetOptions)) -> Fleet {
        f(&mut self.0);
        self
    }

    /// The options, for code that calls firmware-sim itself.
    pub fn options(self) -> FleetOptions {
        self.0
    }

    /// Runs it to the end; panics if the fleet cannot run at all.
    pub async fn run(self) -> FleetReport {
        run_fleet(self.0, CancellationToken::new())
            .await
            .expect("the fleet runs")
    }

    /// Runs it in a task, until it ends or `stop` is cancelled.
    pub fn spawn_until(
        self,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<Result<FleetReport, FleetError>> {
        tokio::spawn(run_fleet(self.0, stop))
    }

    /// Runs it in a task, to the end.
    pub fn spawn(self) -> tokio::task::JoinHandle<Result<FleetReport, FleetError>> {
        self.spawn_until(CancellationToken::new())
    }
}

/// Waits (up to `within`) until every reading `report` saw acknowledged is in `topic` of
/// the Kafka cluster at `brokers`, and asserts that they came in order with nothing
/// unexpected; the gateway's log is printed if not. Returns the verifier's report.
pub async fn assert_arrived(
    brokers: &[String],
    topic: &str,
    report: &FleetReport,
    within: Duration,
    gw: &Gateway,
) -> VerifyReport {
    let v = wait_until_complete(brokers, topic, report, within)
        .await
        .unwrap_or_else(|e| panic!("reading topic {topic}: {e}\ngateway log:\n{}", gw.log()));
    assert!(
        v.is_complete() && v.is_ok(),
        "topic {topic}: {v}\nproblems: {:?}\ngateway log:\n{}",
        v.problems(),
        gw.log()
    );
    v
}
