//! The raw configuration: a serde mirror of the TOML file. Unknown keys are errors; values that
//! validation interprets later keep their source span so errors can point at them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{ConfigError, ConfigErrors};

/// A string value with its position in the file.
pub type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `[server]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Text>,
    pub admin: Option<Text>,
    pub admin_token: Option<Text>,
    pub workers: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_timeout: Option<Text>,
    pub keepalive_timeout: Option<Text>,
    pub max_header_size: Option<Spanned<RawSize>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_size: Option<Spanned<RawSize>>,
    pub drain_timeout: Option<Text>,
    pub body_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub tunnel_idle_timeout: Option<Text>,
    pub http2: Option<bool>,
}

/// `[log]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Text>,
    pub format: Option<Text>,
    pub access_log: Option<bool>,
}

/// A size written as a number of bytes or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `[upstreams.NAME]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub servers: Spanned<Vec<Spanned<RawServerEntry>>>,
    pub balance: Option<Text>,
    pub hash_on: Option<Text>,
    pub connect_timeout: Option<Text>,
    pub timeout: Option<Text>,
    pub read_timeout: Option<Text>,
    pub send_timeout: Option<Text>,
    pub pool: Option<RawPool>,
    pub health: Option<Spanned<RawHealth>>,
    pub passive: Option<RawPassive>,
}

/// One entry of `servers`: `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawServerEntry {
    Address(String),
    Weighted(RawWeightedServer),
}

/// `{ address = "...", weight = N }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedServer {
    pub address: String,
    pub weight: Option<i64>,
}

/// `pool = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub max_idle: Option<Spanned<i64>>,
    pub idle_timeout: Option<Text>,
}

/// `health = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
    pub host: Option<Text>,
}

/// `passive = { ... }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPassive {
    pub consecutive_failures: Option<Spanned<i64>>,
    pub base_ejection: Option<Text>,
    pub max_ejection: Option<Text>,
    pub max_ejected_percent: Option<Spanned<i64>>,
}

/// `[[routes]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Text>,
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub path: Option<Text>,
    pub methods: Option<Vec<Text>>,
    pub header: Option<RawHeaderMatch>,
    pub upstream: Option<Text>,
    pub preserve_host: Option<bool>,
    pub max_body_size: Option<Spanned<RawSize>>,
}

/// `header = { name = "x-canary", value = "1" }`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    pub name: Text,
    pub value: Option<Text>,
}

/// Parses TOML into the raw model; a syntax or shape error names its position and key path.
pub fn parse(source: &str, file: &str) -> Result<RawConfig, ConfigErrors> {
    let deserializer = toml::Deserializer::new(source);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let key = err.path().to_string();
        let key = if key == "." { String::new() } else { key };
        let inner = err.into_inner();
        let offset = inner.span().map_or(0, |s| s.start);
        ConfigErrors(vec![ConfigError::at(file, source, offset, &key, inner.message().to_string())])
    })
}
