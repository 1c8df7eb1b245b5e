use super::*;

#[test]
fn store_specs_parse_and_never_show_a_password() {
    let spec: StoreSpec = "postgres://app:s3cret@db.internal:5433/wallet?sslmode=disable"
        .parse()
        .unwrap();
    assert_eq!(
        format!("{spec:?}"),
        "postgres://app:***@db.internal:5433/wallet?sslmode=disable"
    );
    let spec: StoreSpec = "postgresql://app@db/wallet".parse().unwrap();
    assert_eq!(format!("{spec:?}"), "postgresql://app@db/wallet");
    assert_eq!("memory".parse::<StoreSpec>(), Ok(StoreSpec::Memory));
    let unknown = "mysql://root:hunter2@db/x"
        .parse::<StoreSpec>()
        .unwrap_err();
    assert!(unknown.contains("root:***@db"), "{unknown}");
    assert!(!unknown.contains("hunter2"), "{unknown}");
}

fn parse(args: &[&str]) -> Result<Config, clap::Error> {
    Config::try_parse_from(std::iter::once("pointlock").chain(args.iter().copied()))
}

#[test]
fn bearer_jwt_is_off_by_default_and_its_flags_need_it() {
    let config = parse(&[]).unwrap();
    assert!(!config.jwt_enabled());
    assert!(config.auth().unwrap().is_none());
    assert!(config.validate().is_ok());
    for flags in [
        &["--jwt-audience", "a"][..],
        &["--jwt-issuer", "i"],
        &["--metrics-require-admin"],
    ] {
        let error = parse(flags).unwrap().validate().unwrap_err();
        assert!(error.contains("needs bearer JWT"), "{flags:?}: {error}");
    }
    let both = parse(&["--jwt-hs256-secret-file", "s", "--jwt-public-key-file", "k"]);
    assert!(both.is_err(), "one key, one algorithm");
}

#[test]
fn the_key_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    // `echo` adds a newline: dropped, so the secret is the text.
    let secret = file("secret", b"0123456789abcdef0123456789abcdef\n");
    let config = parse(&[
        "--jwt-hs256-secret-file",
        &secret,
        "--metrics-require-admin",
    ])
    .unwrap();
    assert!(config.validate().is_ok());
    let auth = config.auth().unwrap().expect("on");
    assert_eq!(auth.verifier().algorithm(), jsonwebtoken::Algorithm::HS256);
    assert!(auth.protects_operations());
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": "1", "exp": jsonwebtoken::get_current_timestamp() + 60 }),
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    assert!(auth.verifier().verify(&token).is_ok(), "the trimmed secret");
    let short = file("short", b"0123456789abcdef0123456789abcde\n");
    let error = parse(&["--jwt-hs256-secret-file", &short])
        .unwrap()
        .auth()
        .unwrap_err();
    assert!(error.contains("at least 32"), "{error}");
    assert!(!error.contains("0123"), "never the secret: {error}");
    let key = file(
        "key.pem",
        include_bytes!("../../../tests/auth/ec-public.pem"),
    );
    let config = parse(&["--jwt-public-key-file", &key, "--jwt-audience", "wallet"]).unwrap();
    let auth = config.auth().unwrap().expect("on");
    assert_eq!(auth.verifier().algorithm(), jsonwebtoken::Algorithm::ES256);
    let missing = parse(&["--jwt-public-key-file", "/nonexistent/key.pem"])
        .unwrap()
        .auth()
        .unwrap_err();
    assert!(
        missing.contains("cannot read /nonexistent/key.pem"),
        "{missing}"
    );
}

#[test]
fn lock_queue_max_counts_waiters_and_spells_no_bound_unbounded() {
    let default = parse(&[]).unwrap();
    assert_eq!(
        default.app_options().lock_queue_max,
        Some(crate::app::LOCK_QUEUE_MAX_DEFAULT)
    );
    assert_eq!(default.lock_queue_max.to_string(), "1024");
    // 0 is the layer's 0: no waiting at all.
    let none_wait = parse(&["--lock-queue-max", "0"]).unwrap();
    assert_eq!(none_wait.app_options().lock_queue_max, Some(0));
    let two = parse(&["--lock-queue-max", "2"]).unwrap();
    assert_eq!(two.app_options().lock_queue_max, Some(2));
    let unbounded = parse(&["--lock-queue-max", "unbounded"]).unwrap();
    assert_eq!(unbounded.app_options().lock_queue_max, None);
    assert_eq!(unbounded.lock_queue_max.to_string(), "unbounded");
    for bad in ["-1", "none", "", "1.5", "Unbounded"] {
        let error = parse(&[&format!("--lock-queue-max={bad}")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("unbounded"), "{bad:?}: {error}");
    }
}

#[test]
fn max_in_flight_is_the_stacks_bound_and_refuses_zero() {
    assert_eq!(
        parse(&[]).unwrap().app_options().max_in_flight,
        crate::middleware::in_flight::MAX_IN_FLIGHT_DEFAULT
    );
    let two = parse(&["--max-in-flight", "2"]).unwrap();
    assert_eq!(two.app_options().max_in_flight, 2);
    for bad in ["0", "-1", "many", "1000000001"] {
        assert!(
            parse(&[&format!("--max-in-flight={bad}")]).is_err(),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn postgres_timeouts_never_overflow_and_absurd_ones_stop_the_start() {
    let pg = |connect: &str, statement: &str, request: &str| {
        parse(&[
            "--store",
            "postgres://app@db/wallet",
            "--pg-connect-timeout-ms",
            connect,
            "--pg-statement-timeout-ms",
            statement,
            "--request-timeout-ms",
            request,
        ])
        .unwrap()
        .validate()
    };
    assert_eq!(pg("2000", "5000", "10000"), Ok(()));
    let max = u64::MAX.to_string();
    // The sum overflows a u64: refused with a message, no panic or wrap.
    let error = pg(&max, "5000", &max).unwrap_err();
    assert!(error.contains("(too large) must be shorter"), "{error}");
    let error = pg("2000", "7000", "9000").unwrap_err();
    assert!(error.contains("(9000) must be shorter"), "{error}");
    // Beyond PostgreSQL's own limit: refused here, not by the database.
    let error = pg("1", "2147483648", &max).unwrap_err();
    assert!(error.contains("at most 2147483647"), "{error}");
    assert_eq!(pg("1", "2147483647", &max), Ok(()));
}

/// What `--help` or `--help-all` prints.
fn help(flag: &str) -> String {
    let error = parse(&[flag]).unwrap_err();
    assert_eq!(error.kind(), clap::error::ErrorKind::DisplayHelp, "{flag}");
    error.render().to_string()
}

/// The tuning and benchmark knobs: in `--help-all` only.
const HIDDEN: [&str; 13] = [
    "--idempotency-sweep-interval-ms",
    "--simulate-latency-ms",
    "--sqlite-batch-ops-max",
    "--sqlite-batch-wait-us",
    "--sqlite-pipeline",
    "--pg-pipeline",
    "--pg-queue-max",
    "--pg-user-queue-max",
    "--pg-writers",
    "--h2-max-streams",
    "--jwt-cache-max",
    "POINTLOCK_SQLITE_BATCH_OPS_MAX",
    "POINTLOCK_JWT_CACHE_MAX",
];

#[test]
fn help_groups_the_flags_and_help_all_adds_the_tuning_ones() {
    let short = help("--help");
    let long = help("--help-all");
    for heading in [
        "Server:",
        "PostgreSQL store:",
        "Lock and limits:",
        "Authentication (bearer JWT):",
        "Observability:",
    ] {
        assert!(short.contains(heading), "--help lacks {heading}:\n{short}");
        assert!(
            long.contains(heading),
            "--help-all lacks {heading}:\n{long}"
        );
    }
    assert!(long.contains("SQLite store:"), "{long}");
    for flag in HIDDEN {
        assert!(!short.contains(flag), "--help shows {flag}:\n{short}");
        assert!(long.contains(flag), "--help-all lacks {flag}:\n{long}");
    }
    for shown in [
        "--lock-queue-max",
        "--help-all",
        "--max-balance",
        "POINTLOCK_ADDR",
    ] {
        assert!(short.contains(shown), "--help lacks {shown}:\n{short}");
    }
    assert!(short.contains("--help-all lists every flag"), "{short}");
    // Every hidden knob is still accepted.
    let tuned = parse(&[
        "--sqlite-batch-ops-max",
        "8",
        "--sqlite-pipeline",
        "off",
        "--pg-pipeline",
        "off",
        "--pg-queue-max",
        "100",
        "--pg-user-queue-max",
        "10",
        "--pg-writers",
        "2",
        "--jwt-cache-max",
        "0",
        "--h2-max-streams",
        "7",
        "--idempotency-sweep-interval-ms",
        "5",
        "--simulate-latency-ms",
        "3",
        "--sqlite-batch-wait-us",
        "9",
    ])
    .unwrap();
    assert_eq!((tuned.sqlite_batch_ops_max, tuned.h2_max_streams), (8, 7));
    assert!(!tuned.sqlite_options().pipeline && !tuned.postgres_options().pipeline);
    let pg = tuned.postgres_options();
    assert_eq!((pg.queue_max, pg.user_queue_max, pg.writers), (100, 10, 2));
    // Both stores pipeline by default.
    let default = parse(&[]).unwrap();
    assert!(default.sqlite_options().pipeline && default.postgres_options().pipeline);
}

#[test]
fn negative_controls_are_flags_of_test_util_builds_only_and_never_shown() {
    let long = help("--help-all");
    for flag in ["--test-negative-control", "--test-unconditional-commits"] {
        assert!(!long.contains(flag), "{flag} is never shown:\n{long}");
    }
    let control = parse(&["--test-negative-control", "dirty-reads"]);
    #[cfg(feature = "test-util")]
    assert_eq!(
        control.unwrap().sqlite_options().negative_control,
        Some(pointlock_store::NegativeControl::DirtyReads)
    );
    #[cfg(not(feature = "test-util"))]
    assert_eq!(
        control.unwrap_err().kind(),
        clap::error::ErrorKind::UnknownArgument
    );
    assert!(parse(&[])
        .unwrap()
        .sqlite_options()
        .negative_control
        .is_none());
}

/// Poll `done` every millisecond, for at most five seconds.
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("not reached in 5 s");
}

/// The whole answer on `stream` (each request says `connection: close`).
async fn answer(mut stream: tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let read = stream.read_to_end(&mut bytes);
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .expect("answered within 5 s")
        .unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_queue_max_zero_refuses_at_once_and_unbounded_waits() {
    use std::sync::Arc;

    use pointlock_core::{KeyedLock, MemoryStore, Policy};
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use crate::clock::SystemClock;

    for (flag, refused) in [("0", true), ("unbounded", false)] {
        let config = parse(&["--store", "memory", "--lock-queue-max", flag]).unwrap();
        let service = crate::app::service(
            Arc::new(MemoryStore::new()),
            Policy::default(),
            Arc::new(SystemClock::default()),
            KeyedLock::new(),
        );
        let app = crate::app::build_app(Arc::clone(&service), &config.app_options());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(crate::app::serve(
            listener,
            app,
            async move {
                let _ = stopped.await;
            },
            std::time::Duration::from_secs(5),
        ));
        // A charge whose body is still to come holds user 1's lock (the body
        // is read under it).
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder
            .write_all(
                b"PATCH /point/1/charge HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
                  content-length: 1\r\n\r\n",
            )
            .await
            .unwrap();
        until(|| service.lock().metrics().keys == 1).await;
        let mut reader = TcpStream::connect(addr).await.unwrap();
        reader
            .write_all(b"GET /point/1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let read = if refused {
            // No waiting at all: refused while the holder still holds.
            let read = answer(reader).await;
            assert!(read.starts_with("HTTP/1.1 503"), "{flag}: {read}");
            assert!(read.contains("LOCK_QUEUE_FULL"), "{flag}: {read}");
            assert_eq!(service.lock().metrics().keys, 1, "{flag}: still held");
            None
        } else {
            until(|| service.lock().metrics().waiters == 1).await;
            Some(tokio::spawn(answer(reader)))
        };
        holder.write_all(b"5").await.unwrap();
        let charged = answer(holder).await;
        assert!(charged.starts_with("HTTP/1.1 200"), "{flag}: {charged}");
        if let Some(read) = read {
            // The queued read is answered after the charge.
            let read = read.await.unwrap();
            assert!(read.starts_with("HTTP/1.1 200"), "{flag}: {read}");
            assert!(read.contains(r#""point":5"#), "{flag}: {read}");
        }
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
