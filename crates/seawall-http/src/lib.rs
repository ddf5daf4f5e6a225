//! The Seawall HTTP gateway: a reverse proxy built to keep an API answering through a crisis.
//!
//! Start with [`Gateway::start`]. The request path is in [`pipeline`]; the proxy action in
//! [`proxy`] (requests served by hyper) and [`h1`] (Seawall's own HTTP/1.1 engine, which serves
//! the common case); upstream groups, pools and health checks in [`upstream`]; the process layout
//! (one single-threaded runtime per worker, parked idle connections) in [`server`]; the admin API
//! in [`admin`].

pub mod admin;
pub mod body;
pub mod control;
pub mod h1;
pub mod headers;
pub mod metrics;
pub mod pipeline;
pub mod problem;
pub mod proxy;
pub mod router;
pub mod server;
pub mod signal;
pub mod snapshot;
pub mod timer;
pub mod upstream;

pub use server::{Gateway, ReloadError, Shared, StartError};
