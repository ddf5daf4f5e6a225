//! Cache keys: the route's name and the parts of the request its `key` lists (host, path, query,
//! request fields), and for an answer that varies, the request's values for the fields its
//! `Vary` names. Keys are text, so that a purge or an operator can read them.

use seawall_config::{CacheKeyPart, RouteCache};

use super::Stored;
use crate::headers::HeaderLookup;
use crate::request::RequestView;

/// Separates the parts of a key (a byte no request line or field value may hold).
const SEP: char = '\n';

/// A cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key of a request on route `route`.
    pub fn primary(route: &str, policy: &RouteCache, request: &RequestView<'_>) -> Key {
        let mut key = String::with_capacity(route.len() + request.target.len() + 32);
        key.push_str(route);
        for part in &policy.key {
            key.push(SEP);
            match part {
                CacheKeyPart::Host => {
                    let host = request.host.unwrap_or_default().to_ascii_lowercase();
                    push_lossy(&mut key, &host);
                }
                CacheKeyPart::Path => push_lossy(&mut key, request.path),
                CacheKeyPart::Query => {
                    let query = request.target.iter().position(|&b| b == b'?');
                    push_lossy(&mut key, query.map_or(&b""[..], |i| &request.target[i..]));
                }
                CacheKeyPart::Header(name) => {
                    key.push_str(name);
                    key.push('=');
                    push_lossy(&mut key, &field_value(request.headers, name).unwrap_or_default());
                }
            }
        }
        Key(key)
    }

    /// The key of the variant of this key's answer that the request's values for `names` select.
    pub fn variant(&self, names: &[String], request: &dyn HeaderLookup) -> Key {
        let mut key = self.0.clone();
        key.push_str("\nvary");
        for name in names {
            key.push(SEP);
            key.push_str(name);
            key.push('=');
            push_lossy(&mut key, &field_value(request, name).unwrap_or_default());
        }
        Key(key)
    }

    /// The key of a stored variant (from the values its request had).
    pub fn variant_of(&self, stored: &Stored) -> Key {
        let mut key = self.0.clone();
        key.push_str("\nvary");
        for (name, value) in &stored.vary {
            key.push(SEP);
            key.push_str(name);
            key.push('=');
            push_lossy(&mut key, value.as_deref().unwrap_or_default());
        }
        Key(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Every line of field `name`, joined as one value (RFC 9110 §5.3): a second line must not let
/// one request pass for another.
pub fn field_value(fields: &dyn HeaderLookup, name: &str) -> Option<Vec<u8>> {
    let mut joined: Option<Vec<u8>> = None;
    fields.for_each_value(name, &mut |value| {
        match joined.as_mut() {
            Some(all) => {
                all.extend_from_slice(b", ");
                all.extend_from_slice(value);
            }
            None => joined = Some(value.to_vec()),
        }
        false
    });
    joined
}

/// Appends bytes as text (a key compares bytes; invalid UTF-8 is replaced the same way each
/// time), with the separator escaped.
fn push_lossy(key: &mut String, bytes: &[u8]) {
    for chunk in String::from_utf8_lossy(bytes).split(SEP) {
        key.push_str(chunk);
    }
}
