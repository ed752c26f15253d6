//! What the decoders' random-input tests share: a seeded generator, so a failing case
//! replays, and the mutations of a valid encoding they feed in.

/// xorshift64*: a seeded generator so a failing case can be replayed.
pub struct Prng(pub u64);

impl Prng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

/// `valid` with up to three random bytes overwritten, cut short at random half the time.
pub fn mutate(prng: &mut Prng, valid: &[u8]) -> Vec<u8> {
    let mut bytes = valid.to_vec();
    for _ in 0..prng.below(4) {
        let at = prng.below(bytes.len());
        bytes[at] = prng.next() as u8;
    }
    if prng.below(2) == 0 {
        bytes.truncate(prng.below(bytes.len() + 1));
    }
    bytes
}
