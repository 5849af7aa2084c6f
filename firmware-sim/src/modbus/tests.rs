//! Tests of the slave turbines' register map and answers.

use super::*;

#[test]
fn the_pattern_registers_hold_the_documented_values() {
    let h = pattern_registers();
    assert_eq!(h[&100], 2000);
    assert_eq!(h[&101] as i16, -200);
    assert_eq!(h[&102], 0x38FF);
    // big: 3e9 = 0xB2D05E00
    assert_eq!((h[&110], h[&111]), (0xB2D0, 0x5E00));
    // little
    assert_eq!((h[&112], h[&113]), (0x005E, 0xD0B2));
    // big-swap
    assert_eq!((h[&114], h[&115]), (0x5E00, 0xB2D0));
    // little-swap
    assert_eq!((h[&116], h[&117]), (0xD0B2, 0x005E));
    assert_eq!(
        f32::from_be_bytes(
            [h[&130].to_be_bytes(), h[&131].to_be_bytes()]
                .concat()
                .try_into()
                .unwrap()
        ),
        PATTERN_F32
    );
}

#[test]
fn unknown_addresses_and_writes_are_exceptions_and_other_ids_are_ignored() {
    let opts = ModbusOptions {
        slaves: vec![3],
        ..ModbusOptions::default()
    };
    let shared = Arc::new(Shared {
        units: Mutex::new(BTreeMap::from([(3, Unit::new(&opts, 3))])),
        stats: ModbusStats::default(),
        corrupt_every: Some(2),
        corrupt_next: AtomicBool::new(false),
    });
    let s = TurbineService(shared.clone());
    let req = |slave, request| SlaveRequest { slave, request };
    assert!(matches!(
        s.answer(req(3, Request::ReadInputRegisters(0, 11))),
        Ok(Some(Response::ReadInputRegisters(w))) if w.len() == 11
    ));
    assert!(!shared.corrupt_next.load(Ordering::Relaxed));
    assert_eq!(
        s.answer(req(3, Request::ReadInputRegisters(10, 2))),
        Err(ExceptionCode::IllegalDataAddress)
    );
    // The second answer is marked for corruption.
    assert!(shared.corrupt_next.load(Ordering::Relaxed));
    assert_eq!(
        s.answer(req(3, Request::WriteSingleRegister(100, 1))),
        Err(ExceptionCode::IllegalFunction)
    );
    assert!(matches!(
        s.answer(req(4, Request::ReadCoils(0, 1))),
        Ok(None)
    ));
    assert_eq!(shared.stats.ignored.load(Ordering::Relaxed), 1);
    assert!(matches!(
        s.answer(req(3, Request::ReadCoils(0, 1))),
        Ok(Some(Response::ReadCoils(b))) if b == vec![true]
    ));
}
