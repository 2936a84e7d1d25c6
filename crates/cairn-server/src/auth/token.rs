//! What a bearer token is: its text form, its secret's hash, and the record the meta
//! group keeps of it. Only hashes are kept or compared; a secret is held just long
//! enough to hash it, and nothing here is `Debug` with a secret inside.

use std::path::Path;

use cairn_client::api::{Role, TokenInfo};
use serde::{Deserialize, Serialize};

use super::AuthError;

/// Every token the cluster issues starts with this.
const PREFIX: &str = "cairn";
/// Bytes of randomness in a token's id (public: it names the token in lists).
const ID_BYTES: usize = 8;
/// Bytes of randomness in a token's secret.
const SECRET_BYTES: usize = 32;
/// A root token must be at least this long: it guards everything.
pub const ROOT_MIN_CHARS: usize = 32;

/// A newly made token: the text handed once to its owner, and what is kept of it.
pub struct Issued {
    pub text: String,
    pub id: String,
    pub hash: blake3::Hash,
}

/// Make a token `cairn.<id>.<secret>` from the operating system's randomness.
pub fn issue() -> Issued {
    use rand::RngCore as _;
    let mut id = [0u8; ID_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let id = hex(&id);
    let secret = hex(&secret);
    Issued {
        text: format!("{PREFIX}.{id}.{secret}"),
        hash: blake3::hash(secret.as_bytes()),
        id,
    }
}

/// A new root token's text: as long and as random as an issued token.
pub fn new_root() -> String {
    use rand::RngCore as _;
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    format!("{PREFIX}-root.{}", hex(&secret))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A presented issued token split into its id and its secret's hash; `None` when the
/// text does not have an issued token's form.
pub fn parse(text: &str) -> Option<(&str, blake3::Hash)> {
    let rest = text.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (id, secret) = rest.split_once('.')?;
    let lower_hex = |s: &str, bytes: usize| {
        s.len() == 2 * bytes
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    (lower_hex(id, ID_BYTES) && lower_hex(secret, SECRET_BYTES))
        .then(|| (id, blake3::hash(secret.as_bytes())))
}

/// The hash of the root token read from `path`.
pub fn read_root(path: &Path) -> Result<blake3::Hash, AuthError> {
    Ok(blake3::hash(read_root_text(path)?.as_bytes()))
}

/// The root token read from `path`: the file's text, trimmed of surrounding
/// whitespace. Only a node joining a cluster holds it for longer than it takes to
/// hash it, to present it to the member admitting it.
pub fn read_root_text(path: &Path) -> Result<String, AuthError> {
    let bad = |why: String| AuthError::RootToken {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let text = text.trim();
    if text.chars().count() < ROOT_MIN_CHARS {
        return Err(bad(format!(
            "a root token needs at least {ROOT_MIN_CHARS} characters (`cairn token root FILE` writes one)"
        )));
    }
    if !text.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "a root token is printable ASCII without spaces, so it fits an HTTP header".into(),
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    "the root token file can be read by other users; `chmod 600` it"
                );
            }
        }
    }
    Ok(text.to_owned())
}

/// What the meta group keeps of an issued token, as JSON under `a/token/<id>`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    pub role: Role,
    /// Only keys starting with this may be read or written with the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// blake3 of the secret, in hex.
    pub hash: String,
    pub created_ms: u64,
    pub created_by: String,
}

impl TokenRecord {
    /// Whether `hash` is this token's secret's hash (in constant time).
    pub fn matches(&self, hash: &blake3::Hash) -> bool {
        blake3::Hash::from_hex(&self.hash).is_ok_and(|kept| kept == *hash)
    }

    pub fn info(&self, id: &str) -> TokenInfo {
        TokenInfo {
            id: id.to_owned(),
            name: self.name.clone(),
            role: self.role,
            prefix: self.prefix.clone(),
            created_ms: self.created_ms,
            created_by: self.created_by.clone(),
        }
    }
}

/// Only the hash's first bytes: enough to tell records apart in a log, useless to
/// an attacker (and the hash is not the secret anyway).
impl std::fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRecord")
            .field("name", &self.name)
            .field("role", &self.role)
            .field(
                "hash",
                &format_args!("{}…", &self.hash[..8.min(self.hash.len())]),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_token_parses_back_to_its_id_and_hash() {
        let issued = issue();
        let (id, hash) = parse(&issued.text).expect("an issued token parses");
        assert_eq!(id, issued.id);
        assert_eq!(hash, issued.hash);
        assert_ne!(issue().text, issued.text, "two tokens are never the same");
    }

    #[test]
    fn other_texts_are_not_issued_tokens() {
        let issued = issue();
        for text in [
            String::new(),
            "cairn".into(),
            issued.text.replacen("cairn", "cairm", 1),
            issued.text[..issued.text.len() - 1].to_owned(),
            format!("{}0", issued.text),
            issued.text.to_uppercase(),
            format!("cairn.{}.", issued.id),
        ] {
            assert!(parse(&text).is_none(), "{text:?} parsed");
        }
    }

    #[test]
    fn a_record_matches_only_its_own_secret() {
        let issued = issue();
        let record = TokenRecord {
            name: "app".into(),
            role: Role::Read,
            prefix: None,
            hash: issued.hash.to_hex().to_string(),
            created_ms: 1,
            created_by: "root".into(),
        };
        assert!(record.matches(&issued.hash));
        assert!(!record.matches(&issue().hash));
        let shown = format!("{record:?}");
        assert!(
            !shown.contains(&record.hash),
            "Debug shows the whole hash: {shown}"
        );
    }

    #[test]
    fn a_root_token_file_must_hold_a_long_printable_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root");
        std::fs::write(&path, "short\n").unwrap();
        assert!(read_root(&path).is_err());
        std::fs::write(&path, format!("{}\n", "a b".repeat(20))).unwrap();
        assert!(read_root(&path).is_err());
        let root = new_root();
        std::fs::write(&path, format!("  {root}\n")).unwrap();
        assert_eq!(read_root(&path).unwrap(), blake3::hash(root.as_bytes()));
        assert!(read_root(&dir.path().join("missing")).is_err());
    }
}
