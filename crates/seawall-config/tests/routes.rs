//! A route's edge keys as a user writes them: prefix matching, path rewrites, header actions,
//! redirects and the per-route timeout — read as written, their defaults, and every mistake an
//! error that names the file, line, column and key.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use seawall_config::*;

const UPSTREAM: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\n";

fn parsed(routes: &str) -> Config {
    let src = format!("{UPSTREAM}{routes}");
    parse(&src, "t.toml").unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn errors(routes: &str) -> Vec<String> {
    let src = format!("{UPSTREAM}{routes}");
    parse(&src, "t.toml").unwrap_err().0.iter().map(ToString::to_string).collect()
}

fn one_error(routes: &str, starts: &str, says: &str) {
    let found = errors(routes);
    assert!(
        found.iter().any(|e| e.starts_with(starts) && e.contains(says)),
        "expected an error at {starts} saying {says:?}, got {found:#?}"
    );
}

#[test]
fn the_documented_contract_is_read_as_written() {
    let c = parsed(
        r#"
[[routes]]
name = "api"
path_prefix = "/api"
prefix_match = "segment"
strip_prefix = true
upstream = "app"
timeout = "2s"
request_headers = { set = { x-env = "prod" }, add = { x-tag = "a b" }, remove = ["cookie"] }
response_headers = { set = { cache-control = "no-store" }, remove = ["server"] }

[[routes]]
name = "v1"
path_prefix = "/v1/"
prefix_rewrite = "/api/v2/"
upstream = "app"

[[routes]]
name = "old"
path_prefix = "/old"
strip_prefix = "/old"
redirect = { status = 308, location = "https://example.com/", keep_path = true }

[[routes]]
name = "login"
path = "/login"
redirect = { location = "/signin" }
"#,
    );
    let api = &c.routes[0];
    assert_eq!(api.matcher.prefix, PrefixMatch::Segment);
    assert_eq!(
        api.rewrite.as_deref(),
        Some(&PathRewrite { strip: "/api".into(), replace: "".into() })
    );
    assert_eq!(api.timeout, Some(Duration::from_secs(2)));
    let req = api.request_headers.as_deref().unwrap();
    assert_eq!(req.set, vec![("x-env".to_string(), "prod".to_string())]);
    assert_eq!(req.remove, vec!["cookie".to_string()]);
    assert_eq!(req.lines, b"x-env: prod\r\nx-tag: a b\r\n");
    assert!(req.drops(b"Cookie") && req.drops(b"X-ENV") && !req.drops(b"x-tag"));
    let v1 = &c.routes[1];
    assert_eq!(v1.matcher.prefix, PrefixMatch::String, "byte-wise by default, as before");
    assert_eq!(v1.rewrite.as_deref().unwrap().replace, "/api/v2/");
    let RouteAction::Redirect(old) = &c.routes[2].action else { panic!("a redirect") };
    assert_eq!(
        (old.status, old.location.as_str(), old.keep_path),
        (308, "https://example.com", true)
    );
    let RouteAction::Redirect(login) = &c.routes[3].action else { panic!("a redirect") };
    assert_eq!((login.status, login.keep_path), (302, false), "302 and no path by default");
    assert_eq!(c.routes[3].action.upstream(), None);
}

#[test]
fn a_server_wide_prefix_match_is_the_routes_default() {
    let src = format!(
        "[server]\nprefix_match = \"segment\"\n{UPSTREAM}[[routes]]\npath_prefix = \"/a\"\nupstream = \"app\"\n\
         [[routes]]\npath_prefix = \"/b\"\nprefix_match = \"string\"\nupstream = \"app\"\n"
    );
    let c = parse(&src, "t.toml").unwrap();
    assert_eq!(c.server.prefix_match, PrefixMatch::Segment);
    assert_eq!(c.routes[0].matcher.prefix, PrefixMatch::Segment);
    assert_eq!(c.routes[1].matcher.prefix, PrefixMatch::String);
}

#[test]
fn header_values_that_could_end_a_line_are_refused_where_written() {
    // TOML escapes put CR and LF into the value itself.
    one_error(
        "[[routes]]\nupstream = \"app\"\nrequest_headers = { set = { x-a = \"1\\r\\nx-evil: 1\" } }\n",
        "t.toml:5:35: routes[0].request_headers.set.x-a",
        "0x0d",
    );
    one_error(
        "[[routes]]\nupstream = \"app\"\nresponse_headers = { add = { x-a = \"a\\nb\" } }\n",
        "t.toml:5:",
        "0x0a",
    );
    one_error(
        "[[routes]]\nupstream = \"app\"\nresponse_headers = { add = { x-a = \"é\" } }\n",
        "t.toml:5:",
        "visible ASCII",
    );
    one_error(
        "[[routes]]\nupstream = \"app\"\nrequest_headers = { add = { \"x a\" = \"1\" } }\n",
        "t.toml:5:",
        "not a valid header name",
    );
}

#[test]
fn fields_that_frame_or_route_a_message_cannot_be_changed() {
    for (side, name) in [
        ("request_headers", "content-length"),
        ("request_headers", "Transfer-Encoding"),
        ("request_headers", "host"),
        ("request_headers", "connection"),
        ("request_headers", "x-forwarded-for"),
        ("request_headers", "x-request-timeout"),
        ("response_headers", "content-length"),
        ("response_headers", "transfer-encoding"),
        ("response_headers", "connection"),
        ("response_headers", "x-seawall-reason"),
        // Request ids are on by default: Seawall writes the id both ways.
        ("request_headers", "X-Request-Id"),
        ("response_headers", "x-request-id"),
    ] {
        let routes =
            format!("[[routes]]\nupstream = \"app\"\n{side} = {{ remove = [\"{name}\"] }}\n");
        one_error(&routes, "t.toml:5:", &format!("{name:?}"));
        let routes = format!(
            "[[routes]]\nupstream = \"app\"\n{side} = {{ set = {{ \"{name}\" = \"1\" }} }}\n"
        );
        assert!(!errors(&routes).is_empty(), "{side} set {name}");
    }
    one_error(
        "[[routes]]\nupstream = \"app\"\nrequest_headers = { set = { x-a = \"1\" }, add = { X-A = \"2\" } }\n",
        "t.toml:5:",
        "both set and added",
    );
}

#[test]
fn rewrites_must_make_a_path() {
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nprefix_rewrite = \"v2\"\n",
        "t.toml:6:18: routes[0].prefix_rewrite",
        "starting with '/'",
    );
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nprefix_rewrite = \"/a b\"\n",
        "t.toml:6:",
        "percent-encoded",
    );
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nprefix_rewrite = \"/x?y=1\"\n",
        "t.toml:6:",
        "'?'",
    );
    let long = format!("/{}", "a".repeat(2000));
    one_error(
        &format!(
            "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nprefix_rewrite = \"{long}\"\n"
        ),
        "t.toml:6:",
        "at most 1024 bytes",
    );
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nstrip_prefix = \"/other\"\n",
        "t.toml:6:16: routes[0].strip_prefix",
        "start of the route's path",
    );
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nupstream = \"app\"\nstrip_prefix = 3\n",
        "t.toml:6:",
        "true, false or a path prefix",
    );
    one_error(
        "[[routes]]\npath_prefix = \"/api\"\nprefix_match = \"words\"\nupstream = \"app\"\n",
        "t.toml:5:16: routes[0].prefix_match",
        "\"segment\"",
    );
}

#[test]
fn redirects_are_checked() {
    one_error(
        "[[routes]]\nredirect = { status = 200, location = \"/x\" }\n",
        "t.toml:4:23: routes[0].redirect.status",
        "308",
    );
    one_error("[[routes]]\nredirect = { status = 301 }\n", "t.toml:", "needs a location");
    one_error(
        "[[routes]]\nredirect = { location = \"example.com\" }\n",
        "t.toml:4:",
        "\"https://host/...\"",
    );
    one_error("[[routes]]\nredirect = { location = \"https://a b\" }\n", "t.toml:4:", "0x20");
    one_error(
        "[[routes]]\nredirect = { location = \"https://a/?x=1\", keep_path = true }\n",
        "t.toml:4:",
        "cannot have a query",
    );
    one_error(
        "[[routes]]\nupstream = \"app\"\nredirect = { location = \"/x\" }\n",
        "t.toml:5:",
        "not both",
    );
    one_error(
        "[[routes]]\nredirect = { location = \"/x\" }\ntimeout = \"1s\"\n",
        "t.toml:5:",
        "timeout applies to routes with an upstream",
    );
    one_error("[[routes]]\npath_prefix = \"/\"\n", "t.toml:", "or a redirect");
}

#[test]
fn a_route_timeout_is_a_duration() {
    one_error(
        "[[routes]]\nupstream = \"app\"\ntimeout = \"0s\"\n",
        "t.toml:5:11: routes[0].timeout",
        "greater than zero",
    );
    one_error(
        "[[routes]]\nupstream = \"app\"\ntimeout = \"fast\"\n",
        "t.toml:5:",
        "expected a duration",
    );
}

#[test]
fn a_route_timeout_past_the_total_timeout_is_a_warning() {
    let src = "[upstreams.app]\nservers = [\"127.0.0.1:9000\"]\ntotal_timeout = \"1s\"\n\
               [[routes]]\nupstream = \"app\"\ntimeout = \"2s\"\n";
    let c = parse(src, "t.toml").unwrap();
    let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("t.toml:6:11: routes[0].timeout") && w.contains("total_timeout")),
        "{warnings:#?}"
    );
}
