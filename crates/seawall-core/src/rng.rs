//! A tiny non-cryptographic random generator (xorshift64*) for load-balancing choices.
//!
//! Each worker thread owns one, so picking a server never touches shared state.

/// xorshift64* generator; good enough to spread load, not for secrets.
#[derive(Debug, Clone)]
pub struct FastRng(u64);

impl FastRng {
    /// Seeds the generator; a zero seed is replaced because xorshift would stay at zero.
    pub fn new(seed: u64) -> Self {
        FastRng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    /// The next pseudo-random 64-bit value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0), by multiply-shift rather than modulo.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}
