//! `--store`: where balances and histories are kept, parsed from
//! `sqlite:PATH`, a `postgres://` URL or `memory`, and shown without a password.

use std::path::PathBuf;
use std::str::FromStr;

/// Where balances and histories are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// In memory: lost on exit. For tests and demos.
    Memory,
    /// A SQLite file (created if missing): durable, the default.
    Sqlite(PathBuf),
    /// A PostgreSQL database (`postgres://` or `postgresql://` URL), shared by
    /// any number of instances.
    Postgres(String),
}

impl std::fmt::Debug for StoreSpec {
    /// Never shows a password: `postgres://user:***@host/db`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Self::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

impl StoreSpec {
    /// The default: `pointlock.db` in the working directory.
    pub const DEFAULT: &'static str = "sqlite:pointlock.db";
}

impl FromStr for StoreSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "memory" => Ok(Self::Memory),
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            other => match other.strip_prefix("sqlite:") {
                Some("") => Err("sqlite: needs a file path, like sqlite:pointlock.db".into()),
                Some(path) => Ok(Self::Sqlite(PathBuf::from(path))),
                None => Err(format!(
                    "unknown store {:?}; expected \"sqlite:PATH\", \"postgres://USER@HOST:PORT/DB\" or \"memory\"",
                    redact_password(other)
                )),
            },
        }
    }
}
