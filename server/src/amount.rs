//! The request body of a charge or use: `{"amount": n}` or a bare `n`.
//!
//! Parsed by one streaming serde visitor: no `serde_json::Value`, no allocation
//! for a well-formed body.

use pointlock_core::{Amount, PointError};

use crate::error::ApiError;

/// `{"amount": n}` (NestJS template) or a bare `n` (Spring template), where `n` is a
/// JSON integer in `1..=2^63-1`. Fractions, exponents, strings, null, booleans,
/// arrays, a missing field and numbers out of range are all `INVALID_AMOUNT`;
/// anything that is not JSON is `INVALID_JSON`. With a repeated `amount` field the
/// last one counts.
///
/// The whole document is read by one streaming visitor, which allocates nothing
/// for a well-formed body (a `serde_json::Value` cost three allocations per
/// request; see docs/performance.md), and is always read to its end, so a syntax
/// error anywhere is `INVALID_JSON` even after a wrong amount.
pub fn parse_amount(bytes: &[u8]) -> Result<Amount, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let found = serde::Deserializer::deserialize_any(&mut de, AmountVisitor { top: true })
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    // Only non-negative integers arrive as u64; fractions, exponents, negatives,
    // numbers too large for u64 and every non-number arrive as `None`.
    let raw = found.ok_or(PointError::InvalidAmount)?;
    Ok(Amount::new(raw)?)
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
    use super::*;

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
