//! Oracle of the `url_decode` target: the strict percent-decoder of keys in URLs and
//! the query-string splitter (`cairn_server::api::url`).
//!
//! Never a panic. Where the strict decoder accepts a text, the lenient decoder of the
//! `percent-encoding` crate reads the same bytes; where it refuses one, the position
//! it names is a `%` not followed by two hex digits. Any bytes survive `encode` then
//! `decode`, and an encoded key pasted into a query string (as `next_start_after` is)
//! comes back as one parameter with exactly those bytes.

use cairn_server::api::url;
use percent_encoding::percent_decode_str;

pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match url::decode(&text) {
        Ok(bytes) => {
            assert!(bytes.len() <= text.len());
            assert_eq!(percent_decode_str(&text).collect::<Vec<u8>>(), bytes);
            assert_eq!(url::decode(&url::encode(&bytes)).ok(), Some(bytes));
        }
        Err(e) => {
            let rest = &text.as_bytes()[e.position..];
            assert_eq!(rest.first(), Some(&b'%'));
            assert!(
                !(rest.len() >= 3 && rest[1].is_ascii_hexdigit() && rest[2].is_ascii_hexdigit()),
                "refused a valid escape at {}",
                e.position
            );
            assert!(
                text.as_bytes()[..e.position].iter().all(|&b| b != b'%')
                    || url::decode(&text[..e.position]).is_ok()
            );
        }
    }

    let encoded = url::encode(data);
    assert!(encoded.is_ascii());
    assert_eq!(url::decode(&encoded).ok().as_deref(), Some(data));
    let query = format!("start_after={encoded}&limit=1");
    let pairs = url::query_pairs(&query).expect("an encoded key is a valid query value");
    assert_eq!(
        pairs,
        vec![
            ("start_after".to_owned(), data.to_vec()),
            ("limit".to_owned(), b"1".to_vec())
        ]
    );

    if let Ok(pairs) = url::query_pairs(&text) {
        assert!(pairs.len() <= text.split('&').count());
        for (i, (name, _)) in pairs.iter().enumerate() {
            assert!(pairs[..i].iter().all(|(other, _)| other != name));
        }
    }
}
