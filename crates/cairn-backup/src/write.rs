//! Writing a backup: shard files first, the manifest last.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::{Record, ShardWriter};
use crate::manifest::{FileEntry, Manifest, MANIFEST};
use crate::seal::{BackupKey, Sealing};

/// Limits how fast backups read, so they never crowd out foreground traffic: after
/// each record, the reader sleeps until the readers sharing the throttle are back
/// under `bytes_per_sec` together. Clones share one budget: a node gives every backup
/// it runs a clone of its one throttle, so two backups at once read at the rate, not
/// twice it.
#[derive(Debug, Clone)]
pub struct Throttle {
    bytes_per_sec: Option<u64>,
    budget: Arc<Mutex<Budget>>,
}

/// Bytes read since `start` by every holder of the throttle.
#[derive(Debug)]
struct Budget {
    start: Instant,
    bytes: u64,
}

/// Idle time a throttle forgives: after a pause longer than this behind the rate,
/// reading starts afresh rather than bursting to catch up.
const IDLE_FORGIVEN: Duration = Duration::from_secs(1);

impl Throttle {
    /// `None`: unlimited.
    pub fn new(bytes_per_sec: Option<u64>) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.filter(|&r| r > 0),
            budget: Arc::new(Mutex::new(Budget {
                start: Instant::now(),
                bytes: 0,
            })),
        }
    }

    /// Account for `bytes` read; blocks the (blocking) thread if ahead of the rate.
    pub fn charge(&mut self, bytes: u64) {
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let ahead = {
            // The budget is two numbers; a panic cannot leave them half-written.
            let mut budget = self.budget.lock().unwrap_or_else(|p| p.into_inner());
            let due = Duration::from_secs_f64(budget.bytes as f64 / rate as f64);
            if budget.start.elapsed() > due + IDLE_FORGIVEN {
                budget.start = Instant::now();
                budget.bytes = 0;
            }
            budget.bytes += bytes;
            let due = Duration::from_secs_f64(budget.bytes as f64 / rate as f64);
            due.saturating_sub(budget.start.elapsed())
        };
        // Sleep in slices of at least 10 ms so the throttle itself costs nothing.
        if ahead > Duration::from_millis(10) {
            std::thread::sleep(ahead);
        }
    }
}

/// The name of shard `shard`'s file inside a backup.
pub fn shard_file_name(shard: u32) -> String {
    format!("shard-{shard}.cbk")
}

/// Counts and hashes what passes through it, so a file's manifest entry (size,
/// BLAKE3) is known the moment its last byte is written, without holding the file.
pub struct Hashed<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Hashed<W> {
    pub fn new(inner: W) -> Hashed<W> {
        Hashed {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Carries a file's bytes, in parts of a fixed size, from the thread that encodes it
/// to the task that uploads it. The channel is bounded, so the encoder runs at most
/// [`PARTS_AHEAD`] parts ahead of the upload: memory stays a few parts, whatever the
/// shard's size.
pub struct PartSink {
    part: usize,
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
}

/// Parts an encoder may have finished that the upload has not taken yet.
pub const PARTS_AHEAD: usize = 2;

impl PartSink {
    /// A sink cutting `part`-byte parts, and the receiving end for the upload.
    pub fn new(part: usize) -> (PartSink, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(PARTS_AHEAD);
        let sink = PartSink {
            part: part.max(1),
            buf: Vec::new(),
            tx,
        };
        (sink, rx)
    }

    /// Hand on the last, possibly short, part. Dropping the sink then ends the stream.
    pub fn close(mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.send()
    }

    fn send(&mut self) -> std::io::Result<()> {
        let part = std::mem::take(&mut self.buf);
        // Fails only when the upload stopped (its error is the one to report).
        self.tx
            .blocking_send(Bytes::from(part))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.part);
        }
        let n = (self.part - self.buf.len()).min(buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == self.part {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Encode one shard's records (sorted, as the MVCC tree yields them) into a shard
/// file written to `out`, charging `throttle` for what it reads, sealed under `key`
/// if given (bound to the file's place, `<backup id>/shard-<n>.cbk`, named by
/// `backup_id`). Returns `out` and the file's manifest entry, whose size and BLAKE3
/// are of the bytes stored. Blocking: run it off the async runtime.
pub fn encode_shard<W: Write>(
    shard: u32,
    records: impl IntoIterator<Item = Result<Record, BackupError>>,
    throttle: &mut Throttle,
    out: W,
    seal: Option<(&BackupKey, &str)>,
) -> Result<(W, FileEntry), BackupError> {
    let place = seal.map(|(_, id)| format!("{id}/{}", shard_file_name(shard)));
    let sealing = Sealing::new(
        Hashed::new(out),
        seal.map(|(key, _)| key),
        place.as_deref().unwrap_or_default(),
    )
    .map_err(BackupError::io("encrypt"))?;
    let mut writer = ShardWriter::new(sealing, shard)?;
    for record in records {
        let record = record?;
        throttle.charge((record.key.len() + record.value.as_ref().map_or(0, Vec::len) + 13) as u64);
        writer.push(&record)?;
    }
    let (sealing, stats) = writer.finish()?;
    let hashed = sealing.finish().map_err(BackupError::io("encrypt"))?;
    let entry = FileEntry {
        path: shard_file_name(shard),
        shard,
        bytes: hashed.bytes,
        blake3: hashed.hasher.finalize().to_hex().to_string(),
        keys: stats.keys,
        versions: stats.versions,
    };
    Ok((hashed.inner, entry))
}

/// Encode one shard file into a sink, closing it after the last part (the blocking
/// half of a streamed shard file; the async half pushes the parts into an
/// [`Upload`](crate::destination::Upload)).
pub fn encode_shard_into(
    shard: u32,
    records: impl IntoIterator<Item = Result<Record, BackupError>>,
    throttle: &mut Throttle,
    sink: PartSink,
    seal: Option<(&BackupKey, &str)>,
) -> Result<FileEntry, BackupError> {
    let (sink, entry) = encode_shard(shard, records, throttle, sink, seal)?;
    sink.close().map_err(BackupError::io("write"))?;
    Ok(entry)
}

/// Encode one shard's records (sorted) and stream them to `{backup_id}/shard-{n}.cbk`
/// in parts of `part` bytes.
pub async fn put_shard_file(
    dest: &Destination,
    backup_id: &str,
    shard: u32,
    records: impl IntoIterator<Item = Record> + Send + 'static,
    part: usize,
) -> Result<FileEntry, BackupError> {
    let (sink, mut parts) = PartSink::new(part);
    let encoder = tokio::task::spawn_blocking(move || {
        encode_shard_into(
            shard,
            records.into_iter().map(Ok),
            &mut Throttle::new(None),
            sink,
            None,
        )
    });
    let mut upload = dest.upload(&format!("{backup_id}/{}", shard_file_name(shard)), part);
    while let Some(part) = parts.recv().await {
        if let Err(e) = upload.push(part).await {
            upload.abort().await;
            return Err(e);
        }
    }
    let entry = match encoder.await {
        Ok(Ok(entry)) => entry,
        Ok(Err(e)) => {
            upload.abort().await;
            return Err(e);
        }
        Err(e) => {
            upload.abort().await;
            return Err(BackupError::Invalid(format!("backup encoder: {e}")));
        }
    };
    upload.finish().await?;
    Ok(entry)
}

/// Publish a backup: store its manifest. Call only after every file it names is
/// stored; until then the backup does not exist.
pub async fn put_manifest(dest: &Destination, manifest: &Manifest) -> Result<(), BackupError> {
    let name = format!("{}/{MANIFEST}", manifest.backup_id);
    dest.put(&name, manifest.to_json()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two backups charging clones of one throttle read at its rate together: half a
    /// megabyte at 1 MB/s takes half a second, not the quarter each alone would.
    /// (A lower bound: a slow machine only makes it longer.)
    #[test]
    fn clones_share_one_budget() {
        let throttle = Throttle::new(Some(1_000_000));
        let started = Instant::now();
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let mut throttle = throttle.clone();
                std::thread::spawn(move || {
                    for _ in 0..25 {
                        throttle.charge(10_000);
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.join().unwrap();
        }
        assert!(
            started.elapsed() >= Duration::from_millis(450),
            "two readers took {:?} for 500 kB at 1 MB/s",
            started.elapsed()
        );
    }
}
