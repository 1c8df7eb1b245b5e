//! The `pointlock` binary as a user runs it.

mod support;

use std::process::Output;

use support::binary::{command, Server};
use support::http::{get_json, request, send};

/// `pointlock ARGS` in a directory of its own, run to its exit.
fn output(args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    command(dir.path()).args(args).output().unwrap()
}

/// The address in a JSON log line that says the server is listening.
fn json_address(line: &str) -> Option<String> {
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    let message = event["fields"]["message"].as_str().unwrap_or_default();
    message
        .contains("listening on")
        .then(|| event["fields"]["addr"].as_str().unwrap().to_owned())
}

#[test]
fn help_explains_every_flag() {
    // --help-all: --help leaves the tuning and benchmark flags out.
    let out = output(&["--help-all"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--addr",
        "--store",
        "--max-balance",
        "--lock-timeout-ms",
        "--simulate-latency-ms",
        "--request-timeout-ms",
        "--body-limit-bytes",
        "--sqlite-batch-ops-max",
        "--sqlite-batch-wait-us",
        "--lock-queue-max",
        "--pg-pool-size",
        "--pg-statement-timeout-ms",
        "--pg-connect-timeout-ms",
        "--log-format",
        "--metrics",
        "--jwt-hs256-secret-file",
        "--jwt-public-key-file",
        "--jwt-audience",
        "--jwt-issuer",
        "--metrics-require-admin",
        "--jwt-cache-max",
        "POINTLOCK_JWT_HS256_SECRET_FILE",
        "sqlite:pointlock.db",
        "POINTLOCK_ADDR",
    ] {
        assert!(help.contains(flag), "--help-all lacks {flag}:\n{help}");
    }
}

#[test]
fn bad_settings_fail_fast_with_a_message() {
    let out = output(&["--lock-timeout-ms", "5000", "--request-timeout-ms", "1000"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be longer"));
    let out = output(&["--store", "nosuch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown store"));
    let pg = "postgres://pointlock@127.0.0.1:1/wallet";
    for (flags, expect) in [
        (
            &["--pg-writers", "17"][..],
            "--pg-writers (17) must be between 1 and --pg-pool-size (16)",
        ),
        (
            &["--pg-queue-max", "0"][..],
            "--pg-queue-max and --pg-user-queue-max must be at least 1",
        ),
    ] {
        let mut args = vec!["--store", pg];
        args.extend_from_slice(flags);
        let out = output(&args);
        assert_eq!(out.status.code(), Some(2), "{flags:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
    }
}

#[test]
fn a_wrong_or_unreachable_postgres_url_refuses_to_start_with_a_message() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    for (url, expect) in [
        (
            "postgres://pointlock:s3cret@127.0.0.1:1/wallet",
            "cannot connect to PostgreSQL at 127.0.0.1:1/wallet",
        ),
        (
            "postgres://pointlock@127.0.0.1:notaport/wallet",
            "invalid PostgreSQL URL",
        ),
    ] {
        let out = output(&[
            "--store",
            url,
            "--pg-connect-timeout-ms",
            "2000",
            "--addr",
            "127.0.0.1:0",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains(expect), "{url}: {stderr}");
        assert!(
            !stderr.contains("s3cret"),
            "the password is never printed: {stderr}"
        );
        assert!(!stderr.contains("listening"), "{stderr}");
    }
}

#[test]
fn serves_logs_its_address_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--store", "memory", "--simulate-latency-ms", "60"]);
    let server = Server::start(cmd);
    let response = send(&server.addr, "GET", "/point/7", "", "");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains(r#""point":0"#), "{response}");

    // SIGTERM, and a clean exit.
    let log = server.stop();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--store", "memory", "--log-format", "json"]);
    let mut seen = Vec::new();
    let server = Server::start_with(cmd, |line| {
        let event: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            event["level"].is_string() && event["timestamp"].is_string(),
            "{line}"
        );
        seen.push(line.to_owned());
        json_address(line)
    });
    let response = send(&server.addr, "GET", "/health", "", "");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(server); // killed
    assert!(!seen.is_empty());
    let out = output(&["--log-format", "yaml"]);
    assert_eq!(out.status.code(), Some(2), "an unknown format is refused");
}

#[test]
fn request_log_lines_carry_the_request_id_and_never_a_key_or_a_body() {
    // DEBUG: the most a request logs (at INFO only its 5xx line, which carries
    // request_id: see request_id.rs's tests).
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--store", "memory"])
        .args(["--log-format", "json", "--lock-timeout-ms", "100"])
        .env("RUST_LOG", "debug,hyper=info,hyper_util=info");
    let server = Server::start_with(cmd, json_address);
    let key = "idempotency-key: SECRET-KEY-7f3a\r\n";
    let requests = [
        ("PATCH", "/point/1/charge", key, "4242", "rid-charge"),
        ("PATCH", "/point/1/charge", key, "4242", "rid-replay"),
        ("PATCH", "/point/1/use", key, "4242", "rid-reused"),
        (
            "PATCH",
            "/point/1/use",
            "",
            "{\"amount\":987654}",
            "rid-409",
        ),
        (
            "PATCH",
            "/point/1/charge",
            "idempotency-key: BAD KEY 51\r\n",
            "1",
            "rid-400",
        ),
        ("GET", "/nowhere", "", "", "rid-404"),
    ];
    for (method, path, headers, body, id) in requests {
        let headers = format!("{headers}x-request-id: {id}\r\n");
        let response = send(&server.addr, method, path, &headers, body);
        assert!(response.contains(id), "{response}");
    }
    // The lines after the one that named the address.
    let after = server.listening_line + 1;
    let log = server.stop()[after..].to_vec();
    let mut about_requests = 0;
    for line in &log {
        for secret in ["SECRET-KEY", "BAD KEY", "4242", "987654"] {
            // (4242 and 987654 appear only in bodies: the requests' and the answers'.)
            assert!(!line.contains(secret), "{secret:?} logged: {line}");
        }
        let event: serde_json::Value = serde_json::from_str(line).unwrap();
        let target = event["target"].as_str().unwrap();
        if target.starts_with("pointlock") && event["spans"].is_null() {
            continue; // process lines: start, stop, store
        }
        // Inside a request: its outermost span names the request's id.
        about_requests += 1;
        let id = event["spans"][0]["id"].as_str().unwrap_or_default();
        assert!(
            id.starts_with("rid-"),
            "a request's line without its id: {line}"
        );
    }
    assert!(about_requests >= requests.len() * 2, "{log:#?}");
}

#[test]
fn metrics_are_on_by_default_with_the_store_s_families_and_off_by_flag_or_env() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--store", "sqlite:p.db"]);
    let server = Server::start(cmd);
    for _ in 0..2 {
        let (status, body) =
            request(&server.addr, "PATCH", "/point/3/charge", "5").expect("answered");
        assert_eq!(status, 200, "{body}");
    }
    let response = send(&server.addr, "GET", "/metrics", "", "");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains(
            "\r\ncontent-type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ),
        "{response}"
    );
    // Two charges of one user, one after the other: two SQLite batches of one.
    for line in [
        "pointlock_http_requests_total{method=\"PATCH\",route=\"/point/{id}/charge\",status=\"200\"} 2\n",
        "pointlock_store_commit_batch_changes_count 2\n",
        "pointlock_store_commit_duration_seconds_count 2\n",
        "pointlock_store_failed_stop 0\n",
        "pointlock_lock_acquisitions_total 2\n",
    ] {
        assert!(response.contains(line), "{line}: {response}");
    }
    assert!(response.ends_with("# EOF\n"), "{response}");
    // GET /stats reads the same statistics.
    let stats = get_json(&server.addr, "/stats");
    assert_eq!(stats["store"]["batches"], 2, "{stats}");
    server.stop();

    let mut by_flag = command(dir.path());
    by_flag.args(["--store", "memory", "--metrics", "off"]);
    let mut by_env = command(dir.path());
    by_env
        .args(["--store", "memory"])
        .env("POINTLOCK_METRICS", "off");
    for cmd in [by_flag, by_env] {
        let server = Server::start(cmd);
        let (status, body) = request(&server.addr, "GET", "/metrics", "").unwrap();
        assert_eq!(status, 404, "{body}");
        server.stop();
    }
    let out = output(&["--metrics", "maybe"]);
    assert_eq!(out.status.code(), Some(2), "only on or off");
}

#[test]
fn bearer_jwt_from_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    std::fs::write(&secret, "a shared secret of forty-two bytes or so!!\n").unwrap();
    let mut cmd = command(dir.path());
    cmd.args(["--store", "memory"])
        .env("POINTLOCK_JWT_HS256_SECRET_FILE", &secret)
        .env("POINTLOCK_METRICS_REQUIRE_ADMIN", "true")
        .env("RUST_LOG", "debug,hyper=info,hyper_util=info");
    let server = Server::start(cmd);
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "7", "exp": jsonwebtoken::get_current_timestamp() + 600 }),
        &jsonwebtoken::EncodingKey::from_secret(b"a shared secret of forty-two bytes or so!!"),
    )
    .unwrap();
    let owner = format!("authorization: Bearer {token}\r\n");
    for (method, path, headers, body, status) in [
        ("GET", "/point/7", "", "", "401"),
        ("PATCH", "/point/7/charge", "", "5", "401"),
        ("PATCH", "/point/7/charge", owner.as_str(), "5", "200"),
        ("GET", "/point/8", owner.as_str(), "", "403"),
        ("GET", "/metrics", owner.as_str(), "", "403"),
        ("GET", "/metrics", "", "", "401"),
        ("GET", "/health", "", "", "200"),
    ] {
        let response = send(&server.addr, method, path, headers, body);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {response}"
        );
        if status == "401" {
            assert!(
                response.contains("www-authenticate: Bearer realm=\"pointlock\""),
                "{response}"
            );
        }
    }
    // Every line, from the start on.
    let log = server.stop();
    for line in &log {
        assert!(!line.contains(&token), "no token in the log: {line}");
        assert!(!line.contains("forty-two"), "no secret in the log: {line}");
    }
    // A secret too short stops the server before it listens, naming the file only.
    std::fs::write(&secret, "short secret").unwrap();
    let out = command(dir.path())
        .args(["--addr", "127.0.0.1:0", "--store", "memory"])
        .arg("--jwt-hs256-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("at least 32"), "{stderr}");
    assert!(!stderr.contains("short secret"), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
}
