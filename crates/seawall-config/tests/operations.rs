//! The operations keys as a user writes them: request ids, the access log's destination and
//! fields, the drain delay, and the admin token for the read endpoints — defaults, values read as
//! written, and errors that name the file, line, column and key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

fn errors(src: &str) -> Vec<String> {
    parse(src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

#[test]
fn defaults_keep_request_ids_on_and_drain_at_once() {
    let c = parse("", "t.toml").unwrap();
    assert!(c.server.request_id && c.server.trust_request_id);
    assert_eq!(c.server.request_id_header, "x-request-id");
    assert_eq!(c.server.drain_delay, Duration::ZERO);
    assert!(!c.server.admin_token_for_reads);
    assert_eq!((c.log.access_log_file.as_deref(), c.log.access_log_query), (None, false));
}

#[test]
fn the_keys_are_read_as_written() {
    let c = parse(
        "[server]\nadmin_token = \"t\"\nadmin_token_for_reads = true\ndrain_delay = \"5s\"\n\
         request_id_header = \"X-Correlation-ID\"\ntrust_request_id = false\n\
         [log]\naccess_log = true\naccess_log_file = \"/var/log/seawall/access.log\"\n\
         access_log_query = true\n",
        "t.toml",
    )
    .unwrap();
    assert!(c.server.admin_token_for_reads);
    assert_eq!(c.server.drain_delay, Duration::from_secs(5));
    assert_eq!(c.server.request_id_header, "x-correlation-id");
    assert!(!c.server.trust_request_id);
    let file = c.log.access_log_file.as_deref().unwrap();
    assert_eq!(file, std::path::Path::new("/var/log/seawall/access.log"));
    assert!(c.log.access_log_query);
    let off = parse("[server]\nrequest_id = false\ndrain_delay = \"0s\"\n", "t.toml").unwrap();
    assert!(!off.server.request_id);
}

#[test]
fn bad_values_name_the_key_and_place() {
    let found = errors("[server]\nrequest_id_header = \"Transfer-Encoding\"\n");
    assert!(
        found[0].starts_with(
            "t.toml:2:21: server.request_id_header: \"Transfer-Encoding\" is a field of the HTTP protocol"
        ),
        "{found:#?}"
    );
    let found = errors("[server]\nrequest_id_header = \"x id\"\n");
    assert!(found[0].contains("server.request_id_header: \"x id\" is not a valid header name"));
    let found = errors("[server]\ndrain_delay = \"soon\"\n");
    assert!(
        found[0].starts_with("t.toml:2:15: server.drain_delay: expected a duration"),
        "{found:#?}"
    );
    let found = errors("[server]\nadmin_token_for_reads = true\n");
    assert!(
        found[0].starts_with("t.toml:2:1: server.admin_token_for_reads: needs server.admin_token"),
        "{found:#?}"
    );
    let found = errors("[log]\naccess_log_file = \"\"\n");
    assert!(
        found[0].starts_with("t.toml:2:19: log.access_log_file: expected a file path"),
        "{found:#?}"
    );
    let found = errors("[server]\nrequest_id = \"yes\"\n");
    assert!(found[0].contains("t.toml:2:14"), "{found:#?}");
}
