//! Which read requests one poll of a slave sends.
//!
//! Registers of one kind whose addresses touch or overlap are read with one request (up
//! to the protocol's 125 registers or 2000 bits per request), so a slave with twenty
//! configured registers usually costs one or two round trips per poll. Registers separated
//! by a gap are never merged: reading the unconfigured addresses in between makes many
//! devices answer "illegal data address" for the whole request.

use super::config::{RegisterConfig, RegisterKind};

/// One read request and the configured registers it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub kind: RegisterKind,
    /// First address read.
    pub start: u16,
    /// Registers (or bits) read, 1 ..= `kind.max_per_request()`.
    pub count: u16,
    /// Indices into the slave's register list, by address.
    pub members: Vec<usize>,
}

/// The requests covering `registers`, ordered by kind and address.
pub fn plan(registers: &[RegisterConfig]) -> Vec<Span> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut spans: Vec<Span> = Vec::new();
    for i in order {
        let r = &registers[i];
        let start = u32::from(r.address);
        let end = start + u32::from(r.data_type().width());
        if let Some(s) = spans.last_mut() {
            let s_start = u32::from(s.start);
            let s_end = s_start + u32::from(s.count);
            let new_end = s_end.max(end);
            if s.kind == r.kind
                && start <= s_end
                && new_end - s_start <= u32::from(r.kind.max_per_request())
            {
                // Fits: at most max_per_request (≤ 2000), so the cast cannot truncate.
                s.count = (new_end - s_start) as u16;
                s.members.push(i);
                continue;
            }
        }
        // A register at 65535 of a 2-wide type is refused by validation; saturate anyway
        // so that an unvalidated config cannot wrap around.
        spans.push(Span {
            kind: r.kind,
            start: r.address,
            count: u16::try_from(end - start).unwrap_or(1),
            members: vec![i],
        });
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::super::config::DataType;
    use super::*;

    fn reg(kind: RegisterKind, address: u16, ty: DataType) -> RegisterConfig {
        RegisterConfig {
            name: format!("{}{address}", kind.label()),
            kind,
            address,
            data_type: Some(ty),
            byte_order: None,
            scale: 1.0,
            offset: 0.0,
        }
    }

    #[test]
    fn contiguous_registers_of_one_kind_share_a_request() {
        use DataType::*;
        use RegisterKind::*;
        let regs = vec![
            reg(Input, 4, F32),
            reg(Input, 0, U16),
            reg(Input, 1, U16),
            reg(Input, 2, I32),
            reg(Holding, 2, U16),
            reg(Input, 10, U16),
            reg(Coil, 0, Bool),
            reg(Coil, 1, Bool),
            reg(Input, 5, U16), // overlaps the f32 at 4..6
        ];
        let spans = plan(&regs);
        let got: Vec<_> = spans
            .iter()
            .map(|s| (s.kind, s.start, s.count, s.members.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Coil, 0, 2, vec![6, 7]),
                (Holding, 2, 1, vec![4]),
                (Input, 0, 6, vec![1, 2, 3, 0, 8]),
                (Input, 10, 1, vec![5]),
            ]
        );
    }

    #[test]
    fn a_request_never_exceeds_the_protocol_limit() {
        let regs: Vec<_> = (0..300)
            .map(|a| reg(RegisterKind::Holding, a, DataType::U16))
            .collect();
        let spans = plan(&regs);
        assert_eq!(
            spans.iter().map(|s| s.count).collect::<Vec<_>>(),
            vec![125, 125, 50]
        );
        // A two-register value is never split across requests.
        let regs: Vec<_> = (0..100)
            .map(|a| reg(RegisterKind::Input, a * 2, DataType::U32))
            .collect();
        let spans = plan(&regs);
        assert!(spans.iter().all(|s| s.count % 2 == 0 && s.count <= 125));
        assert_eq!(spans.iter().map(|s| s.members.len()).sum::<usize>(), 100);
    }
}
