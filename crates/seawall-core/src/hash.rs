//! Stable 64-bit hashing for consistent hashing: the same key maps to the same server in every
//! process and every release, which `std`'s hasher does not promise. Written by hand because it is
//! ten lines: FNV-1a over the bytes, then a splitmix64 finaliser to spread nearby keys.

/// Hashes `bytes` to a well-mixed, stable 64-bit value.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// splitmix64 finaliser.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_calls_and_sensitive_to_input() {
        assert_eq!(stable_hash(b"user-42"), stable_hash(b"user-42"));
        assert_ne!(stable_hash(b"user-42"), stable_hash(b"user-43"));
        // Pinned value: changing the function would move every user to another server.
        assert_eq!(stable_hash(b""), mix(0xcbf2_9ce4_8422_2325));
    }
}
