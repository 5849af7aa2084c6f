//! SIGHUP reloads of the credentials file: only devices whose password or rights changed
//! are closed, and a broken file is refused with the credentials in force kept.

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as V5Code;

use crate::clients::{closed_v5, connect_v5, publish_acked_v5};
use crate::common::status::wait_for_log;
use crate::support::{gateway, metric, passwd_ok};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_closes_only_devices_whose_password_or_rights_changed_and_refuses_a_bad_file() {
    let (gw, creds) = gateway("");
    let addr = gw.mqtt_addr();
    let (_c1, mut el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "pw-1")), None)
        .await
        .expect("wt-1");
    let (c2, mut el2) = connect_v5(&addr, "wt-2", Some(("wt-2", "pw-2")), None)
        .await
        .expect("wt-2");
    let hup = || {
        let pid = Pid::from_raw(i32::try_from(gw.pid().expect("running")).expect("pid"));
        signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    };

    // A new password for wt-1: wt-1 is told 0x87 and closed, wt-2 stays.
    passwd_ok(&creds, "wt-1", "new-1\n", &[]);
    hup();
    let reason = closed_v5(&mut el1).await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    assert_eq!(
        connect_v5(&addr, "wt-1", Some(("wt-1", "pw-1")), None)
            .await
            .err(),
        Some(V5Code::BadUserNamePassword),
        "the old password no longer works"
    );
    let (_c1, _el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("the new one does");
    // wt-2 is still connected: its publish is acknowledged on the same connection.
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "still here",
        "wt-2 after the reload",
    )
    .await;

    // A broken file: refused, the credentials in force stay.
    let good = std::fs::read_to_string(&creds).expect("read creds");
    std::fs::write(
        &creds,
        format!("{good}\n[[device]]\nusername = \"bad\"\npassword_hash = \"plain\"\n"),
    )
    .expect("break creds");
    hup();
    // The operator is told why, naming the file.
    wait_for_log(
        &gw,
        &["Reload refused: the device credentials file is invalid"],
    )
    .await;
    let (c, _el) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("old credentials still in force");
    let _ = c.disconnect().await;
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "after",
        "wt-2 after the refused reload",
    )
    .await;

    // wt-1's rights narrowed, the password kept: wt-1 closed again, wt-2 untouched.
    let (_c1, mut el1) = connect_v5(&addr, "wt-1", Some(("wt-1", "new-1")), None)
        .await
        .expect("wt-1 again");
    assert!(good.contains("publish = [\"turbines/%c/#\"]"), "{good}");
    std::fs::write(
        &creds,
        good.replacen(
            "publish = [\"turbines/%c/#\"]",
            "publish = [\"turbines/%c/status\"]",
            1,
        ),
    )
    .expect("narrow wt-1's rights");
    hup();
    let reason = closed_v5(&mut el1).await;
    assert!(reason.contains("NotAuthorized"), "{reason}");
    publish_acked_v5(
        &c2,
        &mut el2,
        "turbines/wt-2/t",
        "still",
        "wt-2 after wt-1's rights changed",
    )
    .await;
    assert_eq!(
        metric(
            &gw,
            "tidegate_mqtt_auth_refused_total",
            &[("reason", "revoked")]
        )
        .await,
        Some(2)
    );
}
