//! Seawall's own HTTP/1.1 engine for the common case of the proxy path.
//!
//! hyper is general; a proxy's hot path is narrow. For an HTTP/1.1 request in origin form with no
//! body or a `Content-Length` one, this engine parses the head in place, writes the upstream
//! request from those bytes, sends it on a pooled connection of its own, and passes the response
//! head and body through with one `writev` where it fits — no header map, no per-request task or
//! channel. Everything else is handed to hyper with the bytes already read (see [`head::Parsed`]).

pub mod chunked;
mod exchange;
pub mod head;
mod session;

pub use session::{serve, End};
