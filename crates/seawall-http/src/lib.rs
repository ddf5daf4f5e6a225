//! The Seawall HTTP gateway: a reverse proxy built to keep an API answering through a crisis.
//!
//! Start with [`Gateway::start`]. The modules are layered, each using only those above it here:
//!
//! - plain types: [`problem`] (refusals), [`access_log`] (its lines and destination), [`headers`] (the header policy), [`request`] (the
//!   request view both engines give), [`request_id`], [`fields`] and [`response`] (heads parsed in place),
//!   [`chunked`],
//!   [`metrics`], [`timer`], [`signal`], [`io`], [`faultlog`], [`overload`] (the level and crisis
//!   mode requests read, the machine's signals), [`control`] (file watching);
//! - [`tls`]: termination on the listener and verified connections to upstreams;
//! - the upstream model: [`upstream`] (groups, balancing, pools, health checks);
//! - state: [`snapshot`], [`state`] (shared with the control plane), [`worker`] (per thread);
//! - the one request path: [`router`] and [`policy`] (admission, accounting), [`proxy`] (the
//!   engine-neutral upstream call);
//! - the engines, which only move bytes: [`h1`] (HTTP/1.x, Seawall's own) and [`h2`] (hyper,
//!   HTTP/2);
//! - [`server`] (listeners, workers, parked connections), [`controller`] (the overload controller:
//!   levels and adaptive limits), then [`admin`], and [`gateway`] on top (start, reload, drain).

pub mod access_log;
pub mod admin;
pub mod cache;
pub mod chunked;
pub mod client;
pub mod control;
pub mod controller;
pub mod edge;
pub mod egress;
pub mod faultlog;
pub mod fields;
pub mod gateway;
pub mod h1;
pub mod h2;
pub mod headers;
pub mod io;
pub mod metrics;
pub mod overload;
pub mod policy;
pub mod problem;
pub mod proxy;
pub mod queue;
pub mod ratelimit;
pub mod request;
pub mod request_id;
pub mod resolve;
pub mod response;
pub mod router;
pub mod server;
pub mod signal;
pub mod snapshot;
pub mod state;
pub mod switches;
pub mod timer;
pub mod tls;
pub mod upstream;
pub mod worker;

pub use gateway::Gateway;
pub use server::StartError;
pub use state::{ReloadError, Shared};
