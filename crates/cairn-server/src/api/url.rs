//! Keys in URLs: strict percent-decoding of paths and query strings into bytes.
//!
//! Keys are arbitrary bytes, so they are decoded to bytes, never to `String`. The
//! decoding is strict: a `%` not followed by two hex digits is an error, never passed
//! through, so a client's encoding bug cannot silently write to the wrong key. `+` is a
//! literal plus, not a space (clients encode a space as `%20`).

/// Why a URL component could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEncoding {
    pub position: usize,
}

/// Decode `%XX` escapes strictly.
pub fn decode(text: &str) -> Result<Vec<u8>, BadEncoding> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
            match (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(BadEncoding { position: i }),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Percent-encode a key for a query string (the inverse of [`decode`]); the client's
/// encoder, so what the server hands out is exactly what clients send.
pub fn encode(key: &[u8]) -> String {
    cairn_client::encode_query(key)
}

/// Split a raw query string into decoded `(name, value)` pairs.
pub fn query_pairs(query: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut pairs = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        let name = decode(name)
            .ok()
            .and_then(|n| String::from_utf8(n).ok())
            .ok_or_else(|| format!("query parameter name `{name}` is not valid"))?;
        let value = decode(value).map_err(|e| {
            format!(
                "query parameter `{name}` has a malformed percent-escape at byte {}",
                e.position
            )
        })?;
        if pairs.iter().any(|(n, _)| *n == name) {
            return Err(format!("query parameter `{name}` is given twice"));
        }
        pairs.push((name, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn strict_decoding() {
        assert_eq!(decode("a%2Fb/c").unwrap(), b"a/b/c");
        assert_eq!(decode("%00%ff%FF").unwrap(), vec![0, 255, 255]);
        assert_eq!(decode("a+b").unwrap(), b"a+b");
        assert_eq!(decode("%zz").unwrap_err().position, 0);
        assert_eq!(decode("ab%4").unwrap_err().position, 2);
        assert_eq!(decode("%").unwrap_err().position, 0);
    }

    #[test]
    fn query_parsing() {
        let q = query_pairs("prefix=a%2F&limit=5&flag").unwrap();
        assert_eq!(q[0], ("prefix".to_string(), b"a/".to_vec()));
        assert_eq!(q[1], ("limit".to_string(), b"5".to_vec()));
        assert_eq!(q[2], ("flag".to_string(), Vec::new()));
        assert!(query_pairs("a=1&a=2").unwrap_err().contains("twice"));
        assert!(query_pairs("a=%g1").unwrap_err().contains("malformed"));
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(key in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(decode(&encode(&key)).unwrap(), key);
        }
    }
}
