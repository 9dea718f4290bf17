//! Copy-up: bring a lower object into the upper before it is modified.
//!
//! Every copy is staged under WORKDIR/work with a private name and renamed into the upper
//! in one step (`renameat2(RENAME_NOREPLACE)`), so a crash leaves either no upper object or
//! a complete one; staging leftovers are removed at the next mount. Parents are copied up
//! first, with their metadata; the parent's timestamps are restored afterwards, as the
//! kernel does.

use crate::error::{err, Error, Result};
use crate::inode::{LowerFile, Node};
use crate::overlay::{index_name, Overlay};
use crate::sys::{self, Stat};
use crate::whiteout;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// How much file data a copy-up needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Data {
    /// All of it.
    Full,
    /// Only the first N bytes (the caller truncates to N right after); 0 = metadata only.
    UpTo(u64),
}

/// A staging object in the work dir that is removed on drop unless it was committed.
struct Staged<'a> {
    work: BorrowedFd<'a>,
    name: Vec<u8>,
    is_dir: bool,
    live: bool,
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if self.live {
            if self.is_dir {
                if let Ok(fd) =
                    sys::openat(self.work, &self.name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                {
                    let _ = crate::overlay::remove_contents(&fd);
                }
            }
            let _ = sys::unlinkat(self.work, &self.name, self.is_dir);
        }
    }
}

fn times(st: &Stat) -> (sys::TimeSpec, sys::TimeSpec) {
    (Some(Some(st.atime)), Some(Some(st.mtime)))
}

impl Overlay {
    /// Copy every user-visible xattr of (sdir, sname) to (ddir, dname).
    pub(crate) fn copy_xattrs(
        &self,
        sdir: BorrowedFd,
        sname: &[u8],
        ddir: BorrowedFd,
        dname: &[u8],
    ) -> Result<()> {
        if self.cfg.noxattrs {
            return Ok(());
        }
        for x in sys::listxattr(sdir, sname)? {
            if whiteout::is_private_xattr(&x)
                && !crate::idmap::OVERRIDE_XATTRS.contains(&x.as_slice())
            {
                continue;
            }
            let Some(v) = sys::getxattr(sdir, sname, &x)? else {
                continue;
            };
            if let Err(e) = sys::setxattr(ddir, dname, &x, &v, 0) {
                // The upper fs may not take every namespace (e.g. security.* labels, or
                // trusted.* rootless); the kernel copy-up skips EOPNOTSUPP too.
                if e.is(libc::EOPNOTSUPP) || (e.is(libc::EPERM) && x.starts_with(b"trusted.")) {
                    log::debug!(
                        "copy-up: xattr {} not copied: {e}",
                        crate::overlay::bstr(&x)
                    );
                    continue;
                }
                return Err(e.context(format!("copy-up xattr {}", crate::overlay::bstr(&x))));
            }
        }
        Ok(())
    }

    /// chown/chmod/utimes of a staged object to match `st`.
    fn copy_meta(&self, dir: BorrowedFd, name: &[u8], st: &Stat) -> Result<()> {
        if st.uid != sys::geteuid() || st.gid != sys::getegid() {
            if self.cfg.chown_new {
                sys::fchownat(dir, name, Some(st.uid), Some(st.gid))
                    .map_err(|e| e.context("copy-up chown"))?;
            } else if self.ids.override_xattr().is_none()
                && sys::fchownat(dir, name, Some(st.uid), Some(st.gid)).is_err()
            {
                // A plain user's daemon cannot give the copy its owner; a copy owned by the
                // user would grant the user the owner's rights (chmod, entries in a root
                // directory). Refuse, as the kernel does when it cannot keep the owner.
                return Err(Error::from_errno(libc::EPERM)
                    .context("copy-up cannot keep the owner of an object of another user"));
            }
        }
        if !st.is_lnk() {
            sys::fchmodat(dir, name, st.mode & 0o7777).map_err(|e| e.context("copy-up chmod"))?;
        }
        let (a, m) = times(st);
        sys::utimensat(dir, name, a, m).map_err(|e| e.context("copy-up utimes"))?;
        Ok(())
    }

    fn set_origin(&self, dir: BorrowedFd, name: &[u8], st_ino: u64) -> Result<()> {
        sys::setxattr(
            dir,
            name,
            self.origin_xattr(),
            st_ino.to_string().as_bytes(),
            0,
        )
        .map_err(|e| e.context("set origin xattr"))
    }

    /// Record on the staged copy (work, tmp) where it came from in the kernel overlay's
    /// format too: `overlay.origin` holding a `struct ovl_fb` (version 0, magic 0xfb,
    /// length, flags 0 = little-endian lower handle, handle type, the lower filesystem's
    /// uuid, then the handle of the lower object `(ldir, lname)` from name_to_handle_at).
    /// The kernel overlay mounted on this upper then reports the origin's st_ino for the
    /// copy, as layerfs does. Best effort: a lower filesystem without file handles or
    /// uuid gets none (the kernel then treats the copy as a pure upper object). Lower
    /// hard links get none either: the kernel would look for them in its own index.
    fn set_kernel_origin(&self, ldir: BorrowedFd, lname: &[u8], work: BorrowedFd, tmp: &[u8]) {
        let Some(uuid) = sys::fs_uuid(ldir) else {
            return;
        };
        let (kind, handle) = match sys::name_to_handle(ldir, lname) {
            Ok(h) => h,
            Err(e) => {
                log::debug!("no file handle for the kernel origin: {e}");
                return;
            }
        };
        let fb = kernel_origin_fb(kind, &handle, &uuid);
        if let Err(e) = sys::setxattr(work, tmp, &self.ovl_xattr("origin"), &fb, 0) {
            log::debug!("kernel origin xattr not set: {e}");
        }
    }

    /// Mark upper directory `dir` impure (`overlay.impure=y`, as the kernel's
    /// ovl_set_impure): it holds an object copied up from, or moved in with, a lower
    /// origin. The kernel overlay mounted on this upper then computes readdir's d_ino of
    /// the directory's entries as it computes their st_ino, from the origin.
    pub(crate) fn set_impure(&self, dir: &OwnedFd) -> Result<()> {
        let x = self.ovl_xattr("impure");
        if matches!(sys::getxattr(dir.as_fd(), b"", &x), Ok(Some(v)) if v == b"y") {
            return Ok(());
        }
        sys::setxattr(dir.as_fd(), b"", &x, b"y", 0).map_err(|e| e.context("set impure xattr"))
    }

    /// Make sure directory `node` has an upper directory; returns it.
    pub fn copy_up_dir(&self, node: &Arc<Node>) -> Result<Arc<OwnedFd>> {
        self.check_writable()?;
        if let Some(u) = node.s.lock().upper_dir.clone() {
            return Ok(u);
        }
        let _g = node.copy_lock.lock();
        if let Some(u) = node.s.lock().upper_dir.clone() {
            return Ok(u);
        }
        let (parent, name, lower_fd) = {
            let s = node.s.lock();
            let p = s
                .parent
                .clone()
                .ok_or_else(|| Error::from_errno(libc::EIO))?;
            let l = s
                .lowers
                .first()
                .map(|l| l.fd.clone())
                .ok_or_else(|| Error::from_errno(libc::EIO))?;
            (p, s.name.clone(), l)
        };
        let pup = self.copy_up_dir(&parent)?;
        self.set_impure(&pup)?;
        let work = self.work()?.clone();
        let st = sys::fstat(lower_fd.as_fd())?;
        let pst = sys::fstat(pup.as_fd())?;
        let tmp = self.tmp_name();
        sys::mkdirat(work.as_fd(), &tmp, 0o700)?;
        let mut staged = Staged {
            work: work.as_fd(),
            name: tmp.clone(),
            is_dir: true,
            live: true,
        };
        self.copy_xattrs(lower_fd.as_fd(), b"", work.as_fd(), &tmp)?;
        self.set_origin(work.as_fd(), &tmp, node.st_ino)?;
        self.set_kernel_origin(lower_fd.as_fd(), b"", work.as_fd(), &tmp);
        self.copy_meta(work.as_fd(), &tmp, &st)?;
        sys::renameat2(
            work.as_fd(),
            &tmp,
            pup.as_fd(),
            &name,
            sys::RENAME_NOREPLACE,
        )
        .map_err(|e| e.context(format!("copy-up dir {}", crate::overlay::bstr(&name))))?;
        staged.live = false;
        let fd = Arc::new(sys::open_subdir(pup.as_fd(), &name)?);
        let _ = sys::utimensat(
            pup.as_fd(),
            b"",
            Some(Some(pst.atime)),
            Some(Some(pst.mtime)),
        );
        {
            let mut s = node.s.lock();
            s.upper_dir = Some(fd.clone());
            s.upper_whfree = true;
        }
        // Now merged: its st_nlink is 1 (and its st_size the upper's).
        self.invalidate_attr(node.id);
        self.counters.copy_ups.fetch_add(1, Ordering::Relaxed);
        Ok(fd)
    }

    /// Copy a non-directory up (no-op when already in the upper).
    pub fn copy_up(&self, node: &Arc<Node>, data: Data) -> Result<()> {
        self.with_space_retry(|| self.copy_up_once(node, data))
    }

    fn copy_up_once(&self, node: &Arc<Node>, data: Data) -> Result<()> {
        self.check_writable()?;
        if node.is_dir() {
            return self.copy_up_dir(node).map(drop);
        }
        if node.s.lock().in_upper {
            return Ok(());
        }
        let _g = node.copy_lock.lock();
        let (parent, name, lower, indexed) = {
            let s = node.s.lock();
            if s.in_upper {
                return Ok(());
            }
            if s.deleted {
                // A lower object removed from the union (its name holds a whiteout now),
                // e.g. by an unlink while an open of it waited: nothing to copy it up to.
                return err(libc::ENOENT);
            }
            let p = s
                .parent
                .clone()
                .ok_or_else(|| Error::from_errno(libc::EIO))?;
            let l = s
                .lower
                .clone()
                .ok_or_else(|| Error::from_errno(libc::EIO))?;
            (p, s.name.clone(), l, s.indexed)
        };
        let pup = self.copy_up_dir(&parent)?;
        self.set_impure(&pup)?;
        let pst = sys::fstat(pup.as_fd())?;
        let work = self.work()?.clone();

        // Hard-linked lower file: keep one copy in the index and link every name to it.
        let index = self.index.clone().filter(|_| lower.nlink > 1);
        if let Some(index) = index {
            let iname = index_name(node.st_ino);
            if !indexed {
                let st = sys::fstatat(lower.dir.as_fd(), &lower.name)?;
                let tmp =
                    self.stage_copy(&work, &lower.dir, &lower.name, &st, node.st_ino, Data::Full)?;
                let mut staged = Staged {
                    work: work.as_fd(),
                    name: tmp.clone(),
                    is_dir: false,
                    live: true,
                };
                match sys::renameat2(
                    work.as_fd(),
                    &tmp,
                    index.as_fd(),
                    &iname,
                    sys::RENAME_NOREPLACE,
                ) {
                    Ok(()) => staged.live = false,
                    Err(e) if e.is(libc::EEXIST) => {}
                    Err(e) => return Err(e.context("copy-up into index")),
                }
            }
            sys::linkat(index.as_fd(), &iname, pup.as_fd(), &name)
                .map_err(|e| e.context("link index copy into upper"))?;
            self.adjust_union_nlink(node, 0)?;
        } else {
            self.copy_lower_to(
                &work,
                &lower,
                node.st_ino,
                data,
                pup.as_fd(),
                &name,
                sys::RENAME_NOREPLACE,
            )
            .map_err(|e| e.context(format!("copy-up {}", crate::overlay::bstr(&name))))?;
        }
        let _ = sys::utimensat(
            pup.as_fd(),
            b"",
            Some(Some(pst.atime)),
            Some(Some(pst.mtime)),
        );
        let mut s = node.s.lock();
        s.in_upper = true;
        s.indexed = false;
        self.counters.copy_ups.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Copy the data of a lower file that was removed from the union while the kernel still
    /// holds it into the workdir as the node's orphan (see `dir.rs`), staged like any
    /// copy-up. With `noopen` a file opened for writing is not copied up at open, so a
    /// write through an fd opened before the unlink lands here: in a private copy that
    /// lives as long as the kernel holds the inode, as on the kernel overlay (whose open
    /// copied the file up before the unlink).
    pub(crate) fn copy_up_orphan(&self, node: &Arc<Node>, data: Data) -> Result<()> {
        self.check_writable()?;
        let _g = node.copy_lock.lock();
        let lower = {
            let s = node.s.lock();
            if s.in_upper || s.indexed {
                return Ok(());
            }
            s.lower
                .clone()
                .ok_or_else(|| Error::from_errno(libc::EIO))?
        };
        let (work, oname) = self.orphan_slot(node)?;
        self.copy_lower_to(&work, &lower, node.st_ino, data, work.as_fd(), &oname, 0)
            .map_err(|e| e.context("copy-up into an orphan"))?;
        // (the orphan first: meanwhile the node still reads the lower file)
        self.set_orphan(node, oname);
        node.s.lock().in_upper = true;
        self.counters.copy_ups.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Make the specific name (parent, name) of a non-directory exist in the upper: copy the
    /// object up under that name, or, when another name of the same (hard-linked) object is
    /// already in the upper, link that one (no data copy).
    pub fn copy_up_name(
        &self,
        node: &Arc<Node>,
        parent: &Arc<Node>,
        name: &[u8],
        name_in_upper: bool,
    ) -> Result<()> {
        if name_in_upper || node.is_dir() {
            return self.copy_up(node, Data::Full);
        }
        {
            let mut s = node.s.lock();
            if !s.in_upper {
                // Not in the upper under any name: make this name the primary one.
                s.set_primary(parent, name);
            }
        }
        if !node.s.lock().in_upper {
            return self.copy_up(node, Data::Full);
        }
        let (sdir, sname) = self.upper_loc(node)?;
        let pup = self.copy_up_dir(parent)?;
        self.set_impure(&pup)?;
        sys::linkat(sdir.as_fd(), &sname, pup.as_fd(), name)
            .map_err(|e| e.context("link-up of hard link alias"))
    }

    /// Build a complete copy of (sdir, sname) in the work dir; returns its staging name.
    /// Copy lower file `lower` (of the object numbered `st_ino`) into the workdir `work`
    /// (see [`Overlay::stage_copy`]), then rename the staged copy to `dst_name` in `dst`
    /// with renameat2 `flags`; a failed rename removes the staged copy.
    #[allow(clippy::too_many_arguments)]
    fn copy_lower_to(
        &self,
        work: &OwnedFd,
        lower: &LowerFile,
        st_ino: u64,
        data: Data,
        dst: BorrowedFd,
        dst_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let st = sys::fstatat(lower.dir.as_fd(), &lower.name)?;
        let tmp = self.stage_copy(work, &lower.dir, &lower.name, &st, st_ino, data)?;
        let mut staged = Staged {
            work: work.as_fd(),
            name: tmp.clone(),
            is_dir: false,
            live: true,
        };
        sys::renameat2(work.as_fd(), &tmp, dst, dst_name, flags)?;
        staged.live = false;
        Ok(())
    }

    fn stage_copy(
        &self,
        work: &OwnedFd,
        sdir: &OwnedFd,
        sname: &[u8],
        st: &Stat,
        st_ino: u64,
        data: Data,
    ) -> Result<Vec<u8>> {
        let tmp = self.tmp_name();
        let w = work.as_fd();
        let mut staged = Staged {
            work: w,
            name: tmp.clone(),
            is_dir: false,
            live: false,
        };
        match st.kind() {
            libc::S_IFREG => {
                let dst = sys::openat(
                    w,
                    &tmp,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    0o600,
                )?;
                staged.live = true;
                let limit = match data {
                    Data::Full => st.size,
                    Data::UpTo(n) => n.min(st.size),
                };
                if limit > 0 {
                    let src = sys::openat(sdir.as_fd(), sname, libc::O_RDONLY, 0)?;
                    let n = copy_data(&src, &dst, limit, limit == st.size)?;
                    self.counters.copy_up_bytes.fetch_add(n, Ordering::Relaxed);
                }
                sys::ftruncate(dst.as_fd(), limit)?;
                if self.cfg.fsync {
                    sys::fsync(dst.as_fd(), false)?;
                }
            }
            libc::S_IFLNK => {
                let target = sys::readlinkat(sdir.as_fd(), sname)?;
                sys::symlinkat(&target, w, &tmp)?;
                staged.live = true;
            }
            libc::S_IFIFO | libc::S_IFSOCK | libc::S_IFCHR | libc::S_IFBLK => {
                sys::mknodat(w, &tmp, st.kind() | 0o600, st.rdev)?;
                staged.live = true;
            }
            _ => return err(libc::EIO),
        }
        self.copy_xattrs(sdir.as_fd(), sname, w, &tmp)?;
        // user.* xattrs exist only on regular files and directories (xattr(7): EPERM on
        // symlinks, FIFOs, sockets and devices), so without trusted.* those copy up with no
        // origin and get the upper's inode number after a remount, as the kernel's
        // userxattr mode does.
        let origin_allowed = matches!(st.kind(), libc::S_IFREG | libc::S_IFDIR)
            || self.xattr_ns == crate::overlay::XattrNs::Trusted;
        if origin_allowed {
            if let Err(e) = self.set_origin(w, &tmp, st_ino) {
                if !st.is_lnk() {
                    return Err(e);
                }
            }
        }
        if st.nlink == 1 {
            self.set_kernel_origin(sdir.as_fd(), sname, w, &tmp);
        }
        self.copy_meta(w, &tmp, st)?;
        staged.live = false;
        Ok(tmp)
    }
}

/// The kernel overlay's on-disk origin file handle (`struct ovl_fb`, fs/overlayfs/
/// overlayfs.h) for a lower object with file handle (kind, handle) on the filesystem
/// with `uuid`.
pub fn kernel_origin_fb(kind: i32, handle: &[u8], uuid: &[u8; 16]) -> Vec<u8> {
    const HEADER: usize = 21;
    let mut fb = Vec::with_capacity(HEADER + handle.len());
    fb.push(0); // version
    fb.push(0xfb); // magic
    fb.push((HEADER + handle.len()) as u8); // len (a handle is at most 128 bytes)
                                            // flags: the handle is in this CPU's byte order, and of a lower object
    fb.push(if cfg!(target_endian = "big") { 1 } else { 0 });
    fb.push(kind as u8); // fid type
    fb.extend_from_slice(uuid);
    fb.extend_from_slice(handle);
    fb
}

/// Copy `limit` bytes from src to dst, keeping holes: whole-file reflink where possible,
/// else copy_file_range over the data segments (SEEK_DATA/SEEK_HOLE), else read/write.
/// Returns the number of bytes physically copied.
fn copy_data(src: &OwnedFd, dst: &OwnedFd, limit: u64, whole: bool) -> Result<u64> {
    if whole && sys::ficlone(dst.as_fd(), src.as_fd()).is_ok() {
        return Ok(0);
    }
    let mut copied = 0u64;
    let mut pos = 0u64;
    while pos < limit {
        let data = match sys::lseek(src.as_fd(), pos as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(e) if e.is(libc::ENXIO) => break,
            Err(_) => pos,
        };
        if data >= limit {
            break;
        }
        let hole = match sys::lseek(src.as_fd(), data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(limit),
            Err(_) => limit,
        };
        copy_range(src, dst, data, hole - data)?;
        copied += hole - data;
        pos = hole;
    }
    Ok(copied)
}

fn copy_range(src: &OwnedFd, dst: &OwnedFd, mut off: u64, mut len: u64) -> Result<()> {
    while len > 0 {
        let chunk = len.min(1 << 30) as usize;
        match sys::copy_file_range(src.as_fd(), off, dst.as_fd(), off, chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                off += n as u64;
                len -= n as u64;
            }
            Err(e)
                if e.is(libc::EXDEV)
                    || e.is(libc::ENOSYS)
                    || e.is(libc::EOPNOTSUPP)
                    || e.is(libc::EINVAL) =>
            {
                return copy_range_rw(src, dst, off, len);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn copy_range_rw(src: &OwnedFd, dst: &OwnedFd, mut off: u64, mut len: u64) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    while len > 0 {
        let want = (len as usize).min(buf.len());
        let n = sys::pread(src.as_fd(), &mut buf[..want], off)?;
        if n == 0 {
            return Ok(());
        }
        sys::write_all_at(dst.as_fd(), &buf[..n], off)?;
        off += n as u64;
        len -= n as u64;
    }
    Ok(())
}
