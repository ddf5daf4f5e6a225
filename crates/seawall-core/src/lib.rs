//! Policy primitives for Seawall with no I/O.
//!
//! Everything here is a small, deterministic state machine or algorithm that the gateway drives
//! from its request path and control loops. Time is passed in explicitly (see [`clock`]), so each
//! primitive can be tested without sleeping and benchmarked without a runtime.

pub mod adaptive;
pub mod backoff;
pub mod balance;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod cache;
pub mod calls;
pub mod civil;
pub mod clock;
pub mod deadline;
pub mod ejection;
pub mod gcra;
pub mod hash;
pub mod health;
pub mod overload;
pub mod priority;
pub mod ratelimit;
pub mod rng;
pub mod window;
