//! What the HTTP acquirer tells the operator on stderr: each time its circuit breaker
//! opens or closes (once each, not each failed probe in between), and an acquirer it
//! cannot reach, at most once per `UNREACHABLE_LOG_INTERVAL_MS` per core with a count of
//! the failures in between, so an outage is visible without flooding the log.

use super::breaker::BreakerState;

/// At most one "unreachable" line per core in this long.
pub const UNREACHABLE_LOG_INTERVAL_MS: u64 = 10_000;

/// A change of the breaker worth a line: it opened from closed, or closed again. A failed
/// probe (half-open back to open) is the same outage and says nothing new.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerChange {
    Opened,
    Closed,
}

impl BreakerChange {
    pub fn between(before: BreakerState, after: BreakerState) -> Option<BreakerChange> {
        match (before, after) {
            (BreakerState::Closed { .. }, BreakerState::Open { .. }) => Some(BreakerChange::Opened),
            (BreakerState::HalfOpen, BreakerState::Closed { .. }) => Some(BreakerChange::Closed),
            _ => None,
        }
    }

    pub fn log(self, host: &str, failures_to_open: u32, cooling_ms: u64) {
        let core = core_name();
        match self {
            BreakerChange::Opened => eprintln!(
                "payd: {core}: acquirer circuit breaker opened after {failures_to_open} \
                 consecutive failed attempts to {host}: attempts fail fast, one probe every \
                 {cooling_ms} ms"
            ),
            BreakerChange::Closed => {
                eprintln!("payd: {core}: acquirer circuit breaker closed: {host} answers again")
            }
        }
    }
}

/// Rate limit of the "unreachable" line: when it was last written, and the failures
/// since then that it did not write.
#[derive(Debug, Default)]
pub struct UnreachableLog {
    last_logged_ms: Option<u64>,
    unlogged: u64,
}

impl UnreachableLog {
    /// Counts one failure to reach the acquirer at `now_ms`; returns the failures the
    /// line should report (this one included) when it is time to write one.
    pub fn note(&mut self, now_ms: u64) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_logged_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= UNREACHABLE_LOG_INTERVAL_MS);
        if !due {
            return None;
        }
        self.last_logged_ms = Some(now_ms);
        Some(std::mem::take(&mut self.unlogged))
    }

    /// `note`, then the line when one is due. `reason` names no secret: the kind of
    /// failure only, and the URL's host and port.
    pub fn report(&mut self, now_ms: u64, host: &str, reason: &str) {
        if let Some(failures) = self.note(now_ms) {
            let core = core_name();
            let more = match failures {
                1 => String::new(),
                count => format!(" ({count} failed attempts since the last such line)"),
            };
            eprintln!("payd: {core}: acquirer at {host} unreachable: {reason}{more}");
        }
    }
}

/// The executor thread's name (`payd-core<CPU>`), which says which core's client it is.
fn core_name() -> String {
    std::thread::current().name().map_or_else(
        || "acquirer".to_string(),
        |name| name.trim_start_matches("payd-").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_speaks_on_opening_and_closing_only() {
        let closed = BreakerState::Closed { failures: 4 };
        let open = BreakerState::Open { until_ms: 10 };
        let half_open = BreakerState::HalfOpen;
        assert_eq!(
            BreakerChange::between(closed, open),
            Some(BreakerChange::Opened)
        );
        assert_eq!(
            BreakerChange::between(half_open, open),
            None,
            "a failed probe"
        );
        assert_eq!(BreakerChange::between(open, half_open), None);
        assert_eq!(
            BreakerChange::between(half_open, BreakerState::Closed { failures: 0 }),
            Some(BreakerChange::Closed)
        );
        assert_eq!(
            BreakerChange::between(closed, BreakerState::Closed { failures: 5 }),
            None
        );
    }

    #[test]
    fn unreachable_lines_are_rate_limited_and_count_what_they_skipped() {
        let mut log = UnreachableLog::default();
        assert_eq!(log.note(1_000), Some(1));
        assert_eq!(log.note(1_001), None);
        assert_eq!(log.note(10_999), None);
        assert_eq!(log.note(11_000), Some(3));
        assert_eq!(log.note(11_001), None);
        assert_eq!(log.note(30_000), Some(2));
    }
}
