//! Turning the registers and bits a slave answered into the values of a reading.
//!
//! Invariant: decoding never panics and never produces a JSON value that is not a number,
//! a bool or absent — a NaN or infinite float from a garbled register becomes an error
//! entry of the reading instead.
//!
//! Scaled values are rounded to 12 significant digits, so that `731 × 0.01` is journaled
//! as `7.31` and not `7.3100000000000005`; every supported raw type (at most 10 decimal
//! digits for 32-bit integers, 7 for f32) survives that exactly. An f32 is first turned into
//! the shortest decimal that reads back as the same f32 (`1.1f32` → `1.1`, not
//! `1.100000023841858`).

use serde_json::{Number, Value};

use super::config::{ByteOrder, DataType};

/// A value as read, before scale and offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Raw {
    Unsigned(u64),
    Signed(i64),
    Float(f32),
    Bool(bool),
}

/// Why a raw value cannot be journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// The slave answered fewer registers than the type needs (cannot happen with the
    /// lengths the poller checks; kept so that decoding stays total).
    #[error("answer too short for the type")]
    Short,
    /// An f32 register pair holds NaN or an infinity, or scaling overflowed.
    #[error("not a finite number")]
    NotFinite,
}

/// The bytes A (most significant) .. D of a 32-bit value stored in two registers.
fn bytes32(r0: u16, r1: u16, order: ByteOrder) -> [u8; 4] {
    let [a0, a1] = r0.to_be_bytes();
    let [b0, b1] = r1.to_be_bytes();
    match order {
        ByteOrder::Big => [a0, a1, b0, b1],
        ByteOrder::Little => [b1, b0, a1, a0],
        ByteOrder::BigSwap => [b0, b1, a0, a1],
        ByteOrder::LittleSwap => [a1, a0, b1, b0],
    }
}

/// The bytes A, B of a 16-bit value: only the byte order inside the register matters.
fn bytes16(r0: u16, order: ByteOrder) -> [u8; 2] {
    match order {
        ByteOrder::Big | ByteOrder::BigSwap => r0.to_be_bytes(),
        ByteOrder::Little | ByteOrder::LittleSwap => r0.to_le_bytes(),
    }
}

/// Decodes a register value from `words` (its registers, first address first).
pub fn decode_registers(words: &[u16], ty: DataType, order: ByteOrder) -> Result<Raw, ValueError> {
    let word = |i: usize| words.get(i).copied().ok_or(ValueError::Short);
    Ok(match ty {
        DataType::U16 => Raw::Unsigned(u16::from_be_bytes(bytes16(word(0)?, order)).into()),
        DataType::I16 => Raw::Signed(i16::from_be_bytes(bytes16(word(0)?, order)).into()),
        DataType::U32 => {
            Raw::Unsigned(u32::from_be_bytes(bytes32(word(0)?, word(1)?, order)).into())
        }
        DataType::I32 => Raw::Signed(i32::from_be_bytes(bytes32(word(0)?, word(1)?, order)).into()),
        DataType::F32 => Raw::Float(f32::from_be_bytes(bytes32(word(0)?, word(1)?, order))),
        // A register read as a bool: non-zero is true (config validation does not allow
        // it, but decoding stays total).
        DataType::Bool => Raw::Bool(word(0)? != 0),
    })
}

/// Rounds to 12 significant digits (see the module doc).
fn round12(v: f64) -> f64 {
    format!("{v:.11e}").parse().unwrap_or(v)
}

/// The JSON value of `raw` after `raw * scale + offset`. Integers that are neither scaled
/// nor offset stay JSON integers.
pub fn to_json(raw: Raw, scale: f64, offset: f64) -> Result<Value, ValueError> {
    let plain = scale == 1.0 && offset == 0.0;
    let base = match raw {
        Raw::Bool(b) => return Ok(Value::Bool(b)),
        Raw::Unsigned(u) if plain => return Ok(Value::Number(u.into())),
        Raw::Signed(i) if plain => return Ok(Value::Number(i.into())),
        Raw::Unsigned(u) => u as f64,
        Raw::Signed(i) => i as f64,
        Raw::Float(f) if f.is_finite() => f.to_string().parse::<f64>().unwrap_or(f64::from(f)),
        Raw::Float(_) => return Err(ValueError::NotFinite),
    };
    let v = if plain {
        base
    } else {
        round12(base * scale + offset)
    };
    Number::from_f64(v)
        .map(Value::Number)
        .ok_or(ValueError::NotFinite)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registers holding `bytes` (A..D) in `order`: the inverse of `bytes32`, written
    /// out independently as the table in the config docs states it.
    fn regs32(v: [u8; 4], order: ByteOrder) -> [u16; 2] {
        let [a, b, c, d] = v;
        let r = |hi: u8, lo: u8| u16::from_be_bytes([hi, lo]);
        match order {
            ByteOrder::Big => [r(a, b), r(c, d)],
            ByteOrder::Little => [r(d, c), r(b, a)],
            ByteOrder::BigSwap => [r(c, d), r(a, b)],
            ByteOrder::LittleSwap => [r(b, a), r(d, c)],
        }
    }

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Big,
        ByteOrder::Little,
        ByteOrder::BigSwap,
        ByteOrder::LittleSwap,
    ];

    #[test]
    fn every_32_bit_type_reads_back_in_every_byte_order() {
        for order in ORDERS {
            let w = regs32(3_000_000_000u32.to_be_bytes(), order);
            assert_eq!(
                decode_registers(&w, DataType::U32, order),
                Ok(Raw::Unsigned(3_000_000_000)),
                "{order:?}"
            );
            let w = regs32((-123_456i32).to_be_bytes(), order);
            assert_eq!(
                decode_registers(&w, DataType::I32, order),
                Ok(Raw::Signed(-123_456)),
                "{order:?}"
            );
            let w = regs32((-1.5f32).to_be_bytes(), order);
            assert_eq!(
                decode_registers(&w, DataType::F32, order),
                Ok(Raw::Float(-1.5)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn the_byte_orders_are_the_documented_ones() {
        // 0x11223344 as the data sheets show it.
        for (regs, order) in [
            ([0x1122, 0x3344], ByteOrder::Big),
            ([0x4433, 0x2211], ByteOrder::Little),
            ([0x3344, 0x1122], ByteOrder::BigSwap),
            ([0x2211, 0x4433], ByteOrder::LittleSwap),
        ] {
            assert_eq!(
                decode_registers(&regs, DataType::U32, order),
                Ok(Raw::Unsigned(0x1122_3344)),
                "{order:?}"
            );
        }
    }

    #[test]
    fn sixteen_bit_types_only_care_about_the_byte_order_in_the_register() {
        for (order, reg) in [
            (ByteOrder::Big, 0xFF38u16),
            (ByteOrder::BigSwap, 0xFF38),
            (ByteOrder::Little, 0x38FF),
            (ByteOrder::LittleSwap, 0x38FF),
        ] {
            assert_eq!(
                decode_registers(&[reg], DataType::I16, order),
                Ok(Raw::Signed(-200))
            );
            assert_eq!(
                decode_registers(&[reg], DataType::U16, order),
                Ok(Raw::Unsigned(65_336))
            );
        }
    }

    #[test]
    fn too_few_registers_is_an_error_not_a_panic() {
        assert_eq!(
            decode_registers(&[1], DataType::F32, ByteOrder::Big),
            Err(ValueError::Short)
        );
        assert_eq!(
            decode_registers(&[], DataType::U16, ByteOrder::Big),
            Err(ValueError::Short)
        );
    }

    #[test]
    fn scale_and_offset_give_clean_decimals() {
        use serde_json::json;
        for (raw, scale, offset, want) in [
            (Raw::Unsigned(731), 0.01, 0.0, json!(7.31)),
            (Raw::Signed(-200), 0.1, 0.0, json!(-20.0)),
            (Raw::Signed(-200), 0.1, 273.15, json!(253.15)),
            (Raw::Unsigned(65_535), 0.001, 0.0, json!(65.535)),
            (
                Raw::Unsigned(4_294_967_295),
                0.001,
                0.0,
                json!(4_294_967.295),
            ),
            (Raw::Float(1.1), 1.0, 0.0, json!(1.1)),
            (Raw::Float(1.1), 10.0, 0.0, json!(11.0)),
        ] {
            assert_eq!(
                to_json(raw, scale, offset),
                Ok(want),
                "{raw:?} * {scale} + {offset}"
            );
        }
    }

    #[test]
    fn unscaled_integers_stay_integers_and_bools_stay_bools() {
        assert_eq!(
            to_json(Raw::Unsigned(3_000_000_000), 1.0, 0.0).map(|v| v.to_string()),
            Ok("3000000000".to_owned())
        );
        assert_eq!(
            to_json(Raw::Signed(-5), 1.0, 0.0),
            Ok(serde_json::json!(-5))
        );
        assert_eq!(to_json(Raw::Bool(true), 1.0, 0.0), Ok(Value::Bool(true)));
    }

    #[test]
    fn nan_and_infinity_are_errors() {
        for f in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            assert_eq!(to_json(Raw::Float(f), 1.0, 0.0), Err(ValueError::NotFinite));
        }
        assert_eq!(
            to_json(Raw::Float(f32::MAX), f64::MAX, 0.0),
            Err(ValueError::NotFinite)
        );
    }

    #[test]
    fn garbage_registers_never_panic() {
        for ty in [
            DataType::U16,
            DataType::I16,
            DataType::U32,
            DataType::I32,
            DataType::F32,
        ] {
            for order in ORDERS {
                for w in [
                    [0u16, 0],
                    [0xFFFF, 0xFFFF],
                    [0x7FC0, 0],
                    [0x7F80, 0],
                    [1, 0x8000],
                ] {
                    if let Ok(raw) = decode_registers(&w, ty, order) {
                        let _ = to_json(raw, 0.1, -3.0);
                    }
                }
            }
        }
    }
}
