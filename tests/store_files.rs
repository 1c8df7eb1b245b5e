//! The binary refuses database files it must not use: a clear message on
//! stderr, a non-zero exit, and the file left exactly as it was.
//!
//! Run as root (as CI does), file permissions do not bind the server, so the
//! permission cases start it as `nobody` (uid 65534) instead.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use support::binary::{command, exits_within, Server};
use support::http::request;

fn running_as_root(dir: &Path) -> bool {
    std::fs::metadata(dir).unwrap().uid() == 0
}

/// Start the server on `db` (a `--store` spec), expect it to fail; return stderr.
fn refused(dir: &Path, spec: &str, as_nobody: bool) -> String {
    let mut cmd = command(dir);
    cmd.args(["--addr", "127.0.0.1:0", "--store", spec])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if as_nobody {
        cmd.uid(65_534).gid(65_534);
    }
    let mut child = cmd.spawn().unwrap();
    let status = exits_within(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "started on a bad file: {stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

fn assert_untouched(path: &Path, before: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), before, "the file was changed");
    for suffix in ["-wal", "-shm"] {
        let side = format!("{}{suffix}", path.display());
        assert!(!Path::new(&side).exists(), "{side} was created");
    }
}

#[test]
fn a_garbage_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let garbage: Vec<u8> = (0..16_384_u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let stderr = refused(dir.path(), &format!("sqlite:{}", path.display()), false);
    assert!(stderr.contains("not a valid SQLite database"), "{stderr}");
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert_untouched(&path, &garbage);
}

#[test]
fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA application_id = 1347177265; PRAGMA user_version = 999;
             CREATE TABLE user_point (id INTEGER PRIMARY KEY);",
        )
        .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let stderr = refused(dir.path(), &format!("sqlite:{}", path.display()), false);
    assert!(stderr.contains("schema version 999"), "{stderr}");
    assert!(stderr.contains("newer than this build"), "{stderr}");
    assert_untouched(&path, &before);
}

#[test]
fn a_file_in_use_by_another_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("sqlite:{}", dir.path().join("p.db").display());
    let mut first = command(dir.path());
    first.args(["--store", &spec]);
    let first = Server::start(first);
    let stderr = refused(dir.path(), &spec, false);
    assert!(
        stderr.contains("in use by another pointlock process"),
        "{stderr}"
    );
    // The first server is unharmed.
    let (status, _) = request(&first.addr, "PATCH", "/point/1/charge", "5").unwrap();
    assert_eq!(status, 200);
    first.stop();
}

#[test]
fn a_read_only_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let spec = format!("sqlite:{}", path.display());
    // A real database with data in it, then made read-only.
    let mut cmd = command(dir.path());
    cmd.args(["--store", &spec]);
    let server = Server::start(cmd);
    request(&server.addr, "PATCH", "/point/1/charge", "5").unwrap();
    server.stop();
    let before = std::fs::read(&path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let stderr = refused(dir.path(), &spec, running_as_root(dir.path()));
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert!(stderr.contains("ermission denied"), "{stderr}");
    assert_untouched(&path, &before);
}

#[test]
fn an_unwritable_directory_is_refused_and_nothing_created() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let path = dir.path().join("p.db");
    let stderr = refused(
        dir.path(),
        &format!("sqlite:{}", path.display()),
        running_as_root(dir.path()),
    );
    assert!(stderr.contains("cannot open"), "{stderr}");
    assert!(!path.exists(), "a file was created");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_writable_file_in_an_unwritable_directory_is_refused_untouched() {
    // SQLite must create p.db-wal and p.db-shm beside the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    std::fs::write(&path, b"").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let stderr = refused(
        dir.path(),
        &format!("sqlite:{}", path.display()),
        running_as_root(dir.path()),
    );
    assert!(stderr.contains("is the directory writable"), "{stderr}");
    assert_untouched(&path, b"");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}
