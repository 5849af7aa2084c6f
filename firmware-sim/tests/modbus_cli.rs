//! `firmware-sim modbus-slave` as a gateway sees it: start it, read the pty path it prints,
//! and poll it with tokio-modbus's RTU client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use firmware_sim::modbus::PATTERN_U32;
use tokio_modbus::client::{rtu, Client};
use tokio_modbus::{ExceptionCode, Request, Response, Slave};

/// One request; `Err` when no answer came within 500 ms.
async fn call(
    ctx: &mut tokio_modbus::client::Context,
    req: Request<'static>,
) -> Result<Result<Response, ExceptionCode>, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_millis(500), ctx.call(req))
        .await
        .map(|r| r.expect("no transport error"))
}

/// Kills the child when the test ends, however it ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn modbus_slave_prints_its_pty_and_answers_as_the_register_map_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    let link = dir.path().join("ttyRS485");
    let mut child = Command::new(env!("CARGO_BIN_EXE_firmware-sim"))
        .args([
            "modbus-slave",
            "--slaves",
            "2,4",
            "--step",
            "100ms",
            "--link",
        ])
        .arg(&link)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start firmware-sim");
    let stdout = child.stdout.take().expect("stdout");
    let child = Kill(child);
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await
    .expect("join")
    .expect("first line");
    let path = first
        .trim_end()
        .strip_prefix("modbus: ")
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
        .to_owned();
    assert!(path.starts_with("/dev/pts/"), "{path}");
    assert_eq!(
        std::fs::read_link(&link).expect("the link exists"),
        std::path::PathBuf::from(&path)
    );

    let port =
        tokio_serial::SerialStream::open(&tokio_serial::new(&path, 19_200)).expect("open the pty");
    let mut ctx = rtu::attach_slave(port, Slave(2));
    let answer = call(&mut ctx, Request::ReadHoldingRegisters(110, 2))
        .await
        .expect("slave 2 answers");
    assert_eq!(
        answer,
        Ok(Response::ReadHoldingRegisters(vec![
            (PATTERN_U32 >> 16) as u16,
            PATTERN_U32 as u16
        ]))
    );
    let Ok(Ok(Response::ReadInputRegisters(step))) =
        call(&mut ctx, Request::ReadInputRegisters(8, 2)).await
    else {
        panic!("the model step is readable");
    };
    assert!(step[1] >= 1, "{step:?}");
    // An address off the map is an exception, not silence.
    assert_eq!(
        call(&mut ctx, Request::ReadInputRegisters(11, 1))
            .await
            .expect("an answer"),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // An id that is not on the bus does not answer.
    tokio_modbus::slave::SlaveContext::set_slave(&mut ctx, Slave(3));
    assert!(call(&mut ctx, Request::ReadInputRegisters(0, 1))
        .await
        .is_err());
    drop(child);
}
