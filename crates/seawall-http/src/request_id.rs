//! Request ids (`server.request_id`): each request carries one id, in the header named by
//! `server.request_id_header` — sent upstream, returned to the client on every answer, written in
//! the access log and in the body of every refusal.
//!
//! A client's own id is kept when it is a sane token (1 to [`MAX_LEN`] visible ASCII bytes) and
//! `server.trust_request_id` is on (the default, as most gateways do: it lets a caller follow its
//! request through); otherwise Seawall's replaces it. Seawall's ids are 128 bits in hex from the
//! worker's own generator, seeded from the OS at start, so nothing is shared between threads and
//! the id lives inline: no allocation.

use std::cell::RefCell;

use seawall_core::rng::FastRng;

use crate::headers::HeaderLookup;

/// The longest client id kept.
pub const MAX_LEN: usize = 128;

/// One request's id, inline.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RequestId {
    /// The client's id when it is a sane token: 1 to [`MAX_LEN`] bytes, each visible ASCII.
    pub fn from_client(value: &[u8]) -> Option<Self> {
        let sane = !value.is_empty()
            && value.len() <= MAX_LEN
            && value.iter().all(|b| (0x21..=0x7e).contains(b));
        sane.then(|| {
            let mut bytes = [0; MAX_LEN];
            bytes[..value.len()].copy_from_slice(value);
            RequestId { len: value.len() as u8, bytes }
        })
    }

    /// A new id: 128 bits in hex.
    pub fn generate(ids: &IdSource) -> Self {
        let (a, b) = {
            let mut rng = ids.0.borrow_mut();
            (rng.0.next_u64(), rng.1.next_u64())
        };
        let mut bytes = [0; MAX_LEN];
        let value = (u128::from(a) << 64) | u128::from(b);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, byte) in bytes[..32].iter_mut().enumerate() {
            *byte = HEX[((value >> (124 - 4 * i)) & 0xf) as usize];
        }
        RequestId { len: 32, bytes }
    }

    /// The id of a request: its client's when kept, else a new one.
    pub fn for_request(
        ids: &IdSource,
        server: &seawall_config::Server,
        headers: &dyn HeaderLookup,
    ) -> Self {
        let client = if server.trust_request_id {
            headers.first(&server.request_id_header).and_then(Self::from_client)
        } else {
            None
        };
        client.unwrap_or_else(|| Self::generate(ids))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII ever gets in.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// Appends `name: id\r\n` to HTTP/1 field lines.
    pub fn push_line(&self, name: &str, lines: &mut Vec<u8>) {
        crate::headers::push_field(lines, name.as_bytes(), self.as_bytes());
    }
}

/// A worker's source of ids: two generators (128 bits of state), seeded from the OS's random
/// keys so that ids differ between workers, restarts and instances.
pub struct IdSource(RefCell<(FastRng, FastRng)>);

impl Default for IdSource {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let seed = || {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(std::process::id().into());
            h.finish()
        };
        IdSource(RefCell::new((FastRng::new(seed()), FastRng::new(seed()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_sane() {
        assert_eq!(RequestId::from_client(b"abc-123").unwrap().as_str(), "abc-123");
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"a b").is_none());
        assert!(RequestId::from_client(b"a\x7f").is_none());
        assert!(RequestId::from_client("é".as_bytes()).is_none());
        assert!(RequestId::from_client(&[b'a'; MAX_LEN]).is_some());
        assert!(RequestId::from_client(&[b'a'; MAX_LEN + 1]).is_none());
    }

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let ids = IdSource::default();
        let (a, b) = (RequestId::generate(&ids), RequestId::generate(&ids));
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        let other = IdSource::default();
        assert_ne!(RequestId::generate(&other), a);
    }
}
