//! Reference oracles: what each parser should answer, written apart from the
//! code they judge (no call into it, and another way of doing the same thing).
//!
//! They encode the documented contract (`server/openapi.json`, the doc comments
//! of the parsers), not the implementation: where the two disagree, a target
//! fails and one of them is wrong.

use serde_json::Value;

/// `2^63 - 1`, written out rather than imported: the largest id and amount.
pub const VALUE_MAX: u64 = 9_223_372_036_854_775_807;

/// The longest idempotency key, in bytes, as documented.
pub const KEY_LEN_MAX: usize = 255;

/// A user id path segment: 1 to 20 ASCII digits (leading zeros allowed) whose
/// value is in `1..=2^63-1`; `None` for anything else.
///
/// Accumulates digit by digit in a `u128` (20 digits stay below `10^20 <
/// 2^67`), where the parser checks the bytes and then calls `str::parse`.
pub fn user_id(segment: &[u8]) -> Option<u64> {
    if segment.is_empty() || segment.len() > 20 {
        return None;
    }
    let mut value: u128 = 0;
    for &byte in segment {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            _ => return None,
        };
        value = value * 10 + u128::from(digit);
    }
    if value == 0 || value > u128::from(VALUE_MAX) {
        return None;
    }
    u64::try_from(value).ok()
}

/// A wallet path cut at its first two slashes after `/point/`: the `{id}`
/// segment and, if there is a slash after it, everything after that slash.
/// `None` when the path does not begin with `/point/`.
pub fn wallet_path(path: &str) -> Option<(&str, Option<&str>)> {
    const PREFIX: &[u8] = b"/point/";
    let bytes = path.as_bytes();
    if bytes.len() < PREFIX.len() || &bytes[..PREFIX.len()] != PREFIX {
        return None;
    }
    // PREFIX is ASCII, so its end is a character boundary.
    let rest = &path[PREFIX.len()..];
    Some(match rest.bytes().position(|b| b == b'/') {
        Some(slash) => (&rest[..slash], Some(&rest[slash + 1..])),
        None => (rest, None),
    })
}

/// A wallet change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// `PATCH /point/{id}/charge`
    Charge,
    /// `PATCH /point/{id}/use`
    Use,
}

/// What the whole stack (the lock layer with `routes::user_key`, then the
/// router) must answer a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An error: its status, its code and, for a 405, the `Allow` header.
    Error {
        /// The status code.
        status: u16,
        /// The JSON body's `code`.
        code: &'static str,
        /// The `Allow` header (405 only).
        allow: Option<&'static str>,
    },
    /// 200 with the balance of user `id`.
    Balance {
        /// The user the path names.
        id: u64,
    },
    /// 200 with the history rows of user `id` (an array).
    Histories {
        /// The user the path names.
        id: u64,
    },
    /// A change of user `id`: 200 with its balance, or the policy's 409.
    Change {
        /// The user the path names.
        id: u64,
        /// Which change.
        change: Change,
    },
    /// 200 `{"status": …}` (`/health`, `/ready`).
    Status(&'static str),
    /// 200 with a JSON object (`/stats`, `/openapi.json`).
    Object,
}

impl Answer {
    fn error(status: u16, code: &'static str) -> Self {
        Self::Error {
            status,
            code,
            allow: None,
        }
    }

    fn method_not_allowed(allow: &'static str) -> Self {
        Self::Error {
            status: 405,
            code: "METHOD_NOT_ALLOWED",
            allow: Some(allow),
        }
    }
}

/// The answer to `method path` (the path as `Uri::path` gives it: not
/// percent-decoded), from the route table in `server/src/routes.rs`'s module
/// documentation and the error codes of `server/openapi.json`.
pub fn dispatch(method: &str, path: &str) -> Answer {
    let Some((segment, tail)) = wallet_path(path) else {
        let get = |answer: Answer| {
            if method == "GET" {
                answer
            } else {
                Answer::method_not_allowed("GET")
            }
        };
        return match path {
            "/health" => get(Answer::Status("ok")),
            "/ready" => get(Answer::Status("ready")),
            "/stats" | "/openapi.json" => get(Answer::Object),
            _ => Answer::error(404, "NOT_FOUND"),
        };
    };
    // An invalid id is refused by the lock layer, before any route or method.
    let Some(id) = user_id(segment.as_bytes()) else {
        return Answer::error(400, "INVALID_USER_ID");
    };
    let (wanted, answer) = match tail {
        None => ("GET", Answer::Balance { id }),
        Some("histories") => ("GET", Answer::Histories { id }),
        Some("charge") => (
            "PATCH",
            Answer::Change {
                id,
                change: Change::Charge,
            },
        ),
        Some("use") => (
            "PATCH",
            Answer::Change {
                id,
                change: Change::Use,
            },
        ),
        Some(_) => return Answer::error(404, "NOT_FOUND"),
    };
    if method == wanted {
        answer
    } else {
        Answer::method_not_allowed(wanted)
    }
}

/// The amount of a charge body, decided through a `serde_json::Value` (the
/// parser streams through a visitor instead): `Ok(n)` or the error code;
/// `None` when serde_json cannot judge the body.
///
/// The body must be JSON (else `INVALID_JSON`); the amount is the body itself
/// or the top-level object's `amount` (the last one of duplicates: a `Value`
/// map keeps the last), and must be an integer literal (no fraction, no
/// exponent, no sign) in `1..=2^63-1`, else `INVALID_AMOUNT`.
///
/// serde_json refuses numbers beyond a double's range (`1e400`), which JSON
/// allows: for a body it refuses so, this oracle does not know the answer
/// (the `amount_model` target's model does).
pub fn amount(body: &[u8]) -> Option<Result<u64, &'static str>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(value) => Some(amount_of(&value)),
        Err(error) if error.to_string().starts_with("number out of range") => None,
        Err(_) => Some(Err("INVALID_JSON")),
    }
}

fn amount_of(value: &Value) -> Result<u64, &'static str> {
    let found = match value {
        Value::Object(fields) => fields.get("amount"),
        other => Some(other),
    };
    // `as_u64` is `Some` only for a non-negative integer literal: serde_json
    // reads `1.0`, `1e2` and integers past `u64::MAX` as floats, `-1` as a
    // negative integer.
    let raw = found
        .and_then(Value::as_number)
        .and_then(serde_json::Number::as_u64)
        .ok_or("INVALID_AMOUNT")?;
    if raw == 0 || raw > VALUE_MAX {
        return Err("INVALID_AMOUNT");
    }
    Ok(raw)
}

/// Whether `raw` is a valid `Idempotency-Key`: 1 to 255 bytes, each a visible
/// ASCII character (`u8::is_ascii_graphic`, the parser checks the range
/// `b'!'..=b'~'`).
pub fn idempotency_key(raw: &[u8]) -> bool {
    !raw.is_empty() && raw.len() <= KEY_LEN_MAX && raw.iter().all(u8::is_ascii_graphic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_follows_the_documented_grammar() {
        assert_eq!(user_id(b"1"), Some(1));
        assert_eq!(user_id(b"007"), Some(7));
        assert_eq!(user_id(b"9223372036854775807"), Some(VALUE_MAX));
        assert_eq!(user_id(b"00000000000000000001"), Some(1));
        for bad in [
            &b""[..],
            b"0",
            b"000",
            b"-1",
            b"+1",
            b" 1",
            b"1e3",
            b"9223372036854775808",
            b"18446744073709551616",
            b"000000000000000000001",
            "\u{661}".as_bytes(),
        ] {
            assert_eq!(user_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn wallet_path_cuts_at_the_first_slash_after_the_prefix() {
        assert_eq!(wallet_path("/point/1"), Some(("1", None)));
        assert_eq!(wallet_path("/point/1/"), Some(("1", Some(""))));
        assert_eq!(wallet_path("/point/1/a/b"), Some(("1", Some("a/b"))));
        assert_eq!(wallet_path("/point/"), Some(("", None)));
        assert_eq!(wallet_path("/point"), None);
        assert_eq!(wallet_path("/points/1"), None);
        assert_eq!(wallet_path("//point/1"), None);
    }

    #[test]
    fn dispatch_follows_the_route_table() {
        assert_eq!(dispatch("GET", "/point/5"), Answer::Balance { id: 5 });
        assert_eq!(
            dispatch("PATCH", "/point/5/use"),
            Answer::Change {
                id: 5,
                change: Change::Use
            }
        );
        assert_eq!(
            dispatch("GET", "/point/5/charge"),
            Answer::method_not_allowed("PATCH")
        );
        assert_eq!(
            dispatch("DELETE", "/point/x/nowhere"),
            Answer::error(400, "INVALID_USER_ID")
        );
        assert_eq!(
            dispatch("GET", "/point/5/nowhere"),
            Answer::error(404, "NOT_FOUND")
        );
        assert_eq!(
            dispatch("PATCH", "/health"),
            Answer::method_not_allowed("GET")
        );
        assert_eq!(dispatch("GET", "/healthz"), Answer::error(404, "NOT_FOUND"));
    }

    #[test]
    fn amount_oracle_reads_both_templates_strictly() {
        assert_eq!(amount(br#"{"amount":100}"#), Some(Ok(100)));
        assert_eq!(amount(b" 100 "), Some(Ok(100)));
        assert_eq!(amount(br#"{"amount":1,"amount":2}"#), Some(Ok(2)));
        assert_eq!(amount(br#"{"amount":1,"n":1e400}"#), None);
        for (body, code) in [
            (&b""[..], "INVALID_JSON"),
            (b"01", "INVALID_JSON"),
            (b"1.0", "INVALID_AMOUNT"),
            (b"1e3", "INVALID_AMOUNT"),
            (b"-0", "INVALID_AMOUNT"),
            (b"0", "INVALID_AMOUNT"),
            (b"9223372036854775808", "INVALID_AMOUNT"),
            (br#"{"x":{"amount":1}}"#, "INVALID_AMOUNT"),
            (br#""1""#, "INVALID_AMOUNT"),
        ] {
            assert_eq!(
                amount(body),
                Some(Err(code)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn key_oracle_is_length_and_byte_range() {
        assert!(idempotency_key(b"!"));
        assert!(idempotency_key(&[b'~'; 255]));
        assert!(!idempotency_key(&[b'~'; 256]));
        assert!(!idempotency_key(b""));
        for bad in [b' ', 0x7f, 0x80, 0xff, b'\t', 0] {
            assert!(!idempotency_key(&[b'a', bad]), "{bad:#x}");
        }
    }
}
