//! Header fields parsed in place: offsets into the buffer a head was read into, with each name's
//! class, so that heads need no header map. Request heads (the HTTP/1 engine) and response heads
//! (the upstream call) keep their fields this way and look them up through [`Fields`].

use crate::headers::{classify, HeaderLookup, Name};

/// One header field: where its name and value are in the buffer, and what the proxy makes of it.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: (u32, u32),
    pub value: (u32, u32),
    pub class: Name,
    /// Not forwarded: listed in the message's `Connection` field, or removed by the route
    /// (`response_headers`).
    pub named: bool,
}

impl Field {
    /// The field `name: value`, both slices of `buf`.
    pub fn new(buf: &[u8], name: &[u8], value: &[u8]) -> Self {
        Field {
            name: range(buf, name),
            value: range(buf, value),
            class: classify(name),
            named: false,
        }
    }
}

/// The offsets of `part` in `buf`. The parser hands out slices of `buf`, except that an empty
/// part (a missing reason phrase, say) may be a static empty string: that is `(0, 0)`.
pub fn range(buf: &[u8], part: &[u8]) -> (u32, u32) {
    let start = (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    if part.is_empty() || start > buf.len() || part.len() > buf.len() - start {
        return (0, 0);
    }
    (start as u32, (start + part.len()) as u32)
}

/// The bytes at `(start, end)` of `buf`.
pub fn slice(buf: &[u8], (start, end): (u32, u32)) -> &[u8] {
    &buf[start as usize..end as usize]
}

/// Fields with the buffer they point into, for lookups (case-insensitive names).
#[derive(Clone, Copy)]
pub struct Fields<'h> {
    pub fields: &'h [Field],
    pub buf: &'h [u8],
}

impl<'h> Fields<'h> {
    /// The first value of `name`, borrowed from the buffer (not from this view).
    pub fn get(&self, name: &str) -> Option<&'h [u8]> {
        self.iter().find(|(n, ..)| n.eq_ignore_ascii_case(name.as_bytes())).map(|(_, v, _)| v)
    }

    /// Each field's name and value.
    pub fn iter(&self) -> impl Iterator<Item = (&'h [u8], &'h [u8], &'h Field)> + 'h {
        let buf = self.buf;
        self.fields.iter().map(move |f| (slice(buf, f.name), slice(buf, f.value), f))
    }
}

impl HeaderLookup for Fields<'_> {
    fn for_each_value(&self, name: &str, found: &mut dyn FnMut(&[u8]) -> bool) {
        for (n, value, _) in self.iter() {
            if n.eq_ignore_ascii_case(name.as_bytes()) && found(value) {
                return;
            }
        }
    }

    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name)
    }

    fn for_each_field(&self, each: &mut dyn FnMut(&[u8], &[u8])) {
        for (name, value, _) in self.iter() {
            each(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_parts_from_elsewhere_are_empty_ranges() {
        let buf = b"HTTP/1.1 200\r\n";
        assert_eq!(range(buf, b""), (0, 0));
        assert_eq!(range(buf, &buf[9..12]), (9, 12));
        let elsewhere = b"200";
        assert_eq!(range(buf, elsewhere), (0, 0), "never an offset outside the buffer");
    }
}
