//! Seawall's configuration, read in two stages (the ripgrep way).
//!
//! 1. [`raw`] mirrors the TOML file with serde and `deny_unknown_fields`, keeping the source span of
//!    every value that validation may need to point at.
//! 2. [`validate`] turns it into the [`model`] the gateway runs on: durations and sizes parsed,
//!    addresses resolved, upstream names resolved to indices, timeouts checked against each other.
//!
//! Every problem becomes a [`ConfigError`] naming file, line, column, the key path and what was
//! expected; validation reports all problems it finds, not just the first.

pub mod error;
pub mod model;
pub mod raw;
mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;

use std::path::Path;

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    parse(&source, &path.display().to_string())
}

/// Parses and validates `source`; `file` is only used in error messages.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigErrors> {
    let raw = raw::parse(source, file)?;
    validate::validate(raw, source, file)
}
