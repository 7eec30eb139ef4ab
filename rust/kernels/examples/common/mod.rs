//! What the timing examples share: a fixed pseudo-random byte stream (a
//! 64-bit LCG's top byte), so that runs compare like with like.

/// The byte stream from `seed`.
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed)
    }

    pub fn byte(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 56) as u8
    }
}
