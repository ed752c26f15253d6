//! `http://` and `https://host[:port][/path]` URLs of the services payd calls (the
//! acquirer, webhook receivers): parsed once, strictly, so the client never builds a
//! request line from text it did not check.

use std::fmt;

/// A URL longer than this is a configuration mistake, not an address.
pub const URL_LENGTH_MAX: usize = 2048;
/// RFC 1035: a host name is at most 253 characters.
pub const HOST_LENGTH_MAX: usize = 253;

/// An `http://` or `https://` URL: the origin to connect to and the path prefix of
/// every request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`: the connection speaks TLS, verified against the host.
    pub tls: bool,
    /// A name, an IPv4 address, or an IPv6 address without its brackets.
    pub host: String,
    pub port: u16,
    /// The path prefix without a trailing slash: empty, or starting with `/`.
    pub base_path: String,
}

/// Why a URL was refused. The message never quotes the URL: it may carry a secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UrlError(pub &'static str);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl HttpUrl {
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        if text.len() > URL_LENGTH_MAX {
            return Err(UrlError("is longer than 2048 characters"));
        }
        let (tls, rest) = match (text.strip_prefix("https://"), text.strip_prefix("http://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => return Err(UrlError("must be an http:// or https:// URL")),
        };
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        if authority.contains('@') {
            // Credentials in a URL end up in logs and process listings; refuse them.
            return Err(UrlError("must not carry user information (user@host)"));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = split_host_port(authority, default_port)?;
        if tls && rustls::pki_types::ServerName::try_from(host).is_err() {
            return Err(UrlError(
                "has a host that is not a valid DNS name or IP address",
            ));
        }
        if path.contains(['?', '#']) {
            return Err(UrlError("must not carry a query or a fragment"));
        }
        if !path.bytes().all(is_path_byte) {
            return Err(UrlError("has a character not allowed in a path"));
        }
        Ok(HttpUrl {
            tls,
            host: host.to_string(),
            port,
            base_path: path.trim_end_matches('/').to_string(),
        })
    }

    /// The `Host` header value: the port only when it is not the scheme's default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == self.default_port() {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    fn default_port(&self) -> u16 {
        if self.tls {
            443
        } else {
            80
        }
    }
}

fn split_host_port(authority: &str, default_port: u16) -> Result<(&str, u16), UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or(UrlError("has an unclosed [ in its host"))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(UrlError("has an invalid IPv6 address"));
        }
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or(UrlError("has text after its host"))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if !authority.starts_with('[') {
        let host_ok = !host.is_empty()
            && host.len() <= HOST_LENGTH_MAX
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            return Err(UrlError("must name a host of letters, digits, - and ."));
        }
    }
    let port = match port {
        None => default_port,
        Some(digits) => parse_port(digits)?,
    };
    Ok((host, port))
}

fn parse_port(digits: &str) -> Result<u16, UrlError> {
    let all_digits =
        !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit());
    match digits.parse::<u16>() {
        Ok(port) if all_digits && port > 0 => Ok(port),
        _ => Err(UrlError("has a port that is not 1..=65535")),
    }
}

/// Unreserved and sub-delimiter characters, `:`, `@`, `/` and percent escapes (RFC 3986);
/// never a space or a control character, which would break the request line.
fn is_path_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, base_path: &str) -> HttpUrl {
        HttpUrl {
            tls: false,
            host: host.to_string(),
            port,
            base_path: base_path.to_string(),
        }
    }

    #[test]
    fn parses_hosts_ports_and_paths() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:9100"),
            Ok(url("127.0.0.1", 9100, ""))
        );
        assert_eq!(
            HttpUrl::parse("http://acquirer.example/"),
            Ok(url("acquirer.example", 80, ""))
        );
        assert_eq!(
            HttpUrl::parse("http://h:8080/api/v2/"),
            Ok(url("h", 8080, "/api/v2"))
        );
        assert_eq!(HttpUrl::parse("http://[::1]:9"), Ok(url("::1", 9, "")));
        assert_eq!(HttpUrl::parse("http://[::1]"), Ok(url("::1", 80, "")));
    }

    #[test]
    fn https_urls_speak_tls_on_port_443_by_default() {
        let tls = |host: &str, port: u16, base_path: &str| HttpUrl {
            tls: true,
            ..url(host, port, base_path)
        };
        assert_eq!(
            HttpUrl::parse("https://acquirer.example/api"),
            Ok(tls("acquirer.example", 443, "/api"))
        );
        assert_eq!(
            HttpUrl::parse("https://127.0.0.1:9443"),
            Ok(tls("127.0.0.1", 9443, ""))
        );
        assert_eq!(tls("h", 443, "").host_header(), "h");
        assert_eq!(tls("h", 80, "").host_header(), "h:80");
        assert!(HttpUrl::parse("https://").is_err());
        assert!(HttpUrl::parse("https://user@h").is_err());
        assert!(HttpUrl::parse("https://-h-.example").is_err());
    }

    #[test]
    fn host_header_brackets_ipv6_and_omits_port_80() {
        assert_eq!(url("h", 80, "").host_header(), "h");
        assert_eq!(url("h", 9100, "").host_header(), "h:9100");
        assert_eq!(url("::1", 9100, "").host_header(), "[::1]:9100");
    }

    #[test]
    fn refuses_what_it_cannot_call_safely() {
        for bad in [
            "ftp://h",
            "HTTPS://h",
            "http://",
            "http://:80",
            "http://h:0",
            "http://h:65536",
            "http://h:+80",
            "http://h:80x",
            "http://user:pw@h",
            "http://h/a b",
            "http://h/a?q=1",
            "http://h/a#f",
            "http://h\r\nX: y",
            "http://[::1",
            "http://[zz]:1",
            "http://[::1]x",
            "http://h_x",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("http://h/{}", "a".repeat(URL_LENGTH_MAX));
        assert!(HttpUrl::parse(&long).is_err());
    }

    #[test]
    fn errors_never_quote_the_url() {
        let error = HttpUrl::parse("http://user:sk_secret@h").unwrap_err();
        assert!(!error.to_string().contains("sk_secret"));
    }
}
