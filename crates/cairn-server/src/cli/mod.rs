//! The `cairn` binary's tooling commands, apart from the node itself: `bench` (a load
//! generator that prints figures), `backup` and `restore` (the backup catalog and
//! offline restore, on the command line), `certs` and `token` (a secured cluster's
//! certificates and tokens) and `client` (the HTTP API by hand). They reach a cluster
//! only through `cairn-client` or, for offline restore, the backup crate; none of
//! them runs inside a node.

pub mod backup;
pub mod bench;
pub mod certs;
pub mod client;
pub mod token;

/// Write `text` to a new file (never over an existing one), synced; with `secret`,
/// readable by its owner only (keys, tokens).
pub fn write_new(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {} (it must not exist yet)", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}
