//! `layerfs import`: unpack an OCI image layer tar (plain, gzip or zstd, detected from its
//! first bytes) into a directory, as a lower layer in the formats layerfs reads fastest:
//! - a whiteout `.wh.NAME` becomes a character device 0/0 named NAME (found by the one
//!   lookup of NAME itself) where mknod is allowed, else stays a `.wh.NAME` file;
//! - `.wh..wh..opq` becomes `trusted.overlay.opaque=y` (the first xattr layerfs checks),
//!   else `user.overlay.opaque=y`, else stays a `.wh..wh..opq` file.
//!
//! Hostile tars cannot write outside the directory: leading `/` is stripped, `..`
//! components are refused, every parent directory is opened one component at a time
//! without following symlinks (a symlink where a parent should be is an error), hard-link
//! targets are resolved the same way, and private overlay xattrs in the tar are dropped
//! (they would change how layerfs reads the layer).

use super::export::io_err;
use crate::error::{Error, Result};
use crate::overlay::{bstr, remove_contents};
use crate::sys;
use crate::whiteout;
use std::io::{BufRead, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

#[derive(Debug, Default)]
pub struct Summary {
    pub entries: u64,
    pub whiteouts_chardev: u64,
    pub whiteouts_file: u64,
    pub opaque_xattr: u64,
    pub opaque_file: u64,
    pub hard_links: u64,
    pub skipped: Vec<String>,
}

/// Split a tar entry path into safe components (leading `/` and `.` dropped); `..` refused.
pub fn safe_components(p: &[u8]) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(Error::from_errno(libc::EPERM)
                    .context(format!("tar entry {:?} climbs out with '..'", bstr(p))))
            }
            c if c.contains(&0) => {
                return Err(Error::from_errno(libc::EINVAL)
                    .context(format!("tar entry {:?} has a NUL byte", bstr(p))))
            }
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Open (creating missing ones with mode 0755) the directories `comps` below `root`, one
/// component at a time, never following a symlink.
fn open_parents(root: &OwnedFd, comps: &[Vec<u8>], create: bool) -> Result<OwnedFd> {
    let mut cur = sys::dup(root.as_fd())?;
    for c in comps {
        let next = match sys::openat(cur.as_fd(), c, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(e) if e.is(libc::ENOENT) && create => {
                sys::mkdirat(cur.as_fd(), c, 0o755)?;
                sys::openat(cur.as_fd(), c, libc::O_RDONLY | libc::O_DIRECTORY, 0)?
            }
            Err(e) if e.is(libc::ELOOP) || e.is(libc::ENOTDIR) => {
                return Err(Error::from_errno(libc::ENOTDIR).context(format!(
                    "{:?} is a symlink or not a directory in the target",
                    bstr(c)
                )))
            }
            r => r?,
        };
        cur = next;
    }
    Ok(cur)
}

/// Remove `name` in `dir` whatever it is (a directory with its contents).
fn remove_any(dir: &OwnedFd, name: &[u8]) -> Result<()> {
    match sys::fstatat(dir.as_fd(), name) {
        Err(e) if e.is(libc::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if st.is_dir() => {
            let sub = sys::openat(dir.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
            remove_contents(&sub)?;
            sys::unlinkat(dir.as_fd(), name, true)
        }
        Ok(_) => sys::unlinkat(dir.as_fd(), name, false),
    }
}

struct Importer {
    root: OwnedFd,
    root_user: bool,
    chardev_ok: Option<bool>,
    /// 0 = trusted, 1 = user, 2 = marker file
    opaque_fmt: Option<u8>,
    /// directories whose mode and times are set at the end: (path comps, mode, mtime)
    dirs: Vec<(Vec<Vec<u8>>, u32, i64)>,
    sum: Summary,
}

impl Importer {
    fn whiteout(&mut self, dir: &OwnedFd, name: &[u8]) -> Result<()> {
        remove_any(dir, name)?;
        let _ = sys::unlinkat(dir.as_fd(), &whiteout::whiteout_name(name), false);
        if self.chardev_ok != Some(false) {
            match sys::mknodat(dir.as_fd(), name, libc::S_IFCHR, 0) {
                Ok(()) => {
                    self.chardev_ok = Some(true);
                    self.sum.whiteouts_chardev += 1;
                    return Ok(());
                }
                Err(e) if e.is(libc::EPERM) || e.is(libc::EACCES) => self.chardev_ok = Some(false),
                Err(e) => return Err(e),
            }
        }
        let wh = whiteout::whiteout_name(name);
        sys::openat(
            dir.as_fd(),
            &wh,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )?;
        self.sum.whiteouts_file += 1;
        Ok(())
    }

    fn opaque(&mut self, dir: &OwnedFd) -> Result<()> {
        let tries: [(u8, &[u8]); 2] = [(0, b"trusted.overlay.opaque"), (1, b"user.overlay.opaque")];
        for (fmt, x) in tries {
            if self.opaque_fmt.is_some_and(|f| f > fmt) {
                continue;
            }
            if sys::setxattr(dir.as_fd(), b"", x, b"y", 0).is_ok() {
                self.opaque_fmt = Some(fmt);
                self.sum.opaque_xattr += 1;
                return Ok(());
            }
            self.opaque_fmt = Some(fmt + 1);
        }
        sys::openat(
            dir.as_fd(),
            whiteout::OPAQUE_MARKER,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )?;
        self.sum.opaque_file += 1;
        Ok(())
    }

    fn entry<R: Read>(&mut self, mut e: tar::Entry<R>) -> Result<()> {
        let raw_path = e.path_bytes().into_owned();
        let comps = safe_components(&raw_path)?;
        let kind = e.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName
        ) {
            return Ok(());
        }
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the layer root itself
        };
        let dir = open_parents(&self.root, parents, true)?;
        if name.as_slice() == whiteout::OPAQUE_MARKER {
            return self.opaque(&dir);
        }
        if let Some(t) = whiteout::whiteout_target(name) {
            let t = t.to_vec();
            return self.whiteout(&dir, &t);
        }
        let h = e.header().clone();
        let mode = h.mode().map_err(io_err)? & 0o7777;
        let mtime = h.mtime().unwrap_or(0) as i64;
        let existing = sys::fstatat(dir.as_fd(), name).ok();
        if !(kind == tar::EntryType::Directory && existing.is_some_and(|s| s.is_dir())) {
            remove_any(&dir, name)?;
        }
        match kind {
            tar::EntryType::Directory => {
                if existing.is_none_or(|s| !s.is_dir()) {
                    sys::mkdirat(dir.as_fd(), name, 0o755)?;
                }
                let mut p = parents.to_vec();
                p.push(name.clone());
                self.dirs.push((p, mode, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let fd = sys::openat(
                    dir.as_fd(),
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )?;
                let mut f = std::fs::File::from(fd);
                std::io::copy(&mut e, &mut f).map_err(io_err)?;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::from_errno(libc::EINVAL).context("symlink without target")
                    })?
                    .into_owned();
                sys::symlinkat(&target, dir.as_fd(), name)?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| {
                        Error::from_errno(libc::EINVAL).context("hard link without target")
                    })?
                    .into_owned();
                let tc = safe_components(&target)?;
                let Some((tname, tparents)) = tc.split_last() else {
                    return Err(Error::from_errno(libc::EINVAL).context("hard link to the root"));
                };
                let tdir = open_parents(&self.root, tparents, false)?;
                sys::linkat(tdir.as_fd(), tname, dir.as_fd(), name)?;
                self.sum.hard_links += 1;
                self.sum.entries += 1;
                return Ok(()); // the link shares the target's metadata
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (t, rdev) = match kind {
                    tar::EntryType::Char => (libc::S_IFCHR, 0),
                    tar::EntryType::Block => (libc::S_IFBLK, 0),
                    _ => (libc::S_IFIFO, 0),
                };
                let rdev = if t == libc::S_IFIFO {
                    rdev
                } else {
                    let maj = h.device_major().ok().flatten().unwrap_or(0);
                    let min = h.device_minor().ok().flatten().unwrap_or(0);
                    sys::makedev(maj, min)
                };
                if t == libc::S_IFCHR && rdev == 0 {
                    // A 0/0 device in a layer tar would read as a whiteout.
                    self.sum.whiteouts_chardev += 1;
                }
                if let Err(err) = sys::mknodat(dir.as_fd(), name, t | 0o600, rdev) {
                    self.sum.skipped.push(format!("{}: {err}", bstr(&raw_path)));
                    return Ok(());
                }
            }
            other => {
                self.sum
                    .skipped
                    .push(format!("{}: tar entry type {other:?}", bstr(&raw_path)));
                return Ok(());
            }
        }
        if let Ok(Some(exts)) = e.pax_extensions() {
            for ext in exts.flatten() {
                let Some(x) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
                    continue;
                };
                if whiteout::is_private_xattr(x) {
                    self.sum.skipped.push(format!(
                        "{}: private xattr {} dropped",
                        bstr(&raw_path),
                        bstr(x)
                    ));
                    continue;
                }
                if let Err(err) = sys::setxattr(dir.as_fd(), name, x, ext.value_bytes(), 0) {
                    self.sum
                        .skipped
                        .push(format!("{}: xattr {}: {err}", bstr(&raw_path), bstr(x)));
                }
            }
        }
        if self.root_user {
            let uid = h.uid().unwrap_or(0) as u32;
            let gid = h.gid().unwrap_or(0) as u32;
            if let Err(err) = sys::fchownat(dir.as_fd(), name, Some(uid), Some(gid)) {
                self.sum
                    .skipped
                    .push(format!("{}: chown: {err}", bstr(&raw_path)));
            }
        }
        if kind != tar::EntryType::Directory {
            if kind != tar::EntryType::Symlink {
                sys::fchmodat(dir.as_fd(), name, mode)?;
            }
            let t = Some(Some((mtime, 0)));
            let _ = sys::utimensat(dir.as_fd(), name, t, t);
        }
        self.sum.entries += 1;
        Ok(())
    }
}

/// A reader over the possibly compressed tar at `input` (`-` = stdin).
fn open_input(input: &Path) -> Result<Box<dyn Read>> {
    let raw: Box<dyn Read> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(input)
                .map_err(|e| io_err(e).context(format!("open {}", input.display())))?,
        )
    };
    let mut br = std::io::BufReader::with_capacity(1 << 16, raw);
    let head = br.fill_buf().map_err(io_err)?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::Decoder::with_buffer(br).map_err(io_err)?)
    } else {
        Box::new(br)
    })
}

/// Unpack `input` into `dir` (created if missing).
pub fn import(input: &Path, dir: &Path) -> Result<Summary> {
    std::fs::create_dir_all(dir)
        .map_err(|e| io_err(e).context(format!("create {}", dir.display())))?;
    let root = sys::open_dir_path(dir)?;
    let mut imp = Importer {
        root,
        root_user: sys::geteuid() == 0,
        chardev_ok: None,
        opaque_fmt: None,
        dirs: Vec::new(),
        sum: Summary::default(),
    };
    let mut ar = tar::Archive::new(open_input(input)?);
    for e in ar.entries().map_err(io_err)? {
        let e = e.map_err(io_err)?;
        let what = bstr(&e.path_bytes());
        imp.entry(e).map_err(|err| err.context(what))?;
    }
    // Directory modes and times last (deepest first), so that a read-only directory in the
    // tar did not stop its contents from being written.
    imp.dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
    for (comps, mode, mtime) in std::mem::take(&mut imp.dirs) {
        let d = open_parents(&imp.root, &comps, false)?;
        sys::fchmodat(d.as_fd(), b"", mode)?;
        let t = Some(Some((mtime, 0)));
        let _ = sys::utimensat(d.as_fd(), b"", t, t);
    }
    Ok(imp.sum)
}
