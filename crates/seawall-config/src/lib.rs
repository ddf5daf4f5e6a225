//! Seawall's configuration, read in two stages (the ripgrep way).
//!
//! 1. [`raw`] mirrors the TOML file with serde and `deny_unknown_fields`, keeping the source span of
//!    every value that validation may need to point at.
//! 2. [`validate`] turns it into the [`model`] the gateway runs on: durations and sizes parsed,
//!    addresses resolved, upstream names resolved to indices, timeouts checked against each other.
//!
//! Every problem becomes a [`ConfigError`] naming file, line, column, the key path and what was
//! expected. All of them are reported, in file order: every unknown key and mistyped value of stage
//! one (`recover` takes each out and reads the rest again), and every problem validation finds in
//! what could be read. Only a syntax error stops the reading.

pub mod error;
pub mod model;
pub mod raw;
mod recover;
pub mod tls;
mod units;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use units::{parse_duration, parse_size};

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

/// Parses and validates `source`; `file` is only used in error messages. On failure, every error
/// is returned, sorted by line and column.
pub fn parse(source: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut reading = recover::read(source, file);
    if let Some(raw) = reading.raw.take() {
        match validate::validate(raw, source, file) {
            Ok(config) if reading.errors.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(found) => reading.add_validation_errors(found.0),
        }
    }
    Err(ConfigErrors(recover::in_file_order(reading.errors)))
}
