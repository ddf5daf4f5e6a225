//! Seawall's own HTTP/1 engine: every HTTP/1.0 and HTTP/1.1 connection is served here.
//!
//! A proxy's hot path is narrow, so this engine parses heads in place, writes the upstream head
//! straight from the client's bytes and passes bodies through with one `writev` where they fit —
//! no header map, no per-request task or channel. It moves bytes; what happens to a request is
//! decided by the policy layer ([`crate::policy`]) and the engine-neutral upstream call
//! ([`crate::proxy`]) that the hyper engine (HTTP/2) uses too.

mod cached;
mod exchange;
pub mod head;
mod queue;
mod redirect;
mod session;
mod tunnel;

pub use session::{serve, End, PARK_AFTER};
