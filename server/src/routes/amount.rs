//! The request body of a charge or use: `{"amount": n}` or a bare `n`.
//!
//! Read within the body limit and the body timeout ([`read_amount`]), then
//! parsed by one streaming serde visitor ([`parse_amount`]): no
//! `serde_json::Value`, no allocation for a well-formed body.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError};
use pointlock_core::{parse_digits, Amount, PointError};
use tokio::time::Instant;

use crate::error::ApiError;
use crate::middleware::deadline;

/// Read the body (within the size limit and `timeout`, counted from this call,
/// which runs under the user's lock) and parse the amount.
///
/// A slow uploader holds its user's lock no longer than `timeout`. The timer is
/// only made if the body is not already here ([`deadline::within`]): almost every
/// body arrives with its headers, so the common case makes no timer at all
/// (tower-http's `RequestBodyDeadline` registered one per request: ~1,200
/// instructions per charge, measured with `benches/instructions.sh`).
pub async fn read_amount<B>(
    body: B,
    limit_bytes: usize,
    timeout: Duration,
) -> Result<Amount, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collected = deadline::within(
        Instant::now() + timeout,
        async { Some(read_all(body).await) },
        || None,
    )
    .await
    .ok_or_else(|| ApiError::BodyTimeout {
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    })?;
    let bytes = match collected {
        Ok(bytes) => bytes,
        Err(error) => {
            let error = error.into();
            return Err(if error.downcast_ref::<LengthLimitError>().is_some() {
                ApiError::PayloadTooLarge { limit_bytes }
            } else {
                ApiError::BadBody(error.to_string())
            });
        }
    };
    parse_amount(&bytes)
}

/// Every data frame of `body`, joined. A body of one frame (every body sent
/// with its headers) is that frame's bytes as they are: `collect` would make a
/// frame list and allocate for it.
async fn read_all<B: Body<Data = Bytes>>(body: B) -> Result<Bytes, B::Error> {
    let mut body = std::pin::pin!(body);
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers: nothing of the amount
        };
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut both = BytesMut::with_capacity(first.len() + data.len());
                both.extend_from_slice(&first);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(first, BytesMut::freeze))
}

/// `{"amount": n}` (NestJS template) or a bare `n` (Spring template), where `n` is a
/// JSON integer in `1..=2^63-1`. Fractions, exponents, strings, null, booleans,
/// arrays, a missing field and numbers out of range are all `INVALID_AMOUNT`
/// (numbers beyond a double's range too, such as `1e400`: JSON allows them);
/// anything that is not JSON is `INVALID_JSON`. With a repeated `amount` field the
/// last one counts.
///
/// The whole document is read by one streaming visitor, which allocates nothing
/// for a well-formed body (a `serde_json::Value` cost three allocations per
/// request; see docs/performance.md), and is always read to its end, so a syntax
/// error anywhere is `INVALID_JSON` even after a wrong amount.
pub fn parse_amount(bytes: &[u8]) -> Result<Amount, ApiError> {
    if let Some(raw) = canonical_amount(bytes) {
        return Ok(Amount::new(raw)?);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    let found = match read_body(bytes) {
        Ok(found) => found,
        // serde_json refuses a number beyond a double's range ("number out of
        // range", a syntax error), which JSON allows. Only then, on this error
        // path, the body is read again with such numbers tamed.
        Err(error) => {
            let tamed = if error.is_syntax() {
                tame_numbers(bytes)
            } else {
                None
            };
            let invalid = || ApiError::InvalidJson(error.to_string());
            read_body(&tamed.ok_or_else(invalid)?).map_err(|_| invalid())?
        }
    };
    // Only non-negative integers arrive as u64; fractions, exponents, negatives,
    // numbers too large for u64 and every non-number arrive as `None`.
    let raw = found.ok_or(PointError::InvalidAmount)?;
    Ok(Amount::new(raw)?)
}

/// The amount of the body every client sends, `{"amount":n}` or a bare `n`
/// written exactly so (no space, `n` plain digits without a leading zero,
/// fitting a `u64`): the same value the JSON reading finds, without a
/// deserializer (a third of a charge's body handling). `None` for any other
/// body, which the JSON reading then decides.
fn canonical_amount(bytes: &[u8]) -> Option<u64> {
    let digits = bytes
        .strip_prefix(br#"{"amount":"#)
        .and_then(|rest| rest.strip_suffix(b"}"))
        .unwrap_or(bytes);
    // A leading zero is not JSON: the JSON reading refuses it.
    if let [b'0', _, ..] = digits {
        return None;
    }
    parse_digits(digits)
}

/// The amount `bytes` name (`None`: not a valid one), if they are one JSON document.
fn read_body(bytes: &[u8]) -> serde_json::Result<Option<u64>> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = serde::Deserializer::deserialize_any(&mut de, AmountVisitor { top: true })?;
    de.end()?;
    Ok(found)
}

/// `bytes` with every JSON number that is not a plain integer of at most 20
/// digits (one with a sign, a fraction, an exponent or more digits: never a
/// valid amount, and the only numbers serde_json may find out of range)
/// replaced by `-1`, which means the same to [`AmountVisitor`] and is never out
/// of range; `None` if there is no such number.
///
/// A number is a maximal run of `0-9 + - . e E` outside strings that starts
/// with a digit or `-` and is exactly one number of JSON's grammar. In a valid
/// document every such run is one, and swapping one number for another keeps a
/// document valid or invalid as it was: only the range error goes away.
fn tame_numbers(bytes: &[u8]) -> Option<Vec<u8>> {
    let in_number = |b: u8| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E');
    let mut tamed = Vec::new();
    let mut copied = 0;
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
        } else if b == b'"' {
            in_string = true;
            i += 1;
        } else if in_number(b) {
            let end = bytes[i..]
                .iter()
                .position(|&b| !in_number(b))
                .map_or(bytes.len(), |len| i + len);
            if json_number_is_plain(&bytes[i..end]) == Some(false) {
                tamed.extend_from_slice(&bytes[copied..i]);
                tamed.extend_from_slice(b"-1");
                copied = end;
            }
            i = end;
        } else {
            i += 1;
        }
    }
    if copied == 0 {
        return None;
    }
    tamed.extend_from_slice(&bytes[copied..]);
    Some(tamed)
}

/// Whether `run` is one JSON number (RFC 8259, section 6) and, if so, whether it
/// is a plain integer (no sign, fraction or exponent) of at most 20 digits.
fn json_number_is_plain(run: &[u8]) -> Option<bool> {
    let digits = |from: usize| {
        run[from..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .map_or(run.len(), |len| from + len)
    };
    let negative = run.first() == Some(&b'-');
    let start = usize::from(negative);
    let mut i = match run.get(start) {
        Some(b'0') => start + 1,
        Some(b'1'..=b'9') => digits(start),
        _ => return None,
    };
    let mut plain = !negative && i - start <= 20;
    if run.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        (i, plain) = (end, false);
    }
    if matches!(run.get(i), Some(b'e' | b'E')) {
        let sign = usize::from(matches!(run.get(i + 1), Some(b'+' | b'-')));
        let end = digits(i + 1 + sign);
        if end == i + 1 + sign {
            return None;
        }
        (i, plain) = (end, false);
    }
    (i == run.len()).then_some(plain)
}

/// Reads one JSON value: `Some(n)` for a non-negative integer; for the top-level
/// object, the last `amount` field's value; `None` for anything else (read to its
/// end, so syntax errors still surface).
struct AmountVisitor {
    /// Whether this is the body itself (only there does an object mean `{"amount"}`).
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for AmountVisitor {
    type Value = Option<u64>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AmountVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_u64<E>(self, n: u64) -> Result<Option<u64>, E> {
        Ok(Some(n))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    // Skipped values go through this visitor too, not `IgnoredAny`: serde_json
    // skips those without checking UTF-8, escapes or nesting depth, which the old
    // `Value` parse (and this one) rejects as INVALID_JSON.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Option<u64>, A::Error> {
        while seq
            .next_element_seed(AmountVisitor { top: false })?
            .is_some()
        {}
        Ok(None)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<u64>, A::Error> {
        let mut amount = None;
        while let Some(is_amount) = map.next_key_seed(IsAmountKey)? {
            let value = map.next_value_seed(AmountVisitor { top: false })?;
            if self.top && is_amount {
                amount = value;
            }
        }
        Ok(amount)
    }
}

/// Reads an object key: whether it is `"amount"` (escapes decoded), without
/// allocating.
struct IsAmountKey;

impl<'de> serde::de::DeserializeSeed<'de> for IsAmountKey {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsAmountKey {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "amount")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use http::HeaderMap;
    use http_body::Frame;

    use super::*;

    /// A body that yields these frames, one per poll.
    struct Frames(VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn frames(parts: &[&'static str], trailers: bool) -> Frames {
        let mut frames: VecDeque<_> = parts
            .iter()
            .map(|part| Frame::data(Bytes::from_static(part.as_bytes())))
            .collect();
        if trailers {
            frames.push_back(Frame::trailers(HeaderMap::new()));
        }
        Frames(frames)
    }

    #[test]
    fn the_common_bodies_read_without_a_deserializer_as_the_json_reading_does() {
        let mut bodies: Vec<String> = Vec::new();
        let mut n: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut numbers = vec![
            "0".to_owned(),
            "1".to_owned(),
            "00".to_owned(),
            "01".to_owned(),
            "9223372036854775807".to_owned(),
            "9223372036854775808".to_owned(),
            "18446744073709551615".to_owned(),
            "18446744073709551616".to_owned(),
            "99999999999999999999".to_owned(),
            "123456789012345678901".to_owned(),
            String::new(),
            "-1".to_owned(),
            "1.0".to_owned(),
            "1e3".to_owned(),
            "12a".to_owned(),
        ];
        for _ in 0..2_000 {
            n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            numbers.push((n >> (n % 64)).to_string());
        }
        for number in &numbers {
            for shape in [
                format!(r#"{{"amount":{number}}}"#),
                number.clone(),
                format!(r#"{{"amount": {number}}}"#),
                format!(r#"{{"amount":{number}}} "#),
                format!(r#"{{"amount":{number},"amount":5}}"#),
                format!(r#"{{"amount":"{number}"}}"#),
            ] {
                bodies.push(shape);
            }
        }
        let mut fast = 0;
        for body in &bodies {
            let bytes = body.as_bytes();
            let Some(raw) = canonical_amount(bytes) else {
                continue;
            };
            fast += 1;
            let by_json = read_body(bytes).ok().flatten();
            assert_eq!(Some(raw), by_json, "{body}");
        }
        // Both plain shapes of every plain number took the fast path.
        assert!(fast >= 2 * 2_000, "{fast}");
        assert_eq!(canonical_amount(b"01"), None);
        assert_eq!(canonical_amount(b"18446744073709551616"), None);
        assert_eq!(amount("0"), Err("INVALID_AMOUNT"));
        assert_eq!(
            amount(r#"{"amount":9223372036854775808}"#),
            Err("INVALID_AMOUNT")
        );
    }

    #[tokio::test]
    async fn a_body_in_any_number_of_frames_is_read_whole() {
        for (parts, trailers) in [
            (&[][..], false),
            (&[r#"{"amount":7}"#][..], false),
            (&[r#"{"amo"#, r#"unt":"#, "7}"][..], true),
            (&["", r#"{"amount":7}"#, ""][..], false),
            (&[r#"{"amount""#, ":7}"][..], true),
        ] {
            let read = read_all(frames(parts, trailers)).await.unwrap();
            assert_eq!(read, parts.concat(), "{parts:?}");
        }
        let timeout = Duration::from_secs(1);
        let split = frames(&[r#"{"amount":"#, "250}"], true);
        let amount = read_amount(split, 4096, timeout).await.map(Amount::get);
        assert_eq!(amount.ok(), Some(250));
    }

    fn amount(body: &str) -> Result<u64, &'static str> {
        parse_amount(body.as_bytes())
            .map(Amount::get)
            .map_err(|e| e.code())
    }

    #[test]
    fn amount_bodies_of_both_templates_parse() {
        assert_eq!(amount(r#"{"amount":100}"#), Ok(100));
        assert_eq!(amount(r#" { "amount" : 7 , "note": "x" } "#), Ok(7));
        assert_eq!(amount("100"), Ok(100));
        assert_eq!(amount("9223372036854775807"), Ok(9_223_372_036_854_775_807));
    }

    #[test]
    fn amount_parsing_keeps_the_full_json_rules() {
        // Escaped keys count; the last of repeated fields wins.
        assert_eq!(amount(r#"{"am\u006funt":3}"#), Ok(3));
        assert_eq!(amount(r#"{"amount":1,"amount":2}"#), Ok(2));
        assert_eq!(amount(r#"{"amount":"x","amount":2}"#), Ok(2));
        assert_eq!(
            amount(r#"{"amount":2,"amount":"x"}"#),
            Err("INVALID_AMOUNT")
        );
        // `amount` only counts at the top level.
        assert_eq!(amount(r#"{"x":{"amount":5}}"#), Err("INVALID_AMOUNT"));
        // Values that are skipped are still checked: bad UTF-8, lone surrogates,
        // nesting past serde_json's limit and trailing data are not JSON.
        let deep = format!(
            r#"{{"amount":5,"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        for body in [
            &b"{\"amount\":5,\"note\":\"\xff\"}"[..],
            &b"[\"\xff\"]"[..],
            br#"{"amount":5,"x":"\ud800"}"#,
            br#"{"amount":"x", oops"#,
            br#"{"amount":5} 6"#,
            deep.as_bytes(),
        ] {
            let code = parse_amount(body).map_err(|e| e.code());
            assert_eq!(
                code,
                Err("INVALID_JSON"),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Found by the `amount_model` fuzz target (fuzz/): serde_json refuses a
    /// number beyond a double's range ("number out of range"), which JSON
    /// itself allows. Such a body is JSON: as the amount it is
    /// `INVALID_AMOUNT` like any other non-integer, and in another field it
    /// does not stop the amount from being read.
    #[test]
    fn numbers_beyond_a_double_are_json() {
        let huge = format!("1{}", "0".repeat(400));
        for body in [
            "1e400".to_string(),
            "-1e400".to_string(),
            "1E+99999".to_string(),
            huge.clone(),
            format!("-{huge}"),
            format!("{huge}.5"),
            r#"{"amount":1e400}"#.to_string(),
            format!(r#"{{"amount":{huge}}}"#),
            r#"{"amount":1e400,"amount":0}"#.to_string(),
            r#"{"x":1,"amount":[1e400]}"#.to_string(),
        ] {
            assert_eq!(amount(&body), Err("INVALID_AMOUNT"), "{body}");
        }
        for body in [
            r#"{"amount":5,"note":1e400}"#.to_string(),
            r#"{"note":[-1e400,{"deep":1e999}],"amount":5}"#.to_string(),
            format!(r#"{{"amount":1e400,"amount":5,"n":{huge}}}"#),
            r#"{"amount":5,"s":"1e400 \" 1e400","k":1E400}"#.to_string(),
            r#"{"amount":5,"s":"\u1e40","k":1e400}"#.to_string(),
        ] {
            assert_eq!(amount(&body), Ok(5), "{body}");
        }
        // Still not JSON: broken numbers, and broken bodies with a huge number.
        for body in [
            "1e400x",
            "01e400",
            "1e400 1",
            "1.e400",
            "-e400",
            r#"{"amount":1e400"#,
            r#"{"amount":5,"note":1e400,}"#,
            "[1e400",
            "\"1e400",
            // A number run on into another: taming one must not make JSON of it.
            "1e-1e5",
            "1e400e5",
            "1e400.5",
            "-1e400-1",
            "1e400true",
            r#"{"amount":5,"note":1e400"#,
        ] {
            assert_eq!(amount(body), Err("INVALID_JSON"), "{body}");
        }
    }

    #[test]
    fn taming_replaces_only_whole_non_plain_numbers_outside_strings() {
        let tame =
            |body: &str| tame_numbers(body.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(tame(r#"{"amount":5,"n":7}"#), None);
        assert_eq!(tame("12345678901234567890"), None);
        assert_eq!(tame("123456789012345678901").as_deref(), Some("-1"));
        assert_eq!(
            tame(r#"[1.5,-2,3e3,"4e4\"5e5",6E-6,07,1e,true]"#).as_deref(),
            Some(r#"[-1,-1,-1,"4e4\"5e5",-1,07,1e,true]"#)
        );
        assert_eq!(json_number_is_plain(b"0"), Some(true));
        assert_eq!(json_number_is_plain(b"-0"), Some(false));
        assert_eq!(json_number_is_plain(b"1.0e+2"), Some(false));
        for bad in [
            &b"01"[..],
            b"1.",
            b".5",
            b"1e",
            b"1e+",
            b"+1",
            b"-",
            b"1-",
            b"--1",
        ] {
            assert_eq!(
                json_number_is_plain(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bad_amount_bodies_are_rejected_with_codes() {
        for (body, code) in [
            ("", "INVALID_JSON"),
            ("  ", "INVALID_JSON"),
            ("{", "INVALID_JSON"),
            ("amount=1", "INVALID_JSON"),
            (r#"{"amount":0}"#, "INVALID_AMOUNT"),
            (r#"{"amount":-1}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1.5}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1.0}"#, "INVALID_AMOUNT"),
            (r#"{"amount":1e2}"#, "INVALID_AMOUNT"),
            (r#"{"amount":"100"}"#, "INVALID_AMOUNT"),
            (r#"{"amount":null}"#, "INVALID_AMOUNT"),
            (r#"{"amount":true}"#, "INVALID_AMOUNT"),
            (r#"{"amount":[1]}"#, "INVALID_AMOUNT"),
            (r#"{}"#, "INVALID_AMOUNT"),
            (r#"{"amt":1}"#, "INVALID_AMOUNT"),
            (r#"{"amount":9223372036854775808}"#, "INVALID_AMOUNT"),
            (r#"{"amount":99999999999999999999999}"#, "INVALID_AMOUNT"),
            ("null", "INVALID_AMOUNT"),
            (r#""100""#, "INVALID_AMOUNT"),
            ("[100]", "INVALID_AMOUNT"),
            ("-5", "INVALID_AMOUNT"),
        ] {
            assert_eq!(amount(body), Err(code), "{body:?}");
        }
    }
}
