//! `mint_jwt`: a bearer token for a pointlock server with authentication on,
//! for tests, demos and scripts (an identity provider mints the real ones).
//!
//! Signs with the `jsonwebtoken` crate, the one the server verifies with:
//! HS256 with the server's shared secret file (trailing whitespace dropped, as
//! the server does), or RS256 / ES256 with the private key whose public half
//! the server has (PKCS#8 PEM; the key's type decides the algorithm).
//!
//! ```sh
//! openssl rand -base64 48 > jwt.secret
//! cargo run --release -- --jwt-hs256-secret-file jwt.secret &
//! TOKEN=$(cargo run -q --example mint_jwt -- --hs256-secret-file jwt.secret --sub 1)
//! curl -s localhost:8080/point/1 -H "Authorization: Bearer $TOKEN"
//! ```
//!
//! `--scope points:admin` makes an operator's token (every user, and
//! `/metrics` and `/stats` under `--metrics-require-admin`); `--ttl-secs` sets
//! `exp` (default an hour); `--aud` and `--iss` add those claims.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};

/// Print a signed JWT for a pointlock server.
#[derive(Debug, Parser)]
#[command(name = "mint_jwt")]
struct Args {
    /// HS256: the server's --jwt-hs256-secret-file.
    #[arg(long, value_name = "PATH", conflicts_with = "private_key_file")]
    hs256_secret_file: Option<PathBuf>,
    /// RS256 or ES256: the private key (PKCS#8 PEM) of the server's
    /// --jwt-public-key-file.
    #[arg(long, value_name = "PATH")]
    private_key_file: Option<PathBuf>,
    /// The user the token acts on (its `sub`).
    #[arg(long)]
    sub: Option<String>,
    /// Space-separated scopes, such as `points:admin`.
    #[arg(long)]
    scope: Option<String>,
    /// Seconds until `exp`.
    #[arg(long, default_value_t = 3_600)]
    ttl_secs: u64,
    /// The `aud` claim (the server's --jwt-audience).
    #[arg(long)]
    aud: Option<String>,
    /// The `iss` claim (the server's --jwt-issuer).
    #[arg(long)]
    iss: Option<String>,
}

fn main() -> ExitCode {
    match mint(&Args::parse()) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: &Args) -> Result<String, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let (algorithm, key) = match (&args.hs256_secret_file, &args.private_key_file) {
        (Some(path), _) => {
            let secret = read(path)?;
            let end = secret
                .iter()
                .rposition(|b| !b.is_ascii_whitespace())
                .map_or(0, |last| last + 1);
            (Algorithm::HS256, EncodingKey::from_secret(&secret[..end]))
        }
        (None, Some(path)) => {
            let pem = read(path)?;
            match EncodingKey::from_rsa_pem(&pem) {
                Ok(key) => (Algorithm::RS256, key),
                Err(_) => (
                    Algorithm::ES256,
                    EncodingKey::from_ec_pem(&pem)
                        .map_err(|e| format!("not an RSA or EC private key in PEM: {e}"))?,
                ),
            }
        }
        (None, None) => return Err("give --hs256-secret-file or --private-key-file".into()),
    };
    let mut claims = Map::new();
    claims.insert(
        "exp".into(),
        json!(jsonwebtoken::get_current_timestamp() + args.ttl_secs),
    );
    for (name, value) in [
        ("sub", &args.sub),
        ("scope", &args.scope),
        ("aud", &args.aud),
        ("iss", &args.iss),
    ] {
        if let Some(value) = value {
            claims.insert(name.into(), json!(value));
        }
    }
    jsonwebtoken::encode(&Header::new(algorithm), &Value::Object(claims), &key)
        .map_err(|e| format!("cannot sign: {e}"))
}
