//! Structured inputs decoded from fuzzer bytes, each with its expected answer
//! known from how it was built (a model oracle, independent of serde_json and
//! of the parsers).
//!
//! Uniform random bytes almost never spell `/point/1/charge` or
//! `{"amount":5}`; these decoders turn any byte string into one that does,
//! often, so that the plain random runs of `cargo test` reach the interesting
//! inputs without coverage guidance. Every byte string decodes to something,
//! so libFuzzer can drive them too.

/// Reads choices from fuzzer bytes; zeros once they run out.
#[derive(Debug)]
pub struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The next byte (0 when none are left).
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    /// A number below `n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        let wide = usize::from(self.byte()) << 8 | usize::from(self.byte());
        wide % n
    }

    /// One of `items`.
    pub fn pick<'b, T>(&mut self, items: &'b [T]) -> &'b T {
        &items[self.below(items.len())]
    }

    /// A `u64` from the next eight bytes.
    pub fn u64(&mut self) -> u64 {
        (0..8).fold(0, |n, _| n << 8 | u64::from(self.byte()))
    }

    /// A `u64` of a random bit width, so small values are as likely as large ones.
    pub fn u64_any_width(&mut self) -> u64 {
        let shift = self.byte() % 64;
        self.u64() >> shift
    }
}

/// Path pieces the wallet's grammar and its near misses are made of.
pub const PATH_TOKENS: &[&str] = &[
    "/",
    "/point/",
    "/point",
    "point",
    "/point/1",
    "/point/1/",
    "1",
    "0",
    "7",
    "42",
    "007",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "00000000000000000001",
    "000000000000000000001",
    "charge",
    "use",
    "histories",
    "/charge",
    "/use",
    "/histories",
    "/charge",
    "/use",
    "/histories",
    "/",
    "1",
    "health",
    "/health",
    "ready",
    "/ready",
    "stats",
    "/stats",
    "openapi.json",
    "/openapi.json",
    "?",
    "?amount=1",
    "#",
    "%2F",
    "%2f",
    "%31",
    "%00",
    "..",
    ".",
    "-",
    "+",
    " ",
    "%20",
    "\u{661}",
    "\u{ff11}",
    "e3",
    "0x1",
    "//",
    "POINT",
    "Charge",
    ";",
    "\\",
];

/// How a path begins: mostly as a wallet path.
pub const PATH_STARTS: &[&str] = &[
    "/point/",
    "/point/",
    "/point/",
    "/point/1",
    "/point/1/",
    "/point/42/",
    "/",
    "",
];

/// The most pieces a path is made of after its start: short paths hit the
/// routes; `path` covers the long ones.
pub const PATH_PIECES_MAX: usize = 6;

/// A path spelled from `bytes`: a start of [`PATH_STARTS`], then 0 to
/// [`PATH_PIECES_MAX`] pieces, each a token of [`PATH_TOKENS`] or (one time in
/// eight) the next byte as it is.
pub fn path(bytes: &[u8]) -> Vec<u8> {
    let mut cursor = Cursor::new(bytes);
    let mut path = cursor.pick(PATH_STARTS).as_bytes().to_vec();
    for _ in 0..cursor.below(PATH_PIECES_MAX + 1) {
        let choice = cursor.byte();
        if choice % 8 == 7 {
            path.push(cursor.byte());
        } else {
            let token = PATH_TOKENS[usize::from(choice / 8) % PATH_TOKENS.len()];
            path.extend_from_slice(token.as_bytes());
        }
    }
    path
}

/// A JSON value's text and what it means for the amount parser.
#[derive(Clone, Debug)]
struct Piece {
    text: Vec<u8>,
    /// What the body answers when this is the amount: `Ok(n)` or a code.
    as_amount: Result<u64, &'static str>,
    /// Whether it is JSON (RFC 8259) at all.
    is_json: bool,
}

impl Piece {
    fn json(text: impl Into<Vec<u8>>, as_amount: Result<u64, &'static str>) -> Self {
        Self {
            text: text.into(),
            as_amount,
            is_json: true,
        }
    }

    fn not_json(text: impl Into<Vec<u8>>) -> Self {
        Self {
            text: text.into(),
            as_amount: Err("INVALID_JSON"),
            is_json: false,
        }
    }
}

/// What a JSON integer literal of these digits means as an amount. The value
/// is computed here digit by digit, saturating, so a literal of any length is
/// classified without a float or a parse.
fn integer(digits: &str) -> Result<u64, &'static str> {
    let mut value: u64 = 0;
    for d in digits.bytes() {
        value = value.saturating_mul(10).saturating_add(u64::from(d - b'0'));
    }
    if (1..=crate::oracle::VALUE_MAX).contains(&value) {
        Ok(value)
    } else {
        Err("INVALID_AMOUNT")
    }
}

/// A non-negative integer literal: any width, or a boundary.
fn integer_text(cursor: &mut Cursor<'_>) -> String {
    match cursor.byte() % 4 {
        0 => cursor
            .pick(&[
                "0",
                "1",
                "9223372036854775806",
                "9223372036854775807",
                "9223372036854775808",
                "18446744073709551615",
                "18446744073709551616",
                "100000000000000000000",
                "999999999999999999999999999999",
            ])
            .to_string(),
        1 => {
            // Past u64: more digits than fit.
            let mut text = cursor.u64_any_width().to_string();
            for _ in 0..cursor.below(25) {
                text.push(char::from(b'0' + cursor.byte() % 10));
            }
            if text.len() > 1 {
                text = text.trim_start_matches('0').to_string();
                if text.is_empty() {
                    text.push('0');
                }
            }
            text
        }
        _ => cursor.u64_any_width().to_string(),
    }
}

/// A number literal, or something that looks like one, or another JSON value.
fn scalar(cursor: &mut Cursor<'_>) -> Piece {
    const NOT_AN_INTEGER: Result<u64, &str> = Err("INVALID_AMOUNT");
    match cursor.byte() % 16 {
        0..=6 => {
            let text = integer_text(cursor);
            let meaning = integer(&text);
            Piece::json(text, meaning)
        }
        7 => {
            // Negative: -0, -1, -2^63, ...
            let text = format!("-{}", integer_text(cursor));
            Piece::json(text, NOT_AN_INTEGER)
        }
        8 => {
            // A fraction, even a whole one.
            let whole = integer_text(cursor);
            let frac = cursor.pick(&["0", "5", "00", "000000000000000000001"]);
            Piece::json(format!("{whole}.{frac}"), NOT_AN_INTEGER)
        }
        9 | 10 => {
            // An exponent, within or past a double's range (JSON has no limit).
            let mantissa = cursor.pick(&["1", "0", "5", "1.5", "-1", "123"]);
            let e = cursor.pick(&["e", "E"]);
            let sign = cursor.pick(&["", "+", "-"]);
            let exp = cursor.pick(&["0", "2", "3", "18", "308", "309", "400", "99999"]);
            Piece::json(format!("{mantissa}{e}{sign}{exp}"), NOT_AN_INTEGER)
        }
        11 => {
            // An integer too long for a double: still JSON, still too large.
            let digits = 300 + cursor.below(200);
            let text = format!("1{}", "0".repeat(digits));
            Piece::json(text, NOT_AN_INTEGER)
        }
        12 => {
            // Number-like text that is not JSON.
            let text = cursor.pick(&[
                "01",
                "00",
                "-01",
                "+1",
                ".5",
                "1.",
                "1.e3",
                "1e",
                "1e+",
                "-",
                "0x10",
                "1_000",
                "NaN",
                "Infinity",
                "-Infinity",
                "--1",
                "\u{661}",
                "\u{ff11}",
                "1 2",
            ]);
            Piece::not_json(*text)
        }
        _ => {
            // Other JSON values: never an amount.
            let text = cursor.pick(&[
                r#""100""#,
                r#""""#,
                "null",
                "true",
                "false",
                "[]",
                "[1]",
                "[[1],{}]",
                r#""\u00e9\ud83d\ude00""#,
                r#""amount""#,
                r#""\u1e40 \"1e400""#,
            ]);
            Piece::json(*text, NOT_AN_INTEGER)
        }
    }
}

/// JSON's own whitespace (and nothing else).
fn ws(cursor: &mut Cursor<'_>) -> &'static str {
    const WS: &[&str] = &["", "", " ", "\t", "\n", "\r\n", "  \t "];
    WS[cursor.below(WS.len())]
}

/// Keys that are `amount` once decoded, and keys that are not.
const AMOUNT_KEYS: &[&str] = &[
    r#""amount""#,
    r#""\u0061mount""#,
    r#""am\u006Funt""#,
    r#""\u0061\u006d\u006f\u0075\u006e\u0074""#,
];
const OTHER_KEYS: &[&str] = &[
    r#""Amount""#,
    r#""amount ""#,
    r#"" amount""#,
    r#""amoun""#,
    r#""amountt""#,
    r#""amt""#,
    r#""""#,
    r#""note""#,
    r#""\"amount\"""#,
    r#""am\u0000ount""#,
];

/// A value for a field that is not the amount: anything JSON, nested deep or
/// not, with an `amount` inside that must not count; or not JSON.
fn other_value(cursor: &mut Cursor<'_>) -> Piece {
    match cursor.byte() % 12 {
        0 => {
            let inner = scalar(cursor);
            let text = [&b"{\"amount\":"[..], &inner.text, b"}"].concat();
            Piece {
                text,
                as_amount: Err("INVALID_AMOUNT"),
                is_json: inner.is_json,
            }
        }
        1 => {
            // Nesting: serde_json stops at 128 levels; 100 is fine, 200 is not.
            let depth = *cursor.pick(&[1, 10, 100, 200, 1_000]);
            let text = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            if depth <= 100 {
                Piece::json(text, Err("INVALID_AMOUNT"))
            } else {
                Piece::not_json(text)
            }
        }
        2 => {
            // Strings that are not Unicode, or not JSON strings.
            const NOT_JSON_STRINGS: &[&[u8]] = &[
                b"\"\xff\"",
                b"\"\xc3\"",
                b"\"\\ud800\"",
                b"\"\\x41\"",
                b"\"a\nb\"",
                b"'single'",
                b"\"\\u00\"",
            ];
            Piece::not_json(*cursor.pick(NOT_JSON_STRINGS))
        }
        _ => scalar(cursor),
    }
}

/// A charge body built from `bytes`, and what `parse_amount` must answer it:
/// `Ok(n)` or the error code (`INVALID_JSON`, `INVALID_AMOUNT`).
pub fn amount_body(bytes: &[u8]) -> (Vec<u8>, Result<u64, &'static str>) {
    let mut cursor = Cursor::new(bytes);
    let mut body = Vec::new();
    body.extend_from_slice(ws(&mut cursor).as_bytes());
    let expect = match cursor.byte() % 5 {
        0 | 1 => {
            // A bare value (the Spring template).
            let piece = scalar(&mut cursor);
            body.extend_from_slice(&piece.text);
            piece.as_amount
        }
        2 | 3 => {
            // An object (the NestJS template): the last `amount` counts.
            body.push(b'{');
            let mut json = true;
            let mut amount = Err("INVALID_AMOUNT");
            for i in 0..cursor.below(5) {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(ws(&mut cursor).as_bytes());
                let is_amount = cursor.byte() % 2 == 0;
                let key = if is_amount {
                    cursor.pick(AMOUNT_KEYS)
                } else {
                    cursor.pick(OTHER_KEYS)
                };
                body.extend_from_slice(key.as_bytes());
                body.extend_from_slice(ws(&mut cursor).as_bytes());
                body.push(b':');
                body.extend_from_slice(ws(&mut cursor).as_bytes());
                let value = if is_amount {
                    scalar(&mut cursor)
                } else {
                    other_value(&mut cursor)
                };
                body.extend_from_slice(&value.text);
                body.extend_from_slice(ws(&mut cursor).as_bytes());
                json &= value.is_json;
                if is_amount {
                    amount = value.as_amount;
                }
            }
            body.push(b'}');
            if json {
                amount
            } else {
                Err("INVALID_JSON")
            }
        }
        _ => {
            // An array: never an amount.
            body.push(b'[');
            let piece = scalar(&mut cursor);
            body.extend_from_slice(&piece.text);
            body.push(b']');
            if piece.is_json {
                Err("INVALID_AMOUNT")
            } else {
                Err("INVALID_JSON")
            }
        }
    };
    body.extend_from_slice(ws(&mut cursor).as_bytes());
    // Sometimes (one time in eight) break it: whatever it was, it is no
    // longer JSON.
    let broken = cursor.byte() % 8 == 7;
    if broken {
        match cursor.byte() % 4 {
            0 => body.extend_from_slice(b" x"),
            1 => body.push(b','),
            2 => body.insert(0, b'{'),
            _ => body.push(0x0c),
        }
    }
    (body, if broken { Err("INVALID_JSON") } else { expect })
}

/// Bytes that are never part of a key.
const NOT_KEY_BYTES: &[u8] = &[
    0x00, b'\t', b'\n', b'\r', b' ', 0x7f, 0x80, 0xc3, 0xe9, 0xff,
];

/// An `Idempotency-Key` built from `bytes` and whether it is valid: its length
/// and its bytes are chosen knowing the rule (1 to 255 bytes in `!`..=`~`).
pub fn idempotency_key(bytes: &[u8]) -> (Vec<u8>, bool) {
    let mut cursor = Cursor::new(bytes);
    let len = match cursor.byte() % 8 {
        0 => *cursor.pick(&[0, 1, 254, 255, 256, 257]),
        1 => 256 + cursor.below(400),
        _ => 1 + cursor.below(40),
    };
    let mut key: Vec<u8> = (0..len).map(|_| b'!' + cursor.byte() % 94).collect();
    let mut valid = (1..=255).contains(&len);
    if len > 0 && cursor.byte() % 3 == 0 {
        let at = cursor.below(len);
        key[at] = *cursor.pick(NOT_KEY_BYTES);
        valid = false;
    }
    (key, valid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_reads_zeros_past_the_end() {
        let mut cursor = Cursor::new(&[1, 2]);
        assert_eq!(cursor.u64(), 0x0102_0000_0000_0000);
        assert!(cursor.is_empty());
        assert_eq!(cursor.byte(), 0);
    }

    #[test]
    fn paths_are_spelled_from_tokens_and_raw_bytes() {
        // Start 6 ("/"), 3 pieces: token 1 ("/point/"), token 6 ("1"), raw 0xff.
        assert_eq!(path(&[0, 6, 0, 3, 8, 48, 7, 0xff]), b"//point/1\xff");
    }

    #[test]
    fn integers_are_classified_by_their_digits() {
        assert_eq!(integer("1"), Ok(1));
        assert_eq!(
            integer("9223372036854775807"),
            Ok(9_223_372_036_854_775_807)
        );
        assert_eq!(integer("9223372036854775808"), Err("INVALID_AMOUNT"));
        assert_eq!(integer("0"), Err("INVALID_AMOUNT"));
        assert_eq!(integer(&"9".repeat(400)), Err("INVALID_AMOUNT"));
    }

    #[test]
    fn the_key_model_knows_the_rule() {
        for seed in 0..2_000u32 {
            let bytes = seed.to_le_bytes().repeat(60);
            let (key, valid) = idempotency_key(&bytes);
            let by_rule =
                (1..=255).contains(&key.len()) && key.iter().all(|b| (0x21..=0x7e).contains(b));
            assert_eq!(valid, by_rule, "{key:?}");
        }
    }
}
