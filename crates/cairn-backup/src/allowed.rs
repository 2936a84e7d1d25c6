//! Where a backup requested over the API may be written.
//!
//! A request names its destination, and the node creates directories and writes files
//! there with its own permissions. So, as CockroachDB confines `nodelocal` backups to
//! its external IO directory, a node writes only under the roots it was given: its
//! default destination, its schedules' destinations and the `--backup-allow` list
//! (`*` there allows anything, as the local `cairn dev` cluster does). Paths are
//! compared component by component after making them absolute, resolving `.` and `..`
//! lexically (so `/srv/backups/../etc` is not under `/srv/backups`), and then
//! resolving symbolic links in the part of each path that exists, at the moment of the
//! check (so a link inside a root that points out of it does not lead out).
//! `s3://bucket/prefix` URLs are compared by bucket and path segments.

use std::path::{Component, Path, PathBuf};

use crate::error::BackupError;

/// The roots backups may be written under.
#[derive(Debug, Clone, Default)]
pub struct AllowedDestinations {
    any: bool,
    roots: Vec<Root>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Root {
    Local(PathBuf),
    S3(Vec<String>),
}

fn root_of(url: &str) -> Option<Root> {
    match url.split_once("://") {
        None => Some(Root::Local(normalize(Path::new(url)))),
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
            Some(Root::Local(normalize(Path::new(rest))))
        }
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("s3") => Some(Root::S3(
            rest.split('/')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        )),
        Some(_) => None,
    }
}

/// Absolute, with `.` and `..` resolved without touching the file system.
fn normalize(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `path` (already normalized) with the symbolic links of its longest existing
/// ancestor resolved; the components that do not exist yet follow unchanged.
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (
            existing.file_name().map(|n| n.to_os_string()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

impl AllowedDestinations {
    /// Allow `roots` (destinations in any form `Destination::parse` takes); `*` allows
    /// every destination.
    pub fn new<'a>(roots: impl IntoIterator<Item = &'a str>) -> AllowedDestinations {
        let mut allowed = AllowedDestinations::default();
        for root in roots {
            if root.trim() == "*" {
                allowed.any = true;
            } else if let Some(root) = root_of(root.trim()) {
                allowed.roots.push(root);
            }
        }
        allowed
    }

    /// These roots and `more`.
    pub fn with<'a>(&self, more: impl IntoIterator<Item = &'a str>) -> AllowedDestinations {
        let mut allowed = AllowedDestinations::new(more);
        allowed.any |= self.any;
        allowed.roots.extend(self.roots.iter().cloned());
        allowed
    }

    /// `Ok` if a backup may be written to `url`; `NotAllowed` naming the roots if not.
    pub fn check(&self, url: &str) -> Result<(), BackupError> {
        if self.any {
            return Ok(());
        }
        let permitted = match root_of(url) {
            Some(Root::Local(path)) => {
                let path = resolve(&path);
                self.roots
                    .iter()
                    .any(|r| matches!(r, Root::Local(root) if path.starts_with(resolve(root))))
            }
            Some(Root::S3(segments)) => self
                .roots
                .iter()
                .any(|r| matches!(r, Root::S3(root) if segments.starts_with(root))),
            None => {
                return Err(BackupError::Invalid(format!(
                    "backup destination {url:?}: unsupported scheme (a directory path, file:///absolute/path, or s3://bucket[/prefix])"
                )))
            }
        };
        if permitted {
            return Ok(());
        }
        let roots: Vec<String> = self
            .roots
            .iter()
            .map(|r| match r {
                Root::Local(p) => p.display().to_string(),
                Root::S3(s) => format!("s3://{}", s.join("/")),
            })
            .collect();
        Err(BackupError::NotAllowed(format!(
            "backup destination {url:?} is outside the allowed roots {roots:?} (--backup-allow)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_and_buckets_under_a_root_are_allowed() {
        let allowed =
            AllowedDestinations::new(["/srv/backups", "s3://prod/cairn", "file:///mnt/b"]);
        for ok in [
            "/srv/backups",
            "/srv/backups/daily",
            "file:///srv/backups/x",
            "/srv/backups/./a/../b",
            "/mnt/b/1",
            "s3://prod/cairn",
            "s3://prod/cairn/2026/",
        ] {
            assert!(allowed.check(ok).is_ok(), "{ok}");
        }
        for refused in [
            "/srv/backups-evil",
            "/srv/backups/../etc",
            "/etc",
            "s3://prod",
            "s3://prod/cairnx",
            "s3://other/cairn",
            "",
        ] {
            assert!(
                matches!(allowed.check(refused), Err(BackupError::NotAllowed(_))),
                "{refused}"
            );
        }
        assert!(matches!(
            allowed.check("gs://prod/cairn"),
            Err(BackupError::Invalid(_))
        ));
        assert!(AllowedDestinations::new(["*"]).check("/anywhere").is_ok());
        assert!(AllowedDestinations::new(Vec::<&str>::new())
            .check("/tmp/x")
            .is_err());
    }

    /// A link inside a root that points out of it does not make its target allowed.
    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_out_of_a_root_leads_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("backups");
        let outside = dir.path().join("etc");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
        let allowed = AllowedDestinations::new([root.to_str().unwrap()]);
        assert!(allowed
            .check(root.join("nightly/new").to_str().unwrap())
            .is_ok());
        let escape = root.join("escape/x");
        assert!(
            matches!(
                allowed.check(escape.to_str().unwrap()),
                Err(BackupError::NotAllowed(_))
            ),
            "a link out of the root was followed"
        );
        // A root reached through a link is still the root.
        std::os::unix::fs::symlink(&root, dir.path().join("alias")).unwrap();
        assert!(allowed
            .check(dir.path().join("alias/daily").to_str().unwrap())
            .is_ok());
    }

    #[test]
    fn relative_paths_are_taken_from_the_working_directory() {
        let allowed = AllowedDestinations::new(["./backups"]);
        assert!(allowed.check("backups/nightly").is_ok());
        assert!(allowed.check("./backups/../backups2").is_err());
    }
}
