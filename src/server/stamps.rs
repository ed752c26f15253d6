//! What every response is stamped with: the `Date` header, cached per core and refreshed
//! once a second, and generated request ids, unique per process start and core.

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// `Date` header value, formatted at most once per second.
pub struct DateCache {
    second: Cell<u64>,
    text: RefCell<[u8; 29]>,
}

impl DateCache {
    pub fn new() -> DateCache {
        DateCache {
            second: Cell::new(u64::MAX),
            text: RefCell::new([b' '; 29]),
        }
    }

    pub fn now(&self) -> [u8; 29] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second.get() {
            let formatted = httpdate::fmt_http_date(now);
            // IMF-fixdate is always 29 bytes.
            self.text
                .borrow_mut()
                .copy_from_slice(&formatted.as_bytes()[..29]);
            self.second.set(second);
        }
        *self.text.borrow()
    }
}

impl Default for DateCache {
    fn default() -> DateCache {
        DateCache::new()
    }
}

/// Request ids for requests that did not bring a valid one: a random per-process prefix,
/// the core, and a per-core counter (`3f9a0c11-01-000000000000002a`).
pub struct RequestIds {
    process: u32,
    core: u8,
    counter: Cell<u64>,
}

impl RequestIds {
    pub fn new(process: u32, core: usize) -> RequestIds {
        RequestIds {
            process,
            core: core as u8,
            counter: Cell::new(0),
        }
    }

    /// Writes a fresh id into `out` and returns it.
    pub fn generate<'a>(&self, out: &'a mut [u8; 64]) -> &'a [u8] {
        let counter = self.counter.get().wrapping_add(1);
        self.counter.set(counter);
        let mut cursor = &mut out[..];
        let _ = write!(
            cursor,
            "{:08x}-{:02x}-{:012x}",
            self.process, self.core, counter
        );
        let written = 64 - cursor.len();
        &out[..written]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_differ_and_are_visible_ascii() {
        let ids = RequestIds::new(0xdead_beef, 1);
        let mut first = [0u8; 64];
        let mut second = [0u8; 64];
        let first = ids.generate(&mut first).to_vec();
        let second = ids.generate(&mut second);
        assert_eq!(first, b"deadbeef-01-000000000001");
        assert_ne!(first.as_slice(), second);
    }

    #[test]
    fn date_is_imf_fixdate() {
        let date = DateCache::new().now();
        let text = std::str::from_utf8(&date).unwrap();
        assert!(text.ends_with(" GMT"), "{text}");
        assert!(httpdate::parse_http_date(text).is_ok());
    }
}
