//! A cheap per-thread (so per-core) pseudo-random source for jitter: splitmix64, seeded
//! once from the operating system. Not for secrets: it only spreads retries and latencies.

use std::cell::Cell;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

/// The next pseudo-random value of this thread's sequence.
pub fn next_u64() -> u64 {
    STATE.with(|state| {
        let (next_state, value) = splitmix64(state.get());
        state.set(next_state);
        value
    })
}

/// One step of splitmix64 (Steele, Lea and Flood): the new state and the output.
fn splitmix64(state: u64) -> (u64, u64) {
    let state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (state, z ^ (z >> 31))
}

fn seed() -> u64 {
    let mut bytes = [0u8; 8];
    // Without an OS seed, jitter is still spread by the sequence, just not unpredictable,
    // which is acceptable for jitter and better than refusing to run.
    if getrandom::getrandom(&mut bytes).is_err() {
        return 0x2545_f491_4f6c_dd1d;
    }
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        // First outputs of the reference C implementation seeded with 0.
        let (state, first) = splitmix64(0);
        let (_, second) = splitmix64(state);
        assert_eq!(first, 0xe220_a839_7b1d_cdaf);
        assert_eq!(second, 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn next_u64_varies() {
        let values: Vec<u64> = (0..64).map(|_| next_u64()).collect();
        let mut distinct = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), values.len());
        // Both halves of the range show up: the low bits used for jitter are not stuck.
        assert!(values.iter().any(|v| v % 2 == 0) && values.iter().any(|v| v % 2 == 1));
    }
}
