//! Policy primitives for Seawall with no I/O.
//!
//! Everything here is a small, deterministic state machine or algorithm that the gateway drives
//! from its request path and control loops. Time is passed in explicitly (see [`clock`]), so each
//! primitive can be tested without sleeping and benchmarked without a runtime.

pub mod balance;
pub mod clock;
pub mod ejection;
pub mod hash;
pub mod health;
pub mod rng;
