//! What a create body is checked for on its raw bytes, before simd-json parses it, because
//! simd-json would get it wrong:
//!
//! - every `\u` escape must make a Unicode character: simd-json turns a lone high
//!   surrogate into U+0000 and drops an escape of bad hex digits, changing signed data
//!   without a word, so such a body is not JSON payd accepts (`invalid_json`);
//! - a number beyond a double (`1e309`, 310 digits) makes simd-json refuse the whole
//!   document, where API.md wants `invalid_request` on the field. No field takes a number
//!   with a fraction or an exponent, or of more than 18 digits (amounts stop at 12), so
//!   every such number is rewritten in place to `0.5` (padded with spaces): the field
//!   that holds it then fails as it would have, and the document parses.
//!
//! One pass over the body; strings are skipped a run of plain bytes at a time.

/// Why a body is refused before parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanError {
    /// A `\u` escape that is not a Unicode scalar value (bad hex, a lone surrogate).
    NotACharacter,
}

/// Integers of up to this many digits are left as they are: they fit 64 bits exactly.
const PLAIN_INTEGER_DIGITS_MAX: usize = 18;
/// What a number no field accepts is rewritten to (no valid number is shorter).
const NUMBER_REPLACEMENT: &[u8] = b"0.5";

/// Checks the escapes of every string and rewrites the numbers no field accepts (see
/// the module doc). Anything else that is not JSON is left for the parser to refuse.
pub fn prepare(body: &mut [u8]) -> Result<(), ScanError> {
    let mut at = 0;
    while at < body.len() {
        at = match body[at] {
            b'"' => skip_string(body, at + 1)?,
            b'-' | b'0'..=b'9' => neutralize_number(body, at),
            _ => at + 1,
        };
    }
    Ok(())
}

/// Returns where the string whose contents start at `start` ends (after its quote), or
/// the body's end if it never does.
fn skip_string(body: &[u8], start: usize) -> Result<usize, ScanError> {
    let mut at = start;
    loop {
        let Some(offset) = body[at..].iter().position(|&b| b == b'"' || b == b'\\') else {
            return Ok(body.len());
        };
        at += offset;
        if body[at] == b'"' {
            return Ok(at + 1);
        }
        at = match body.get(at + 1) {
            Some(b'u') => skip_unicode_escape(body, at)?,
            Some(_) => at + 2,
            None => return Ok(body.len()),
        };
    }
}

/// Checks the `\uXXXX` escape at `at` (with its low half, for a high surrogate) and
/// returns where it ends.
fn skip_unicode_escape(body: &[u8], at: usize) -> Result<usize, ScanError> {
    let unit = hex_unit(body, at + 2).ok_or(ScanError::NotACharacter)?;
    match unit {
        0xd800..=0xdbff => {
            let low = (body.get(at + 6..at + 8) == Some(b"\\u"))
                .then(|| hex_unit(body, at + 8))
                .flatten();
            match low {
                Some(0xdc00..=0xdfff) => Ok(at + 12),
                _ => Err(ScanError::NotACharacter),
            }
        }
        0xdc00..=0xdfff => Err(ScanError::NotACharacter),
        _ => Ok(at + 6),
    }
}

/// The UTF-16 code unit of the four hex digits at `at`.
fn hex_unit(body: &[u8], at: usize) -> Option<u16> {
    let digits = body.get(at..at + 4)?;
    digits.iter().try_fold(0u16, |unit, &digit| {
        let value = char::from(digit).to_digit(16)?;
        Some(unit << 4 | value as u16)
    })
}

/// Reads the number at `start` by the JSON grammar and rewrites it if no field could
/// take it; returns where it ends. Malformed numbers are left for the parser.
fn neutralize_number(body: &mut [u8], start: usize) -> usize {
    let mut at = start;
    if body[at] == b'-' {
        at += 1;
    }
    let integer_start = at;
    match body.get(at) {
        Some(b'0') => at += 1,
        Some(b'1'..=b'9') => at = skip_digits(body, at),
        _ => return at.max(start + 1),
    }
    let integer_digits = at - integer_start;
    let mut plain = true;
    if body.get(at) == Some(&b'.') {
        let fraction_start = at + 1;
        at = skip_digits(body, fraction_start);
        if at == fraction_start {
            return at;
        }
        plain = false;
    }
    if matches!(body.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(body.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let exponent_start = at;
        at = skip_digits(body, exponent_start);
        if at == exponent_start {
            return at;
        }
        plain = false;
    }
    let delimited = body
        .get(at)
        .is_none_or(|&b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'));
    if !delimited {
        // Not a number after all (`01.5`, `1e5x`): skip the rest of it, whole.
        let rest = body[at..]
            .iter()
            .take_while(|&&b| is_number_byte(b))
            .count();
        return at + rest;
    }
    if !(plain && integer_digits <= PLAIN_INTEGER_DIGITS_MAX) {
        let token = &mut body[start..at];
        token.fill(b' ');
        token[..NUMBER_REPLACEMENT.len()].copy_from_slice(NUMBER_REPLACEMENT);
    }
    at
}

fn is_number_byte(byte: u8) -> bool {
    matches!(byte, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
}

fn skip_digits(body: &[u8], start: usize) -> usize {
    let digits = body[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    start + digits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(text: &str) -> Result<String, ScanError> {
        let mut bytes = text.as_bytes().to_vec();
        prepare(&mut bytes)?;
        Ok(String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn escapes_must_be_characters() {
        for good in [
            r#""a\u00e9b""#,
            r#""\ud83d\ude00""#,
            r#""\\ud800""#,
            r#""\n\"""#,
        ] {
            assert_eq!(prepared(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            r#""a\ud800b""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            r#""\ud800\ud800""#,
            r#""\uzzzz""#,
            r#""\u12""#,
        ] {
            assert_eq!(prepared(bad), Err(ScanError::NotACharacter), "{bad}");
        }
    }

    #[test]
    fn numbers_no_field_takes_become_a_fraction_of_the_same_length() {
        let digits_19 = "1".repeat(19);
        let cases = [
            ("1e309", "0.5  "),
            ("-1E400", "0.5   "),
            ("1.5", "0.5"),
            ("0e0", "0.5"),
            (digits_19.as_str(), "0.5                "),
        ];
        for (number, rewritten) in cases {
            let document = format!("{{\"amount\":{number},\"x\":[{number}]}}");
            let expected = format!("{{\"amount\":{rewritten},\"x\":[{rewritten}]}}");
            assert_eq!(prepared(&document).as_deref(), Ok(&*expected), "{number}");
        }
    }

    #[test]
    fn plain_integers_strings_and_malformed_numbers_are_left_alone() {
        for document in [
            r#"{"amount":100000000000}"#,
            r#"{"amount":-123456789012345678}"#,
            r#"{"d":"1e309 1.5"}"#,
            r#"{"a":01.5,"b":1.,"c":1e,"d":-,"e":1e5x}"#,
        ] {
            assert_eq!(prepared(document).as_deref(), Ok(document));
        }
        // A number at the very end is complete: a document cut after it still parses
        // as far as the number goes.
        assert_eq!(prepared("[1.5").as_deref(), Ok("[0.5"));
    }
}
