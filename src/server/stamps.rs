//! What every response is stamped with: the `Date` header, formatted at most once a
//! second per core, and generated request ids, unique per process start and core. The
//! clock is read once per batch of pipelined requests (`Clock`), not per request.

use std::cell::{Cell, RefCell};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// IMF-fixdate (`Mon, 23 Nov 2026 07:00:00 GMT`) is always 29 bytes.
pub const DATE_BYTES: usize = 29;
/// `3f9a0c11-01-00000000002a`: process, core, counter.
const REQUEST_ID_BYTES: usize = 8 + 1 + 2 + 1 + 12;

/// The time a batch of requests is stamped with.
pub struct Clock {
    /// Monotonic; advanced to each request's end, which is the next one's start.
    pub instant: Instant,
    pub date: [u8; DATE_BYTES],
    pub unix_ms: u64,
}

pub struct Stamps {
    date_second: Cell<u64>,
    date: RefCell<[u8; DATE_BYTES]>,
    /// Random per process start: ids stay unique across restarts.
    process: [u8; 4],
    core: u8,
    counter: Cell<u64>,
}

impl Stamps {
    pub fn new(process: u32, core: usize) -> Stamps {
        Stamps {
            date_second: Cell::new(u64::MAX),
            date: RefCell::new([b' '; DATE_BYTES]),
            process: process.to_be_bytes(),
            core: core as u8,
            counter: Cell::new(0),
        }
    }

    pub fn clock(&self) -> Clock {
        let now = SystemTime::now();
        let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let second = since_epoch.as_secs();
        if second != self.date_second.get() {
            let formatted = httpdate::fmt_http_date(now);
            self.date
                .borrow_mut()
                .copy_from_slice(&formatted.as_bytes()[..DATE_BYTES]);
            self.date_second.set(second);
        }
        Clock {
            instant: Instant::now(),
            date: *self.date.borrow(),
            unix_ms: since_epoch.as_millis() as u64,
        }
    }

    /// Writes a fresh request id into `out` and returns it.
    pub fn generate_request_id<'a>(&self, out: &'a mut [u8; 64]) -> &'a [u8] {
        let counter = self.counter.get().wrapping_add(1);
        self.counter.set(counter);
        let id = &mut out[..REQUEST_ID_BYTES];
        // Encoding into slices of the right length cannot fail.
        hex::encode_to_slice(self.process, &mut id[0..8]).expect("8 hex digits");
        id[8] = b'-';
        hex::encode_to_slice([self.core], &mut id[9..11]).expect("2 hex digits");
        id[11] = b'-';
        hex::encode_to_slice(&counter.to_be_bytes()[2..], &mut id[12..]).expect("12 hex digits");
        &out[..REQUEST_ID_BYTES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_differ_and_are_visible_ascii() {
        let stamps = Stamps::new(0xdead_beef, 1);
        let mut first = [0u8; 64];
        let mut second = [0u8; 64];
        let first = stamps.generate_request_id(&mut first).to_vec();
        let second = stamps.generate_request_id(&mut second);
        assert_eq!(first, b"deadbeef-01-000000000001");
        assert_eq!(second, b"deadbeef-01-000000000002");
    }

    #[test]
    fn date_is_imf_fixdate() {
        let clock = Stamps::new(1, 0).clock();
        let text = std::str::from_utf8(&clock.date).unwrap();
        assert!(text.ends_with(" GMT"), "{text}");
        assert!(httpdate::parse_http_date(text).is_ok());
        assert!(clock.unix_ms > 1_700_000_000_000);
    }
}
