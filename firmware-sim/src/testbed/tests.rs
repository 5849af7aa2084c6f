//! Tests of the test bed's ports and processes.

use super::*;

#[test]
fn a_free_port_is_closed_and_wait_for_port_gives_up_at_the_timeout() {
    let port = free_port().expect("a free port");
    assert!(!port_open(port));
    let started = Instant::now();
    assert!(!wait_for_port(port, Duration::from_millis(300)));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[test]
fn wait_for_port_sees_a_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert!(port_open(port));
    assert!(wait_for_port(port, Duration::from_secs(5)));
}

#[test]
fn a_process_that_never_listens_is_killed_and_its_log_is_in_the_error() {
    let port = free_port().expect("a free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("sh");
    command.args(["-c", "echo about to fail; exit 3"]);
    let err = Process::start(
        "failing",
        command,
        port,
        dir.path().join("failing.log"),
        Duration::from_secs(10),
    )
    .expect_err("it exits without listening");
    let text = format!("{err:?}");
    assert!(
        text.contains("failing did not listen on 127.0.0.1:"),
        "{text}"
    );
    assert!(text.contains("exited"), "{text}");
    assert!(
        text.contains("about to fail\n"),
        "the log is not escaped: {text}"
    );
}

#[test]
fn a_missing_binary_says_to_run_the_test_script() {
    let port = free_port().expect("a free port");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Process::start(
        "nothing",
        Command::new(dir.path().join("no-such-binary")),
        port,
        dir.path().join("nothing.log"),
        Duration::from_secs(1),
    )
    .expect_err("nothing to run");
    assert!(matches!(err, TestbedError::Spawn { .. }), "{err}");
    assert!(err.to_string().contains("scripts/test.sh"), "{err}");
}
