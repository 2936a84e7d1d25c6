//! Encryption at rest: a backup key, the sealed file layout, and the manifest's MAC.
//!
//! A sealed file is the plain shard file (zstd, docs/BACKUP_FORMAT.md) encrypted with
//! XChaCha20-Poly1305 in the STREAM construction (64 KiB segments, each authenticated,
//! the last one marked, so truncation, reordering and splicing are all detected):
//!
//! ```text
//! magic "CAIRNSEA" | version u32 | key id (8 bytes) | nonce prefix (19 bytes)
//! segment*         : ciphertext of 64 KiB + 16-byte tag (the last one shorter)
//! ```
//!
//! Every segment is bound to the file's path inside the destination
//! (`<backup id>/shard-<n>.cbk`) as associated data, so a sealed file moved to another
//! backup or shard does not open. The manifest, which stays readable (ids, cuts, key
//! id), carries a keyed BLAKE3 MAC over itself, so a tampered manifest is detected by
//! whoever holds the key. This module never sees where files go or come from.

use std::io::{self, Read, Write};
use std::path::Path;

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::{KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;

use crate::error::BackupError;

const MAGIC: &[u8; 8] = b"CAIRNSEA";
const VERSION: u32 = 1;
/// Plaintext bytes per segment.
const SEGMENT: usize = 64 * 1024;
const TAG: usize = 16;
/// XChaCha20's 24-byte nonce less STREAM's 4-byte counter and 1-byte last flag.
const NONCE_PREFIX: usize = 19;
const HEADER: usize = 8 + 4 + 8 + NONCE_PREFIX;
/// The cipher, as a manifest names it.
pub const CIPHER: &str = "xchacha20poly1305-stream64k";

/// A 256-bit backup key and its public id (which names it in manifests and errors).
#[derive(Clone)]
pub struct BackupKey {
    key: [u8; 32],
    id: [u8; 8],
}

/// The id only: a key never reaches a log.
impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackupKey({})", self.id())
    }
}

impl BackupKey {
    pub fn from_bytes(key: [u8; 32]) -> BackupKey {
        let derived = blake3::derive_key("cairn backup key id v1", &key);
        let mut id = [0u8; 8];
        id.copy_from_slice(&derived[..8]);
        BackupKey { key, id }
    }

    /// A new random key, as the 64 hex digits a key file holds.
    pub fn generate_hex() -> String {
        use rand::RngCore as _;
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        key.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Read a key file: 64 hex digits (surrounding whitespace ignored).
    pub fn load(path: &Path) -> Result<BackupKey, BackupError> {
        let bad = |why: String| BackupError::Key(format!("key file {}: {why}", path.display()));
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "a backup key is 64 hex digits (`cairn backup key FILE` writes one)".into(),
            ));
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| bad(e.to_string()))?;
        }
        Ok(BackupKey::from_bytes(key))
    }

    /// The key's id, in hex: safe to show and to store.
    pub fn id(&self) -> String {
        self.id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.key.into())
    }

    /// The MAC of a manifest's bytes (taken with its `mac` field empty), hex.
    pub fn mac(&self, manifest: &[u8]) -> String {
        let mac_key = blake3::derive_key("cairn backup manifest mac v1", &self.key);
        blake3::keyed_hash(&mac_key, manifest).to_hex().to_string()
    }

    /// Whether `mac` is the MAC of `manifest` (in constant time).
    pub fn mac_matches(&self, manifest: &[u8], mac: &str) -> bool {
        let mac_key = blake3::derive_key("cairn backup manifest mac v1", &self.key);
        blake3::Hash::from_hex(mac).is_ok_and(|m| m == blake3::keyed_hash(&mac_key, manifest))
    }
}

/// Encrypts what is written to it into a sealed file on `out`; [`Sealer::finish`]
/// writes the last segment and returns `out`.
pub struct Sealer<W: Write> {
    out: W,
    stream: Option<EncryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    buf: Vec<u8>,
}

impl<W: Write> Sealer<W> {
    /// Seal the file stored at `path` (its associated data) under `key`.
    pub fn new(mut out: W, key: &BackupKey, path: &str) -> io::Result<Sealer<W>> {
        use rand::RngCore as _;
        let mut prefix = [0u8; NONCE_PREFIX];
        rand::rngs::OsRng.fill_bytes(&mut prefix);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_be_bytes())?;
        out.write_all(&key.id)?;
        out.write_all(&prefix)?;
        Ok(Sealer {
            out,
            stream: Some(EncryptorBE32::from_aead(key.cipher(), (&prefix).into())),
            aad: path.as_bytes().to_vec(),
            buf: Vec::with_capacity(SEGMENT),
        })
    }

    fn seal(&mut self) -> io::Result<()> {
        let stream = self.stream.as_mut().ok_or_else(finished)?;
        let sealed = stream
            .encrypt_next(Payload {
                msg: &self.buf,
                aad: &self.aad,
            })
            .map_err(|_| io::Error::other("encrypting a segment"))?;
        self.out.write_all(&sealed)?;
        self.buf.clear();
        Ok(())
    }

    /// Write the last segment; the sealed file is complete.
    pub fn finish(mut self) -> io::Result<W> {
        let stream = self.stream.take().ok_or_else(finished)?;
        let sealed = stream
            .encrypt_last(Payload {
                msg: &self.buf,
                aad: &self.aad,
            })
            .map_err(|_| io::Error::other("encrypting the last segment"))?;
        self.out.write_all(&sealed)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn finished() -> io::Error {
    io::Error::other("the sealed file is already finished")
}

impl<W: Write> Write for Sealer<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full segment is sealed only once more data follows: the last one must be
        // sealed as the last.
        if self.buf.len() == SEGMENT && !data.is_empty() {
            self.seal()?;
        }
        let n = (SEGMENT - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The key id a sealed file's header names, if `head` (its first bytes) is one.
pub fn sealed_key_id(head: &[u8]) -> Option<String> {
    (head.len() >= HEADER && &head[..8] == MAGIC)
        .then(|| head[12..20].iter().map(|b| format!("{b:02x}")).collect())
}

/// Decrypts a sealed file read from `input`, segment by segment; a segment that does
/// not authenticate (wrong key, altered, truncated, moved) is an error, never data.
pub struct Opener<R: Read> {
    input: R,
    stream: Option<DecryptorBE32<XChaCha20Poly1305>>,
    aad: Vec<u8>,
    /// The next sealed segment's first byte, read ahead to tell the last one.
    ahead: Option<u8>,
    plain: Vec<u8>,
    at: usize,
}

impl<R: Read> Opener<R> {
    /// Open the sealed file stored at `path` with `key`.
    pub fn new(mut input: R, key: &BackupKey, path: &str) -> Result<Opener<R>, BackupError> {
        let mut header = [0u8; HEADER];
        input
            .read_exact(&mut header)
            .map_err(|_| BackupError::Corrupt("missing or short encryption header".into()))?;
        if &header[..8] != MAGIC {
            return Err(BackupError::Corrupt(
                "not an encrypted Cairn backup file".into(),
            ));
        }
        let version = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        if version != VERSION {
            return Err(BackupError::Corrupt(format!(
                "encryption version {version}; this build reads {VERSION}"
            )));
        }
        if header[12..20] != key.id {
            return Err(BackupError::Key(format!(
                "the file is encrypted with key {}, not the key given ({})",
                sealed_key_id(&header).unwrap_or_default(),
                key.id()
            )));
        }
        let prefix: [u8; NONCE_PREFIX] = header[20..]
            .try_into()
            .map_err(|_| BackupError::Corrupt("short encryption header".into()))?;
        Ok(Opener {
            input,
            stream: Some(DecryptorBE32::from_aead(key.cipher(), (&prefix).into())),
            aad: path.as_bytes().to_vec(),
            ahead: None,
            plain: Vec::new(),
            at: 0,
        })
    }

    /// Decrypt the next segment into `plain`; false once the last one was read.
    fn open_next(&mut self) -> io::Result<bool> {
        if self.stream.is_none() {
            return Ok(false);
        }
        let mut sealed = Vec::with_capacity(SEGMENT + TAG + 1);
        if let Some(byte) = self.ahead.take() {
            sealed.push(byte);
        }
        (&mut self.input)
            .take((SEGMENT + TAG - sealed.len()) as u64)
            .read_to_end(&mut sealed)?;
        let mut one = [0u8; 1];
        let last = self.input.read(&mut one)? == 0;
        let payload = Payload {
            msg: &sealed,
            aad: &self.aad,
        };
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "a segment did not authenticate");
        self.plain = if last {
            let stream = self.stream.take().ok_or_else(finished)?;
            stream.decrypt_last(payload).map_err(|_| bad())?
        } else {
            self.ahead = Some(one[0]);
            let stream = self.stream.as_mut().ok_or_else(finished)?;
            stream.decrypt_next(payload).map_err(|_| bad())?
        };
        self.at = 0;
        Ok(true)
    }
}

impl<R: Read> Read for Opener<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if !self.open_next()? {
                return Ok(0);
            }
        }
        let n = (self.plain.len() - self.at).min(buf.len());
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A shard file being written: plain, or sealed under a key.
pub enum Sealing<W: Write> {
    Plain(W),
    Sealed(Box<Sealer<W>>),
}

impl<W: Write> Sealing<W> {
    /// Seal what is written to `out` if `key` is given (the file stored at `path`).
    pub fn new(out: W, key: Option<&BackupKey>, path: &str) -> io::Result<Sealing<W>> {
        Ok(match key {
            Some(key) => Sealing::Sealed(Box::new(Sealer::new(out, key, path)?)),
            None => Sealing::Plain(out),
        })
    }

    /// End the file (the last sealed segment) and hand back `out`.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealing::Plain(out) => Ok(out),
            Sealing::Sealed(sealer) => sealer.finish(),
        }
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            Sealing::Plain(out) => out.write(data),
            Sealing::Sealed(sealer) => sealer.write(data),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealing::Plain(out) => out.flush(),
            Sealing::Sealed(sealer) => sealer.flush(),
        }
    }
}

/// A shard file being read: plain, or opened with the key it was sealed under.
pub enum Unsealed<R: Read> {
    Plain(R),
    Sealed(Box<Opener<R>>),
}

impl<R: Read> Unsealed<R> {
    /// Read the file stored at `path`, sealed under `sealed_with` (a key id, from its
    /// manifest) or plain; a sealed file needs `key`, and that key.
    pub fn new(
        input: R,
        sealed_with: Option<&str>,
        key: Option<&BackupKey>,
        path: &str,
    ) -> Result<Unsealed<R>, BackupError> {
        match (sealed_with, key) {
            (None, _) => Ok(Unsealed::Plain(input)),
            (Some(id), None) => Err(BackupError::Key(format!(
                "encrypted with key {id}: give that key (--key-file)"
            ))),
            (Some(_), Some(key)) => Ok(Unsealed::Sealed(Box::new(Opener::new(input, key, path)?))),
        }
    }
}

impl<R: Read> Read for Unsealed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Unsealed::Plain(input) => input.read(buf),
            Unsealed::Sealed(opener) => opener.read(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> BackupKey {
        BackupKey::from_bytes([byte; 32])
    }

    fn seal(data: &[u8], key: &BackupKey, path: &str) -> Vec<u8> {
        let mut sealer = Sealer::new(Vec::new(), key, path).unwrap();
        for chunk in data.chunks(1000) {
            sealer.write_all(chunk).unwrap();
        }
        sealer.finish().unwrap()
    }

    fn open(sealed: &[u8], key: &BackupKey, path: &str) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        Opener::new(sealed, key, path)
            .map_err(|e| e.to_string())?
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn what_is_sealed_opens_with_its_key_and_path_only() {
        for len in [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 3 * SEGMENT] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            let sealed = seal(&data, &key(1), "b/shard-0.cbk");
            assert_eq!(
                open(&sealed, &key(1), "b/shard-0.cbk").unwrap(),
                data,
                "{len}"
            );
            assert!(open(&sealed, &key(2), "b/shard-0.cbk")
                .unwrap_err()
                .contains("encrypted with key"));
            assert!(
                open(&sealed, &key(1), "b/shard-1.cbk").is_err(),
                "moved file opened"
            );
            assert_eq!(sealed_key_id(&sealed), Some(key(1).id()));
            if len > 0 {
                let needle = &data[..data.len().min(64)];
                assert!(!sealed.windows(needle.len()).any(|w| w == needle) || needle.len() < 8);
            }
        }
    }

    #[test]
    fn an_altered_or_cut_sealed_file_never_opens() {
        let data = vec![7u8; 2 * SEGMENT + 10];
        let sealed = seal(&data, &key(1), "p");
        let mut flipped = sealed.clone();
        flipped[HEADER + SEGMENT + 3] ^= 1;
        assert!(open(&flipped, &key(1), "p").is_err());
        // Cut at a segment boundary: the last segment seen is not marked last.
        let cut = &sealed[..HEADER + SEGMENT + TAG];
        assert!(open(cut, &key(1), "p").is_err());
        assert!(open(&sealed[..sealed.len() - 1], &key(1), "p").is_err());
    }

    #[test]
    fn the_manifest_mac_needs_the_key() {
        let mac = key(1).mac(b"manifest");
        assert!(key(1).mac_matches(b"manifest", &mac));
        assert!(!key(1).mac_matches(b"manifesT", &mac));
        assert!(!key(2).mac_matches(b"manifest", &mac));
        assert!(!format!("{:?}", key(1)).contains(&"01".repeat(32)));
    }
}
