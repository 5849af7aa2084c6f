//! A connection's read buffer: owns how much memory a device's reads hold, and keeps it
//! in proportion to the device's traffic. It grows while reads fill it (a fast publisher
//! then gets one journal submission per window of readings) and is given back once the
//! device slows down, so a burst does not leave the connection holding its peak buffer
//! for the rest of its life — with thousands of connections, that would be most of the
//! daemon's memory.
//!
//! The buffer is shared with the readings parsed from it (each payload is a slice of
//! it, so parsing copies nothing): memory given back here is freed once the journal has
//! committed and dropped the readings that still point into it.

use bytes::BytesMut;

/// Smallest read (and initial buffer) of a connection: a reading of about 100 bytes with
/// its topic fits; a larger one makes the next read twice as large. It is what an idle
/// connection holds, times the thousands of devices a gateway may have.
pub(super) const MIN_READ: usize = 256;
/// Largest read of a connection: enough for a fast publisher's window of readings in one
/// journal submission.
pub(super) const MAX_READ: usize = 64 * 1024;
/// A buffer more than this many times the size reads need now is given back for one of
/// that size. Above 2, so that a buffer the allocator rounded up, or that is growing
/// back towards [`MAX_READ`], is never replaced.
const GIVE_BACK_ABOVE: usize = 4;

/// How much buffer space a connection's next read gets: it doubles while reads fill the
/// space they were given (a fast publisher) and halves back while they use less than a
/// quarter of it, between [`MIN_READ`] and [`MAX_READ`]. A device sending a reading a
/// second keeps a [`MIN_READ`] buffer; one with a window of readings in flight gets one
/// submission per window.
#[derive(Debug, Clone, Copy)]
struct ReadSize(usize);

impl Default for ReadSize {
    fn default() -> ReadSize {
        ReadSize(MIN_READ)
    }
}

impl ReadSize {
    fn get(self) -> usize {
        self.0
    }

    /// Adjusts after a read of `n` bytes into `spare` bytes of space.
    fn record(&mut self, n: usize, spare: usize) {
        if n >= spare {
            self.0 = (self.0 * 2).min(MAX_READ);
        } else if n < self.0 / 4 {
            self.0 = (self.0 / 2).max(MIN_READ);
        }
    }
}

/// The bytes read from a device and not yet parsed, with the size of its next read.
pub(super) struct ReadBuffer {
    buf: BytesMut,
    size: ReadSize,
    /// The spare space the last [`ReadBuffer::prepare`] gave.
    spare: usize,
}

impl ReadBuffer {
    /// Takes over `buf` (what was read with the CONNECT and not parsed yet).
    pub(super) fn new(buf: BytesMut) -> ReadBuffer {
        ReadBuffer {
            buf,
            size: ReadSize::default(),
            spare: 0,
        }
    }

    /// The bytes not yet parsed; the next read appends to them.
    pub(super) fn bytes(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Makes room for the next read: the size reads need now, in a buffer no larger than
    /// [`GIVE_BACK_ABOVE`] times that (what is left of a larger one is moved over).
    pub(super) fn prepare(&mut self) {
        let want = self.size.get();
        self.buf.reserve(want);
        // `reserve` reclaims a whole buffer once no reading points into it any more,
        // however large a burst made it; a buffer the size of what reads need now
        // replaces it (the copy is of a partial packet at most).
        if self.buf.capacity() > GIVE_BACK_ABOVE * want.max(self.buf.len()) {
            let mut smaller = BytesMut::with_capacity(self.buf.len() + want);
            smaller.extend_from_slice(&self.buf);
            self.buf = smaller;
        }
        self.spare = self.buf.capacity() - self.buf.len();
    }

    /// Records a read of `n` bytes into the space [`ReadBuffer::prepare`] made.
    pub(super) fn record(&mut self, n: usize) {
        self.size.record(n, self.spare);
    }

    /// The bytes the buffer holds room for, from its start.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, Bytes};

    use super::*;

    #[test]
    fn read_size_grows_for_fast_publishers_and_shrinks_back_for_slow_ones() {
        let mut r = ReadSize::default();
        assert_eq!(r.get(), MIN_READ);
        // A reading a second: small reads never grow it.
        r.record(120, MIN_READ);
        assert_eq!(r.get(), MIN_READ);
        // Reads that fill their space double it, up to the limit.
        for _ in 0..20 {
            let spare = r.get();
            r.record(spare, spare);
        }
        assert_eq!(r.get(), MAX_READ);
        // Quiet again: it halves back to the minimum.
        for _ in 0..20 {
            r.record(100, r.get());
        }
        assert_eq!(r.get(), MIN_READ);
    }

    /// One read of `n` bytes (at most the space prepared), parsed into readings that keep
    /// their payloads as slices of the buffer, as the listener's readings do.
    fn read(b: &mut ReadBuffer, n: usize, held: &mut Vec<Bytes>) {
        b.prepare();
        let n = n.min(b.spare);
        b.bytes().put_bytes(7, n);
        b.record(n);
        held.push(b.bytes().split().freeze());
    }

    /// A buffer after a burst: every read filled the space it was given, and the journal
    /// committed and dropped each read's readings before the next.
    fn after_a_burst() -> ReadBuffer {
        let mut b = ReadBuffer::new(BytesMut::with_capacity(MIN_READ));
        let mut in_journal = Vec::new();
        for _ in 0..12 {
            read(&mut b, usize::MAX, &mut in_journal);
            in_journal.clear();
        }
        b
    }

    #[test]
    fn a_buffer_grown_in_a_burst_is_given_back_once_the_device_slows_down() {
        let mut b = after_a_burst();
        b.prepare();
        assert!(b.capacity() >= MAX_READ, "grew to {}", b.capacity());
        // A reading a second again, each one committed before the next arrives.
        let mut in_journal = Vec::new();
        for _ in 0..20 {
            read(&mut b, 100, &mut in_journal);
            in_journal.clear();
        }
        b.prepare();
        assert!(
            b.capacity() <= GIVE_BACK_ABOVE * MIN_READ,
            "still holds {} bytes after the burst",
            b.capacity()
        );
    }

    #[test]
    fn a_partial_packet_survives_the_buffer_being_given_back() {
        let mut b = after_a_burst();
        // Slow reads that leave the start of a packet behind each time.
        for i in 0..20u8 {
            b.prepare();
            b.bytes().put_u8(i);
            b.record(1);
        }
        b.prepare();
        assert!(b.capacity() <= GIVE_BACK_ABOVE * MIN_READ);
        assert_eq!(&b.bytes()[..], &(0..20).collect::<Vec<u8>>()[..]);
    }
}
