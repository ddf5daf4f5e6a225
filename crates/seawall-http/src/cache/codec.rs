//! A stored answer as bytes, for the shared layer (L2): a version tag, then every part with its
//! length. Decoding takes nothing on trust — bytes from another version, a truncated value or a
//! stranger's key are a miss, never a panic or a wrong answer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use seawall_core::cache::Lifetime;

use super::Stored;

/// The format's tag: a change of layout changes it (old entries then read as misses).
const TAG: &[u8; 8] = b"SWCACHE1";

/// The bytes of `stored`.
pub fn encode(stored: &Stored) -> Vec<u8> {
    let mut out = BytesMut::with_capacity(stored.body.len() + 512);
    out.put_slice(TAG);
    out.put_u16(stored.status);
    put_bytes(&mut out, &stored.reason);
    out.put_u32(stored.fields.len() as u32);
    for (name, value) in &stored.fields {
        put_bytes(&mut out, name);
        put_bytes(&mut out, value);
    }
    out.put_u64(stored.received_at);
    out.put_u64(stored.initial_age);
    let l = &stored.lifetime;
    out.put_u64(l.fresh);
    out.put_u64(l.while_revalidate);
    out.put_u64(l.if_error);
    out.put_u8(u8::from(l.must_revalidate) | u8::from(l.revalidate_always) << 1);
    put_option(&mut out, stored.etag.as_deref());
    put_option(&mut out, stored.last_modified.as_deref());
    out.put_u32(stored.vary.len() as u32);
    for (name, value) in &stored.vary {
        put_bytes(&mut out, name.as_bytes());
        put_option(&mut out, value.as_deref());
    }
    put_bytes(&mut out, stored.path.as_bytes());
    put_bytes(&mut out, stored.route.as_bytes());
    put_bytes(&mut out, &stored.body);
    out.to_vec()
}

/// The stored answer in `bytes`, if they are one.
pub fn decode(bytes: &Bytes) -> Option<Stored> {
    let mut b = bytes.clone();
    if b.len() < TAG.len() || &b[..TAG.len()] != TAG {
        return None;
    }
    b.advance(TAG.len());
    let status = get_u16(&mut b)?;
    let reason = get_bytes(&mut b)?;
    let count = get_u32(&mut b)? as usize;
    let mut fields = Vec::with_capacity(count.min(256));
    for _ in 0..count {
        let (name, value) = (get_bytes(&mut b)?, get_bytes(&mut b)?);
        // Only what a stored answer can hold: a token for a name, a value without line breaks,
        // nothing that frames the body or belongs to a hop.
        let clean_value = !value.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0));
        if http::HeaderName::from_bytes(&name).is_err()
            || !clean_value
            || !crate::headers::forwards_response_field(crate::headers::classify(&name))
        {
            return None;
        }
        fields.push((name, value));
    }
    let received_at = get_u64(&mut b)?;
    let initial_age = get_u64(&mut b)?;
    let fresh = get_u64(&mut b)?;
    let while_revalidate = get_u64(&mut b)?;
    let if_error = get_u64(&mut b)?;
    let flags = get_u8(&mut b)?;
    let etag = get_option(&mut b)?;
    let last_modified = get_option(&mut b)?;
    let count = get_u32(&mut b)? as usize;
    let mut vary = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = String::from_utf8(get_bytes(&mut b)?.to_vec()).ok()?;
        vary.push((name, get_option(&mut b)?));
    }
    let path = String::from_utf8(get_bytes(&mut b)?.to_vec()).ok()?;
    let route = String::from_utf8(get_bytes(&mut b)?.to_vec()).ok()?;
    let body = get_bytes(&mut b)?;
    let clean_reason = !reason.iter().any(|&c| matches!(c, b'\r' | b'\n' | 0));
    if b.has_remaining() || !(200..=599).contains(&status) || !clean_reason {
        return None;
    }
    Some(Stored {
        status,
        reason,
        fields,
        body,
        received_at,
        initial_age,
        lifetime: Lifetime {
            fresh,
            while_revalidate,
            if_error,
            must_revalidate: flags & 1 != 0,
            revalidate_always: flags & 2 != 0,
        },
        etag,
        last_modified,
        vary,
        path: path.into(),
        route: route.into(),
    })
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_option(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        Some(b) => {
            out.put_u8(1);
            put_bytes(out, b);
        }
        None => out.put_u8(0),
    }
}

fn get_u8(b: &mut Bytes) -> Option<u8> {
    (b.remaining() >= 1).then(|| b.get_u8())
}

fn get_u16(b: &mut Bytes) -> Option<u16> {
    (b.remaining() >= 2).then(|| b.get_u16())
}

fn get_u32(b: &mut Bytes) -> Option<u32> {
    (b.remaining() >= 4).then(|| b.get_u32())
}

fn get_u64(b: &mut Bytes) -> Option<u64> {
    (b.remaining() >= 8).then(|| b.get_u64())
}

fn get_bytes(b: &mut Bytes) -> Option<Bytes> {
    let len = get_u32(b)? as usize;
    (b.remaining() >= len).then(|| b.split_to(len))
}

fn get_option(b: &mut Bytes) -> Option<Option<Bytes>> {
    match get_u8(b)? {
        0 => Some(None),
        1 => Some(Some(get_bytes(b)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Stored {
        Stored {
            status: 200,
            reason: Bytes::from_static(b"OK"),
            fields: vec![(Bytes::from_static(b"etag"), Bytes::from_static(b"\"v1\""))],
            body: Bytes::from_static(b"hello"),
            received_at: 1_700_000_000,
            initial_age: 7,
            lifetime: Lifetime {
                fresh: 60,
                while_revalidate: 30,
                if_error: 3600,
                must_revalidate: false,
                revalidate_always: true,
            },
            etag: Some(Bytes::from_static(b"\"v1\"")),
            last_modified: None,
            vary: vec![
                ("accept-language".into(), Some(Bytes::from_static(b"en"))),
                ("x".into(), None),
            ],
            path: "/p?q=1".into(),
            route: "pages".into(),
        }
    }

    #[test]
    fn an_answer_comes_back_as_it_went() {
        let stored = sample();
        let back = decode(&Bytes::from(encode(&stored))).unwrap();
        assert_eq!(encode(&back), encode(&stored));
        assert_eq!(back.body, stored.body);
        assert_eq!(back.lifetime, stored.lifetime);
        assert_eq!(back.vary, stored.vary);
    }

    #[test]
    fn strangers_and_truncations_are_misses() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(decode(&Bytes::copy_from_slice(&bytes[..cut])).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&Bytes::from(longer)).is_none());
        assert!(decode(&Bytes::from_static(b"hello world")).is_none());
        let mut other = bytes;
        other[7] = b'9';
        assert!(decode(&Bytes::from(other)).is_none(), "another version's tag");
        // A value with a line break would add a field of its own to an HTTP/1 head.
        let mut injected = sample();
        injected.fields =
            vec![(Bytes::from_static(b"x"), Bytes::from_static(b"1\r\nset-cookie: a=b"))];
        assert!(decode(&Bytes::from(encode(&injected))).is_none());
        let mut framed = sample();
        framed.fields =
            vec![(Bytes::from_static(b"transfer-encoding"), Bytes::from_static(b"chunked"))];
        assert!(decode(&Bytes::from(encode(&framed))).is_none());
        let mut interim = sample();
        interim.status = 101;
        assert!(decode(&Bytes::from(encode(&interim))).is_none());
    }
}
