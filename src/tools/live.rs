//! `layerfs explain PATH` on a path inside a live layerfs mount.
//!
//! The mount is the layerfs entry (type `fuse.layerfs`, or `fuse` from source `layerfs`) of `/proc/self/mountinfo` whose device is the
//! device of PATH's directory. Its daemon is the `layerfs` process whose command line
//! (`/proc/PID/cmdline`, parsed with the daemon's own option parser, relative paths
//! resolved against the daemon's working directory `/proc/PID/cwd`) names a mountpoint with
//! that same device. The command line is the daemon's whole configuration (layers, id
//! mappings, override_stat, redirect_dir), so the answer comes from the same layers read the
//! same way; nothing needs to be published by the daemon, and daemons started by podman
//! (relative `l/...` lowerdirs in the storage directory) are found as well. Its workdir's
//! hard-link index is consulted read-only.

use super::{explain, open_stack_opts};
use crate::daemon::unescape_mountinfo;
use crate::error::{Error, Result};
use crate::options::{self, Command, Options};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A layerfs mount from mountinfo: (mount point, device).
pub(crate) fn layerfs_mounts() -> Vec<(PathBuf, u64)> {
    let mut v = Vec::new();
    let Ok(mi) = std::fs::read("/proc/self/mountinfo") else {
        return v;
    };
    for line in mi.split(|&b| b == b'\n') {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let Some(sep) = f.iter().position(|x| *x == b"-") else {
            continue;
        };
        // `fuse.layerfs`, or `fuse` with source `layerfs` (mounted without a subtype)
        let fstype = f.get(sep + 1).copied().unwrap_or_default();
        let source = f.get(sep + 2).copied().unwrap_or_default();
        let ours =
            fstype == b"fuse.layerfs" || (fstype.starts_with(b"fuse") && source == b"layerfs");
        if !ours || f.len() < 5 {
            continue;
        }
        let Some((maj, min)) = std::str::from_utf8(f[2])
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        else {
            continue;
        };
        v.push((
            PathBuf::from(OsString::from_vec(unescape_mountinfo(f[4]))),
            crate::sys::makedev(maj, min),
        ));
    }
    v
}

/// The daemon serving the mount on `mnt` with device `dev`: (pid, its options). Daemons
/// whose mountpoint is `mnt` are checked first, so that other mounts (whose daemons may be
/// stuck) are only stat()ed when none matches by path.
pub(crate) fn find_daemon(dev: u64, mnt: &Path) -> Option<(i32, Options)> {
    let mut cands = daemons();
    cands.sort_by_key(|(_, o)| o.mountpoint != mnt);
    cands
        .into_iter()
        .find(|(_, o)| std::fs::metadata(&o.mountpoint).is_ok_and(|m| m.dev() == dev))
}

/// Every running layerfs daemon (this user can see) with its options, relative paths
/// resolved against its working directory.
pub(crate) fn daemons() -> Vec<(i32, Options)> {
    let here = std::env::current_dir().ok();
    let mut cands: Vec<(i32, Options)> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return cands;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let mut args: Vec<OsString> = cmd
            .split(|&b| b == 0)
            .map(|a| OsString::from_vec(a.to_vec()))
            .collect();
        if args.last().is_some_and(|a| a.is_empty()) {
            args.pop();
        }
        let is_layerfs = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .is_some_and(|n| n == "layerfs");
        if !is_layerfs || args.len() < 2 {
            continue;
        }
        if args[1]
            .to_str()
            .is_some_and(|a| super::SUBCOMMANDS.contains(&a))
        {
            continue;
        }
        // Resolve the daemon's relative paths against its working directory.
        let cwd = e.path().join("cwd");
        let real = std::fs::read_link(&cwd).ok().filter(|r| {
            matches!((std::fs::metadata(r), std::fs::metadata(&cwd)),
                (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
        });
        if std::env::set_current_dir(real.as_ref().unwrap_or(&cwd)).is_err() {
            continue;
        }
        if let Ok(Command::Mount(opts)) = options::parse_args(args.into_iter().skip(1)) {
            cands.push((pid, opts));
        }
    }
    if let Some(h) = here {
        let _ = std::env::set_current_dir(h);
    }
    cands
}

/// Explain `path` (inside a live layerfs mount) from the layers of the daemon serving it.
pub fn explain_mounted(path: &Path, json: bool) -> Result<i32> {
    let abs = std::path::absolute(path)
        .map_err(|e| Error::from_errno(libc::EINVAL).context(e.to_string()))?;
    // The last component is explained itself (a symlink is not followed); its parent is
    // resolved by the kernel.
    let (dir, last) = match (abs.parent(), abs.file_name()) {
        (Some(p), Some(n)) => (p.to_path_buf(), Some(n.to_os_string())),
        _ => (abs.clone(), None),
    };
    let dir = std::fs::canonicalize(&dir).map_err(|e| {
        Error::from_errno(e.raw_os_error().unwrap_or(libc::ENOENT))
            .context(format!("{}", dir.display()))
    })?;
    let dev_of = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    let mounts = layerfs_mounts();
    let inside = |p: &Path, dev: Option<u64>| {
        mounts
            .iter()
            .rev()
            .find(|(m, d)| Some(*d) == dev && p.starts_with(m))
            .cloned()
    };
    let (mnt, dev, dir, last) = match inside(&dir, dev_of(&dir)) {
        Some((m, d)) => (m, d, dir, last),
        // PATH may be the mount's root itself
        None => match std::fs::canonicalize(&abs)
            .ok()
            .and_then(|root| inside(&root, dev_of(&root)).map(|x| (x, root)))
        {
            Some(((m, d), root)) if root == m => (m, d, root, None),
            _ => {
                eprintln!(
                    "layerfs explain: {} is not inside a layerfs mount (give --lowerdir to explain a path in layer directories)",
                    path.display()
                );
                return Ok(2);
            }
        },
    };
    let Some((pid, opts)) = find_daemon(dev, &mnt) else {
        eprintln!(
            "layerfs explain: no layerfs daemon found for the mount on {} (is it in another PID namespace?)",
            mnt.display()
        );
        return Ok(2);
    };
    let mut rel = dir
        .strip_prefix(&mnt)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    if let Some(l) = last {
        rel.push(l);
    }
    let rel = Path::new("/").join(rel);
    let workdir = opts.workdir.clone();
    if !json {
        let lowers: Vec<String> = opts
            .lowerdirs
            .iter()
            .map(|l| l.display().to_string())
            .collect();
        println!(
            "mount {} served by layerfs pid {pid}: lowerdir={}{}",
            mnt.display(),
            lowers.join(":"),
            opts.upperdir
                .as_ref()
                .map(|u| format!(" upperdir={}", u.display()))
                .unwrap_or_default()
        );
    }
    match open_stack_opts(opts, workdir.as_deref()) {
        Ok(ov) => explain(&ov, &rel, json, Some((&mnt, pid))),
        Err(e) => {
            eprintln!("layerfs explain: the layers of layerfs pid {pid}: {e}");
            Ok(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(b"/a\\040b\\011c"), b"/a b\tc");
        assert_eq!(unescape_mountinfo(b"/x\\134"), b"/x\\");
        assert_eq!(unescape_mountinfo(b"/short\\04"), b"/short\\04");
    }
}
