//! The shard file: one shard's versions in a backup, sorted, compressed, checkable.
//!
//! A shard file is one zstd frame (with zstd's own content checksum) holding:
//!
//! ```text
//! magic "CAIRNBAK" | format u32 | shard u32
//! record*          : key_len u32 | key | version u64 | tag u8 (0 tombstone, 1 value)
//!                    | [value_len u32 | value]            (integers big-endian)
//! trailer          : 0xFFFF_FFFF u32 | record count u64
//! ```
//!
//! Records are sorted by key, then by version newest first (the MVCC tree's order), and
//! a key's versions are all in one file. The trailer makes truncation inside the frame
//! detectable; the manifest's BLAKE3 of the whole file catches any other change before
//! a byte is decompressed. Keys longer than 4 GiB cannot occur (the store limits them).

use std::io::{Read, Write};

use crate::error::BackupError;

const MAGIC: &[u8; 8] = b"CAIRNBAK";
/// The version of this layout; a reader refuses any other.
pub const FORMAT_VERSION: u32 = 1;
const TRAILER: u32 = u32::MAX;
const TAG_TOMBSTONE: u8 = 0;
const TAG_VALUE: u8 = 1;
/// zstd level: fast, since backups run beside foreground traffic.
const LEVEL: i32 = 3;

/// One version of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: Vec<u8>,
    pub version: u64,
    /// `None` for a tombstone (the key was deleted at this version).
    pub value: Option<Vec<u8>>,
}

/// What a finished shard file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileStats {
    /// Distinct keys.
    pub keys: u64,
    /// Records (versions, tombstones included).
    pub versions: u64,
}

/// Writes one shard file, refusing records out of order.
pub struct ShardWriter<W: Write> {
    encoder: zstd::Encoder<'static, W>,
    last: Option<(Vec<u8>, u64)>,
    stats: FileStats,
}

impl<W: Write> ShardWriter<W> {
    pub fn new(out: W, shard: u32) -> Result<Self, BackupError> {
        let mut encoder = zstd::Encoder::new(out, LEVEL).map_err(BackupError::io("zstd"))?;
        encoder
            .include_checksum(true)
            .map_err(BackupError::io("zstd"))?;
        encoder.write_all(MAGIC).map_err(BackupError::io("write"))?;
        encoder
            .write_all(&FORMAT_VERSION.to_be_bytes())
            .map_err(BackupError::io("write"))?;
        encoder
            .write_all(&shard.to_be_bytes())
            .map_err(BackupError::io("write"))?;
        Ok(ShardWriter {
            encoder,
            last: None,
            stats: FileStats::default(),
        })
    }

    pub fn push(&mut self, record: &Record) -> Result<(), BackupError> {
        let new_key = match &self.last {
            None => true,
            Some((key, version)) => match key.as_slice().cmp(&record.key) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Equal if *version > record.version => false,
                _ => {
                    return Err(BackupError::Invalid(format!(
                        "records out of order at key {:?} version {}",
                        record.key, record.version
                    )))
                }
            },
        };
        let len = u32::try_from(record.key.len())
            .ok()
            .filter(|&l| l != TRAILER)
            .ok_or_else(|| BackupError::Invalid("key too long".into()))?;
        let w = &mut self.encoder;
        let io = BackupError::io("write");
        w.write_all(&len.to_be_bytes()).map_err(&io)?;
        w.write_all(&record.key).map_err(&io)?;
        w.write_all(&record.version.to_be_bytes()).map_err(&io)?;
        match &record.value {
            None => w.write_all(&[TAG_TOMBSTONE]).map_err(&io)?,
            Some(value) => {
                let vlen = u32::try_from(value.len())
                    .map_err(|_| BackupError::Invalid("value too long".into()))?;
                w.write_all(&[TAG_VALUE]).map_err(&io)?;
                w.write_all(&vlen.to_be_bytes()).map_err(&io)?;
                w.write_all(value).map_err(&io)?;
            }
        }
        self.stats.versions += 1;
        if new_key {
            self.stats.keys += 1;
        }
        self.last = Some((record.key.clone(), record.version));
        Ok(())
    }

    /// Write the trailer and end the frame.
    pub fn finish(mut self) -> Result<(W, FileStats), BackupError> {
        let io = BackupError::io("write");
        self.encoder
            .write_all(&TRAILER.to_be_bytes())
            .map_err(&io)?;
        self.encoder
            .write_all(&self.stats.versions.to_be_bytes())
            .map_err(&io)?;
        let out = self.encoder.finish().map_err(&io)?;
        Ok((out, self.stats))
    }
}

/// Reads a shard file back, checking its framing, order and trailer.
pub struct ShardReader<R: Read> {
    decoder: zstd::Decoder<'static, std::io::BufReader<R>>,
    shard: u32,
    last: Option<(Vec<u8>, u64)>,
    read: u64,
    done: bool,
}

impl<R: Read> ShardReader<R> {
    pub fn new(input: R) -> Result<Self, BackupError> {
        let mut decoder = zstd::Decoder::new(input).map_err(BackupError::io("zstd"))?;
        let mut header = [0u8; 16];
        decoder
            .read_exact(&mut header)
            .map_err(|_| BackupError::Corrupt("missing or short header".into()))?;
        if &header[..8] != MAGIC {
            return Err(BackupError::Corrupt("not a Cairn backup file".into()));
        }
        let version = u32::from_be_bytes(header[8..12].try_into().unwrap_or_default());
        if version != FORMAT_VERSION {
            return Err(BackupError::Corrupt(format!(
                "format version {version}; this build reads {FORMAT_VERSION}"
            )));
        }
        Ok(ShardReader {
            decoder,
            shard: u32::from_be_bytes(header[12..16].try_into().unwrap_or_default()),
            last: None,
            read: 0,
            done: false,
        })
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    fn exact<const N: usize>(&mut self, what: &str) -> Result<[u8; N], BackupError> {
        let mut buf = [0u8; N];
        self.decoder
            .read_exact(&mut buf)
            .map_err(|e| BackupError::Corrupt(format!("{what}: {e}")))?;
        Ok(buf)
    }

    /// `len` bytes. The buffer grows with what the file holds rather than being sized
    /// by `len`: a corrupt length (up to 4 GiB) must be an error, not an allocation.
    fn bytes(&mut self, len: u32, what: &str) -> Result<Vec<u8>, BackupError> {
        let mut buf = Vec::new();
        (&mut self.decoder)
            .take(u64::from(len))
            .read_to_end(&mut buf)
            .map_err(|e| BackupError::Corrupt(format!("{what}: {e}")))?;
        if buf.len() != len as usize {
            return Err(BackupError::Corrupt(format!(
                "{what}: the file ends {} bytes into {len}",
                buf.len()
            )));
        }
        Ok(buf)
    }

    /// The next record, or `None` after a valid trailer.
    pub fn next_record(&mut self) -> Result<Option<Record>, BackupError> {
        if self.done {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.exact::<4>("record (file truncated?)")?);
        if len == TRAILER {
            let count = u64::from_be_bytes(self.exact::<8>("trailer")?);
            if count != self.read {
                return Err(BackupError::Corrupt(format!(
                    "trailer counts {count} records, the file holds {}",
                    self.read
                )));
            }
            let mut rest = [0u8; 1];
            if self
                .decoder
                .read(&mut rest)
                .map_err(BackupError::io("read"))?
                != 0
            {
                return Err(BackupError::Corrupt("data after the trailer".into()));
            }
            self.done = true;
            return Ok(None);
        }
        let key = self.bytes(len, "key")?;
        let version = u64::from_be_bytes(self.exact::<8>("version")?);
        let value = match self.exact::<1>("tag")?[0] {
            TAG_TOMBSTONE => None,
            TAG_VALUE => {
                let vlen = u32::from_be_bytes(self.exact::<4>("value length")?);
                Some(self.bytes(vlen, "value")?)
            }
            tag => return Err(BackupError::Corrupt(format!("unknown record tag {tag}"))),
        };
        let in_order = match &self.last {
            None => true,
            Some((k, v)) => k < &key || (k == &key && *v > version),
        };
        if !in_order {
            return Err(BackupError::Corrupt(format!(
                "records out of order at record {}",
                self.read
            )));
        }
        self.read += 1;
        self.last = Some((key.clone(), version));
        Ok(Some(Record {
            key,
            version,
            value,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(records: &[Record]) -> (Vec<u8>, FileStats) {
        let mut w = ShardWriter::new(Vec::new(), 3).unwrap();
        for r in records {
            w.push(r).unwrap();
        }
        w.finish().unwrap()
    }

    fn read(bytes: &[u8]) -> Result<Vec<Record>, BackupError> {
        let mut r = ShardReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok(out)
    }

    fn sorted(mut records: Vec<Record>) -> Vec<Record> {
        records.sort_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
        records.dedup_by(|a, b| a.key == b.key && a.version == b.version);
        records
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..12), 1u64..50,
             proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))),
            0..60,
        )) {
            let records = sorted(records.into_iter()
                .map(|(key, version, value)| Record { key, version, value })
                .collect());
            let (bytes, stats) = write(&records);
            prop_assert_eq!(read(&bytes).unwrap(), records.clone());
            prop_assert_eq!(stats.versions, records.len() as u64);
        }
    }

    #[test]
    fn out_of_order_is_refused_on_write() {
        let mut w = ShardWriter::new(Vec::new(), 0).unwrap();
        let rec = |k: &str, v| Record {
            key: k.as_bytes().to_vec(),
            version: v,
            value: None,
        };
        w.push(&rec("b", 5)).unwrap();
        w.push(&rec("b", 3)).unwrap();
        assert!(w.push(&rec("b", 4)).is_err(), "older version first");
        assert!(w.push(&rec("a", 9)).is_err(), "smaller key later");
    }

    #[test]
    fn truncation_and_garbage_are_detected() {
        let records: Vec<Record> = (0..200)
            .map(|i| Record {
                key: format!("key/{i:05}").into_bytes(),
                version: 7,
                value: Some(vec![b'x'; 50]),
            })
            .collect();
        let (bytes, stats) = write(&records);
        assert_eq!(stats.keys, 200);
        assert!(read(&bytes[..bytes.len() - 10]).is_err(), "truncated frame");
        assert!(read(&bytes[..bytes.len() / 2]).is_err());
        assert!(read(b"not zstd at all").is_err());
        let mut flipped = bytes.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x40;
        assert!(
            read(&flipped).is_err(),
            "zstd's checksum catches a flipped byte"
        );
    }
}
