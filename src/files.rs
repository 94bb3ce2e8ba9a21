//! Files the gateway writes for itself (its secret, the development
//! certificate, the outbox's mail), in directories of its own, written whole
//! or not at all: a crash mid-write must never leave a truncated file that
//! stops the next start (catalogue K1). Each goes to a temporary file beside
//! the target, is synced, then linked or renamed into place, and the
//! directory is synced so the name survives too.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// What to do when the target already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfExists {
    /// Leave it: another process created it first, and its contents win.
    Keep,
    Replace,
}

/// Writes `contents` to `path` with permission bits `mode`. Returns false
/// when `path` existed and `IfExists::Keep` left it alone.
pub fn write_whole(
    path: &Path,
    contents: &[u8],
    mode: u32,
    if_exists: IfExists,
) -> io::Result<bool> {
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    private_dir(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.as_file().sync_all()?;
    let written = match if_exists {
        IfExists::Replace => file.persist(path).map(|_| true).map_err(|e| e.error)?,
        // A hard link, which fails rather than replace a file created meanwhile.
        IfExists::Keep => match file.persist_noclobber(path) {
            Ok(_) => true,
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(e.error),
        },
    };
    std::fs::File::open(dir)?.sync_all()?;
    Ok(written)
}

/// Creates `dir` and any missing parents for the gateway's user alone
/// (0700): what the gateway keeps (its secret, the member database, mail
/// with sign-in links) is nobody else's to list or read. Existing
/// directories keep their permissions.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_leaves_an_existing_file_and_replace_overwrites_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret");
        assert!(write_whole(&path, b"first", 0o600, IfExists::Keep).unwrap());
        assert!(!write_whole(&path, b"second", 0o600, IfExists::Keep).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(write_whole(&path, b"third", 0o644, IfExists::Replace).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"third");
        // Only the target is left: no temporary files beside it.
        assert_eq!(
            std::fs::read_dir(dir.path().join("sub")).unwrap().count(),
            1
        );
        let mode = std::fs::metadata(dir.path().join("sub"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
