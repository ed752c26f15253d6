//! Plain-language config errors: serde's and the TOML parser's messages turned into what
//! an operator can act on, naming the expected form and never a Rust type or a value.
//!
//! serde describes a mismatch in terms of the Rust field (`invalid type: string "a week",
//! expected f64`); an operator needs the form the key takes (`a number of hours, such as
//! 168 or 0.5`) and what was found instead (`a string`), and must never see the value
//! itself echoed, because a value may be a secret. The unit a key's name ends with
//! (`_ms`, `_secs`, `_hours`, `_bytes`) says what its numbers count.

/// Rewrites a deserialization error of `key` into a sentence; `None` when serde's message
/// has a shape not known here (the caller then shows a generic sentence).
pub fn plain_field_message(key: &str, message: &str) -> Option<String> {
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let (found, expected) = rest.split_once(", expected ")?;
        return Some(format!(
            "expected {}, found {}",
            expected_form(key, expected),
            found_kind(found)
        ));
    }
    if let Some(rest) = message.strip_prefix("invalid value: ") {
        let (found, expected) = rest.split_once(", expected ")?;
        return Some(format!(
            "expected {}, found {}",
            expected_form(key, expected),
            out_of_range_kind(found)
        ));
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let (_value, expected) = rest.split_once("`, expected ")?;
        return Some(format!("expected {}", backticks_to_quotes(expected)));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (_field, expected) = rest.split_once("`, expected ")?;
        let known = expected
            .trim_start_matches("one of ")
            .replace('`', "")
            .replace(" or ", ", ");
        return Some(format!("is not a known key (the keys here are: {known})"));
    }
    if message.starts_with("missing field `") {
        return Some("is required".to_string());
    }
    if let Some(rest) = message.strip_prefix("invalid length ") {
        let (_length, expected) = rest.split_once(", expected ")?;
        return Some(format!("expected {expected}"));
    }
    if message == "invalid socket address syntax" {
        return Some(format!("expected {}", ADDRESS_FORM));
    }
    None
}

/// What a listen address looks like.
const ADDRESS_FORM: &str = "an IP address and port in quotes, such as \"127.0.0.1:8080\"";

/// The form serde's `expected` names, in an operator's words.
fn expected_form(key: &str, expected: &str) -> String {
    let unit = unit_of(key);
    match expected.trim() {
        "f32" | "f64" => match unit {
            Some("hours") => "a number of hours, such as 168 or 0.5".to_string(),
            Some(unit) => format!("a number of {unit}"),
            None => "a number".to_string(),
        },
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => match unit {
            Some(unit) => format!("a whole number of {unit} (0 or more)"),
            None => "a whole number (0 or more)".to_string(),
        },
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => match unit {
            Some(unit) => format!("a list of whole numbers of {unit}, such as [5, 300]"),
            None => "a list in square brackets".to_string(),
        },
        "a string" | "a borrowed string" | "a character" => "a string in quotes".to_string(),
        "path string" | "a borrowed path" => "a path in quotes".to_string(),
        "socket address" => ADDRESS_FORM.to_string(),
        other if other.starts_with("struct ") || other == "a map" => {
            "a table (a [section] or { key = value, ... })".to_string()
        }
        other if looks_like_rust(other) => "a value of another kind".to_string(),
        other => backticks_to_quotes(other),
    }
}

/// The unit a key counts in, from the suffix of its last segment.
fn unit_of(key: &str) -> Option<&'static str> {
    let last = key.rsplit('.').next().unwrap_or(key);
    let last = last.split('[').next().unwrap_or(last);
    [
        ("_ms", "milliseconds"),
        ("_secs", "seconds"),
        ("_hours", "hours"),
        ("_bytes", "bytes"),
    ]
    .into_iter()
    .find(|(suffix, _)| last.ends_with(suffix))
    .map(|(_, unit)| unit)
}

/// serde's description of what it found, without the value it quotes.
fn found_kind(found: &str) -> &'static str {
    let kind = found.split([' ', '`', '"']).next().unwrap_or_default();
    match kind {
        "string" | "char" => "a string",
        "integer" => "a whole number",
        "floating" => "a fractional number",
        "boolean" => "true or false",
        "sequence" => "a list",
        "map" => "a table",
        "unit" | "option" => "nothing",
        _ => "a value of another kind",
    }
}

/// For a value of the right kind but out of range: which way it is out, never the value.
fn out_of_range_kind(found: &str) -> &'static str {
    if found.starts_with("integer `-") || found.starts_with("floating point `-") {
        "a negative number"
    } else if found.starts_with("integer") || found.starts_with("floating") {
        "a number too large"
    } else {
        found_kind(found)
    }
}

/// True when serde's text names a Rust type an operator should not have to read.
fn looks_like_rust(text: &str) -> bool {
    [
        "enum ", "struct ", "tuple", "Vec", "Option", "::", "variant",
    ]
    .iter()
    .any(|word| text.contains(word))
}

/// serde quotes identifiers in backticks; a TOML user writes strings in double quotes.
fn backticks_to_quotes(text: &str) -> String {
    text.replace('`', "\"")
}

/// The TOML parser's message, on one line: "invalid table header, expected `.`, `]`".
/// It names what the grammar expected and never quotes the file's text (a duplicate key
/// is named, which is a key, not a value).
pub fn plain_syntax_message(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// 1-based line and column of byte `offset` in `text`.
pub fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or(before).chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(key: &str, message: &str) -> String {
        plain_field_message(key, message).unwrap_or_else(|| panic!("no rewrite of {message}"))
    }

    #[test]
    fn type_errors_name_the_form_and_unit_never_the_value() {
        assert_eq!(
            plain(
                "storage.retention_hours",
                "invalid type: string \"a week\", expected f64"
            ),
            "expected a number of hours, such as 168 or 0.5, found a string"
        );
        assert_eq!(
            plain(
                "limits.max_body_bytes",
                "invalid type: string \"x\", expected usize"
            ),
            "expected a whole number of bytes (0 or more), found a string"
        );
        assert_eq!(
            plain(
                "log.access_log",
                "invalid type: integer `1`, expected a boolean"
            ),
            "expected true or false, found a whole number"
        );
        assert_eq!(
            plain(
                "webhooks.retry_schedule_secs",
                "invalid type: integer `5`, expected a sequence"
            ),
            "expected a list of whole numbers of seconds, such as [5, 300], found a whole number"
        );
        assert_eq!(
            plain(
                "merchants[0].secrets",
                "invalid type: string \"sk_live\", expected a sequence"
            ),
            "expected a list in square brackets, found a string"
        );
    }

    #[test]
    fn ranges_variants_and_unknown_keys_read_plainly() {
        assert_eq!(
            plain(
                "limits.max_body_bytes",
                "invalid value: integer `-1`, expected usize"
            ),
            "expected a whole number of bytes (0 or more), found a negative number"
        );
        assert_eq!(
            plain(
                "storage.shards",
                "invalid value: integer `70000`, expected u16"
            ),
            "expected a whole number (0 or more), found a number too large"
        );
        assert_eq!(
            plain(
                "storage.durability",
                "unknown variant `sometimes`, expected `fsync` or `none`"
            ),
            "expected \"fsync\" or \"none\""
        );
        assert_eq!(
            plain(
                "server.bogus",
                "unknown field `bogus`, expected one of `listen`, `cores`"
            ),
            "is not a known key (the keys here are: listen, cores)"
        );
        assert_eq!(
            plain("server.listen", "invalid socket address syntax"),
            format!("expected {ADDRESS_FORM}")
        );
    }

    #[test]
    fn no_rust_type_name_survives() {
        for (key, message) in [
            (
                "server",
                "invalid type: integer `1`, expected struct ServerConfig",
            ),
            ("merchants", "invalid type: map, expected a sequence"),
            ("x", "invalid type: string \"v\", expected enum Durability"),
            ("x", "invalid type: string \"v\", expected u32"),
            ("x", "invalid type: string \"v\", expected i64"),
        ] {
            let text = plain(key, message);
            for word in ["struct", "enum", "u32", "i64", "f64", "usize", "\"v\""] {
                assert!(!text.contains(word), "{text}");
            }
        }
    }

    #[test]
    fn syntax_messages_are_one_line_with_a_position() {
        assert_eq!(
            plain_syntax_message("invalid table header\nexpected `.`, `]`\n"),
            "invalid table header, expected `.`, `]`"
        );
        let text = "[server]\nlisten = x\n";
        assert_eq!(line_and_column(text, 18), (2, 10));
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 999), (3, 1));
    }
}
