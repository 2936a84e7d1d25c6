//! Oracle of the `shard_file` target: the shard-file reader (`ShardReader`) and the
//! verifier's per-file check (`verify::check_stream`, fed in chunks), which restore
//! and verify run on every downloaded file.
//!
//! The first byte picks what the rest is: the stored file itself (mostly not zstd,
//! which exercises the frame checks), or the decompressed payload, which the oracle
//! compresses as the writer does so the fuzzer reaches the record parser. Neither
//! ever panics or allocates what the file does not hold; a file the reader accepts
//! holds sorted records that write back to the same records; and the verifier, given
//! the file's true size and BLAKE3, agrees with the reader, naming the file when it
//! refuses it.

use std::io::Write;
use std::sync::OnceLock;

use cairn_backup::verify::check_bytes;
use cairn_backup::{BackupError, FileEntry, Record, ShardReader, ShardWriter};

use crate::input::Input;

const NAME: &str = "20261123T153001Z-000007/shard-3.cbk";

pub fn check(data: &[u8]) {
    let mut input = Input::new(data);
    let compress = input.bool();
    let body = input.rest();
    let file = if compress {
        zstd_frame(body)
    } else {
        body.to_vec()
    };

    let read = read_all(&file);
    if let Ok((shard, records)) = &read {
        for pair in records.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(a.key < b.key || (a.key == b.key && a.version > b.version));
        }
        let mut writer = ShardWriter::new(Vec::new(), *shard).expect("writer");
        for record in records {
            writer.push(record).expect("accepted records are in order");
        }
        let (rewritten, stats) = writer.finish().expect("finish");
        assert_eq!(stats.versions, records.len() as u64);
        let (again_shard, again) = read_all(&rewritten).expect("a rewritten file reads");
        assert_eq!((again_shard, &again), (*shard, records));
    }

    let entry = FileEntry {
        path: "shard-3.cbk".into(),
        shard: read.as_ref().map(|(s, _)| *s).unwrap_or(3),
        bytes: file.len() as u64,
        blake3: blake3::hash(&file).to_hex().to_string(),
        keys: 0,
        versions: read.as_ref().map(|(_, r)| r.len() as u64).unwrap_or(0),
    };
    let verified = runtime().block_on(check_bytes(NAME, file.into(), &entry));
    match (&read, verified) {
        (Ok((_, records)), Ok(versions)) => assert_eq!(versions, records.len() as u64),
        (Err(_), Err(BackupError::BadFile { file, .. })) => assert_eq!(file, NAME),
        (read, verified) => panic!("reader says {read:?}, verifier says {verified:?}"),
    }
}

fn read_all(file: &[u8]) -> Result<(u32, Vec<Record>), BackupError> {
    let mut reader = ShardReader::new(file)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok((reader.shard(), records))
}

/// `payload` as the writer frames it: one zstd frame with a content checksum.
fn zstd_frame(payload: &[u8]) -> Vec<u8> {
    let mut encoder = zstd::Encoder::new(Vec::new(), 1).expect("zstd encoder");
    encoder.include_checksum(true).expect("zstd checksum");
    encoder.write_all(payload).expect("zstd write");
    encoder.finish().expect("zstd finish")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime")
    })
}
