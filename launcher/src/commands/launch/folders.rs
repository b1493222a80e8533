//! The launcher's private folder, `$TMPDIR/clipfleet-launch-<pid>` (`/tmp/…` by default): one
//! sub-folder per attempt for the workers' error files (`attempt-<n>`, `CLIPFLEET_ERROR_DIR`) and
//! `nccl/` for the `libnccl.so` link that goes first on the workers' `LD_LIBRARY_PATH`.
//!
//! The name is predictable, so on a shared host another user could create it first and plant a
//! library in it or read and forge error files. The folder is therefore made with mode 0700 and
//! checked without following links ([`create_private_dir`]): a folder of this name that is a
//! symbolic link, not a folder, owned by another user or writable by group or others is refused,
//! never used. The launcher removes the folder when it returns.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Mode bits that let the group or others change a folder's entries.
const GROUP_OR_OTHER_WRITE: u32 = 0o022;

/// What to do when a folder is refused.
const ADVICE: &str = "remove it (as its owner or root) or set TMPDIR to a folder only you can write, then launch again";

/// The launcher's private folder; removed when dropped.
pub(super) struct LaunchFolder {
    root: PathBuf,
}

impl LaunchFolder {
    /// Makes `$TMPDIR/clipfleet-launch-<pid>`, private to this user ([`create_private_dir`]).
    pub(super) fn create() -> Result<Self> {
        Self::create_at(std::env::temp_dir().join(format!("clipfleet-launch-{}", std::process::id())))
    }

    /// Makes the private folder `root`.
    fn create_at(root: PathBuf) -> Result<Self> {
        create_private_dir(&root)?;
        Ok(Self { root })
    }

    /// A fresh folder (mode 0700) for the error files of attempt `restart`.
    pub(super) fn attempt(&self, restart: u32) -> Result<PathBuf> {
        self.sub_folder(&format!("attempt-{restart}"))
    }

    /// A fresh folder (mode 0700) for the `libnccl.so` link.
    pub(super) fn nccl(&self) -> Result<PathBuf> {
        self.sub_folder("nccl")
    }

    /// Makes `name` inside the private folder; it cannot exist yet, as only this user can write
    /// there.
    fn sub_folder(&self, name: &str) -> Result<PathBuf> {
        let dir = self.root.join(name);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }
}

impl Drop for LaunchFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Makes `path` a new folder with mode 0700 owned by the effective user.
///
/// An existing entry is inspected without following links: a private folder of this user is the
/// leftover of a dead launcher whose pid this one reuses, holds nothing of ours, and is replaced;
/// anything else (a symbolic link, a file, a folder of another user or one writable by group or
/// others) is refused with an error naming the path, what was found and what to do.
pub(super) fn create_private_dir(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => {
            check_private_dir(path)?;
            std::fs::remove_dir_all(path).with_context(|| format!("removing the stale folder {}", path.display()))?;
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    }
    // mkdir fails if anything appeared at `path` in the meantime: the folder is ours from the start.
    std::fs::DirBuilder::new().mode(0o700).create(path).with_context(|| format!("creating {}", path.display()))?;
    check_private_dir(path)?;
    let mode = std::fs::symlink_metadata(path).with_context(|| format!("inspecting {}", path.display()))?.mode();
    if mode & 0o777 != 0o700 {
        // A umask cannot add bits, only clear them; restore the owner's.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting the mode of {} to 700", path.display()))?;
    }
    Ok(())
}

/// Checks, without following links, that `path` is a folder owned by the effective user that
/// neither its group nor others can write.
fn check_private_dir(path: &Path) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).with_context(|| format!("inspecting {}", path.display()))?;
    let shown = path.display();
    let mode = meta.mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_else(|e| format!("? ({e})"));
        bail!(
            "refusing {shown} as the launcher's private folder: it is a symbolic link (to {target}, owner uid {}), \
             not a folder, and may point at files of another user; {ADVICE}",
            meta.uid()
        );
    }
    if !meta.is_dir() {
        bail!(
            "refusing {shown} as the launcher's private folder: it exists and is not a folder (owner uid {}, mode {mode:o}); \
             {ADVICE}",
            meta.uid()
        );
    }
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        bail!(
            "refusing {shown} as the launcher's private folder: it belongs to uid {}, not to you (uid {me}), mode {mode:o}, \
             so another user may have planted files in it; {ADVICE}",
            meta.uid()
        );
    }
    if mode & GROUP_OR_OTHER_WRITE != 0 {
        bail!(
            "refusing {shown} as the launcher's private folder: its mode {mode:o} (owner uid {}) lets other users write \
             into it; {ADVICE}",
            meta.uid()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn refusal(path: &Path) -> String {
        let err = create_private_dir(path).expect_err("the folder should be refused");
        let msg = format!("{err:#}");
        assert!(msg.contains(&path.display().to_string()), "the error does not name the path: {msg}");
        assert!(msg.contains("TMPDIR"), "the error does not say what to do: {msg}");
        msg
    }

    #[test]
    fn a_fresh_private_folder_is_made_0700_and_owned_by_the_user() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        create_private_dir(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.is_dir());
        assert_eq!(mode_of(&path), 0o700);
        assert_eq!(meta.uid(), unsafe { libc::geteuid() });
    }

    #[test]
    fn a_stale_private_folder_of_the_user_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        std::fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        std::fs::write(path.join("rank-0.json"), b"{}").unwrap();
        create_private_dir(&path).unwrap();
        assert_eq!(mode_of(&path), 0o700);
        assert!(!path.join("rank-0.json").exists(), "the old launcher's files are left");
    }

    #[test]
    fn a_world_writable_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(path.join("libnccl.so"), b"planted").unwrap();
        let msg = refusal(&path);
        assert!(msg.contains("mode 777"), "{msg}");
        assert!(path.join("libnccl.so").exists(), "a refused folder is left alone");
        // Group-writable alone is refused too.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(refusal(&path).contains("mode 770"));
    }

    #[test]
    fn a_symlink_in_place_of_the_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::DirBuilder::new().mode(0o700).create(&target).unwrap();
        std::fs::write(target.join("keep"), b"").unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        let msg = refusal(&path);
        assert!(msg.contains("symbolic link"), "{msg}");
        assert!(target.join("keep").exists(), "the link's target was touched");
        assert!(std::fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_folder_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        std::fs::DirBuilder::new().mode(0o700).create(&path).unwrap();
        if let Err(e) = std::os::unix::fs::chown(&path, Some(65534), Some(65534)) {
            eprintln!("SKIPPED: cannot give a folder to uid 65534 without root ({e})");
            return;
        }
        let msg = refusal(&path);
        assert!(msg.contains("belongs to uid 65534"), "{msg}");
        assert_eq!(std::fs::symlink_metadata(&path).unwrap().uid(), 65534, "a refused folder is left alone");
    }

    #[test]
    fn a_file_in_place_of_the_folder_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("clipfleet-launch-1");
        std::fs::write(&path, b"").unwrap();
        assert!(refusal(&path).contains("not a folder"));
    }

    #[test]
    fn the_launch_folder_holds_private_sub_folders_and_is_removed_on_drop() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("clipfleet-launch-1");
        let folder = LaunchFolder::create_at(root.clone()).unwrap();
        let attempt = folder.attempt(0).unwrap();
        let nccl = folder.nccl().unwrap();
        assert_eq!(attempt, root.join("attempt-0"));
        assert_eq!(nccl, root.join("nccl"));
        for dir in [&root, &attempt, &nccl] {
            assert_eq!(mode_of(dir), 0o700, "{}", dir.display());
        }
        drop(folder);
        assert!(!root.exists(), "the launch folder is left behind");
    }
}
