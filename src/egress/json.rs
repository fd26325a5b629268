//! The JSON subset `nft -j` prints, parsed into a tree for [`super::nft`]'s check of the
//! installed rules: objects, arrays, strings (every escape, `\u` surrogate pairs included),
//! integers, `true`, `false`, `null`. A fraction or an exponent is refused (nft prints
//! none), so is nesting deeper than [`MAX_DEPTH`], a duplicate key and anything after the
//! value. Pure, and a leaf.
//!
//! Hand-written rather than `serde_json`: the check needs a few dozen lines of tree walking,
//! and serde_json would bring five crates (serde, serde_json, itoa, ryu, memchr) into the
//! static binary for it.

use std::fmt;

/// How deep arrays and objects may nest (nft's output is about 6 deep).
pub const MAX_DEPTH: usize = 32;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Str(String),
    Array(Vec<Json>),
    /// Members in document order (keys are unique).
    Object(Vec<(String, Json)>),
}

impl Json {
    /// The member `key` of an object.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Json::Int(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An object's only member, `(key, value)`: nft writes each statement, expression and
    /// list entry as `{"kind": {...}}`.
    pub fn single(&self) -> Option<(&str, &Json)> {
        match self {
            Json::Object(m) if m.len() == 1 => Some((m[0].0.as_str(), &m[0].1)),
            _ => None,
        }
    }
}

/// Where and why parsing stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonError {
    pub at: usize,
    pub why: &'static str,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.at, self.why)
    }
}

impl std::error::Error for JsonError {}

/// Parses one JSON document (surrounding whitespace allowed).
pub fn parse(text: &str) -> Result<Json, JsonError> {
    let mut p = Parser {
        b: text.as_bytes(),
        at: 0,
    };
    p.ws();
    let v = p.value(0)?;
    p.ws();
    if p.at != p.b.len() {
        return Err(p.err("text after the value"));
    }
    Ok(v)
}

struct Parser<'a> {
    b: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn err(&self, why: &'static str) -> JsonError {
        JsonError { at: self.at, why }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8, why: &'static str) -> Result<(), JsonError> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.err(why))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, JsonError> {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string().map(Json::Str),
            Some(b'-' | b'0'..=b'9') => self.int(),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => Err(self.err("expected a value")),
            None => Err(self.err("unexpected end")),
        }
    }

    fn word(&mut self, w: &'static str, v: Json) -> Result<Json, JsonError> {
        if self.b[self.at..].starts_with(w.as_bytes()) {
            self.at += w.len();
            Ok(v)
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.at += 1; // {
        let mut members: Vec<(String, Json)> = Vec::new();
        self.ws();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(Json::Object(members));
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a key"));
            }
            let key_at = self.at;
            let key = self.string()?;
            if members.iter().any(|(k, _)| *k == key) {
                return Err(JsonError {
                    at: key_at,
                    why: "duplicate key",
                });
            }
            self.ws();
            self.eat(b':', "expected ':'")?;
            self.ws();
            let v = self.value(depth)?;
            members.push((key, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        self.at += 1; // [
        let mut items = Vec::new();
        self.ws();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value(depth)?);
            self.ws();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    fn int(&mut self) -> Result<Json, JsonError> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let digits = self.at;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        let n = self.at - digits;
        if n == 0 {
            return Err(self.err("expected a digit"));
        }
        if n > 1 && self.b[digits] == b'0' {
            return Err(JsonError {
                at: digits,
                why: "leading zero",
            });
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(self.err("only integers are expected"));
        }
        // ASCII digits with an optional '-': valid UTF-8 and i64 syntax; only the range can fail.
        let text = std::str::from_utf8(&self.b[start..self.at]).map_err(|_| self.err("digits"))?;
        text.parse::<i64>().map(Json::Int).map_err(|_| JsonError {
            at: start,
            why: "integer out of range",
        })
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let h = self
            .b
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let mut v = 0u32;
        for &c in h {
            let d = (c as char)
                .to_digit(16)
                .ok_or_else(|| self.err("bad \\u escape"))?;
            v = v * 16 + d;
        }
        self.at += 4;
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.at += 1; // "
        let mut out = String::new();
        loop {
            let start = self.at;
            while matches!(self.peek(), Some(c) if c != b'"' && c != b'\\' && c >= 0x20) {
                self.at += 1;
            }
            // The input is a &str and we stopped only at ASCII bytes: a char boundary.
            out.push_str(
                std::str::from_utf8(&self.b[start..self.at]).map_err(|_| self.err("UTF-8"))?,
            );
            match self.peek() {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
                    self.at += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xd800..0xdc00).contains(&hi) {
                                if !self.b[self.at..].starts_with(b"\\u") {
                                    return Err(self.err("lone surrogate"));
                                }
                                self.at += 2;
                                let lo = self.hex4()?;
                                if !(0xdc00..0xe000).contains(&lo) {
                                    return Err(self.err("lone surrogate"));
                                }
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            out.push(
                                char::from_u32(code).ok_or_else(|| self.err("lone surrogate"))?,
                            );
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(m: &[(&str, Json)]) -> Json {
        Json::Object(m.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn values() {
        assert_eq!(parse(" null ").unwrap(), Json::Null);
        assert_eq!(parse("true").unwrap(), Json::Bool(true));
        assert_eq!(parse("false").unwrap(), Json::Bool(false));
        assert_eq!(parse("0").unwrap(), Json::Int(0));
        assert_eq!(parse("-300").unwrap(), Json::Int(-300));
        assert_eq!(parse("9223372036854775807").unwrap(), Json::Int(i64::MAX));
        assert_eq!(parse("[]").unwrap(), Json::Array(vec![]));
        assert_eq!(parse("{}").unwrap(), Json::Object(vec![]));
        assert_eq!(
            parse("{\"a\": [1, {\"b\": null}], \"c\": \"d\"}\n").unwrap(),
            obj(&[
                (
                    "a",
                    Json::Array(vec![Json::Int(1), obj(&[("b", Json::Null)])])
                ),
                ("c", Json::Str("d".into())),
            ])
        );
    }

    #[test]
    fn strings_and_escapes() {
        let s = |t: &str| parse(t).unwrap().as_str().unwrap().to_string();
        assert_eq!(
            s(r#""bottle-init: proxy [::1]:4567""#),
            "bottle-init: proxy [::1]:4567"
        );
        assert_eq!(s(r#""a\"b\\c\/d\b\f\n\r\t""#), "a\"b\\c/d\u{8}\u{c}\n\r\t");
        assert_eq!(s(r#""\u00e9\u0041""#), "éA");
        assert_eq!(s(r#""\ud83d\ude00""#), "😀");
        assert_eq!(s("\"é\""), "é");
    }

    #[test]
    fn refusals() {
        for (bad, why) in [
            ("", "unexpected end"),
            ("[1,]", "expected a value"),
            ("[1 2]", "expected ',' or ']'"),
            ("{\"a\" 1}", "expected ':'"),
            ("{a: 1}", "expected a key"),
            ("{\"a\": 1, \"a\": 2}", "duplicate key"),
            ("1.5", "only integers"),
            ("1e3", "only integers"),
            ("01", "leading zero"),
            ("-", "expected a digit"),
            ("99999999999999999999", "out of range"),
            ("\"abc", "unterminated"),
            ("\"a\nb\"", "control character"),
            ("\"\\x\"", "bad escape"),
            ("\"\\u12\"", "short \\u escape"),
            ("\"\\u12zz\"", "bad \\u escape"),
            ("\"\\ud800\"", "lone surrogate"),
            ("\"\\ud800\\u0041\"", "lone surrogate"),
            ("\"\\udc00\"", "lone surrogate"),
            ("truth", "expected true"),
            ("{} {}", "text after"),
            ("'a'", "expected a value"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.why.contains(why), "{bad:?}: {e}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(&deep).unwrap_err().why, "nested too deeply");
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(parse(&ok).is_ok());
    }

    #[test]
    fn accessors() {
        let v = parse("{\"rule\": {\"handle\": 3, \"expr\": [{\"drop\": null}]}}").unwrap();
        let (kind, rule) = v.single().unwrap();
        assert_eq!(kind, "rule");
        assert_eq!(rule.get("handle").and_then(Json::as_int), Some(3));
        let expr = rule.get("expr").and_then(Json::as_array).unwrap();
        assert_eq!(expr[0].single(), Some(("drop", &Json::Null)));
        assert_eq!(rule.get("nope"), None);
        assert_eq!(Json::Int(1).get("x"), None);
        assert_eq!(parse("{\"a\":1,\"b\":2}").unwrap().single(), None);
    }
}
