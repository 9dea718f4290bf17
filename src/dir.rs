//! Namespace operations (the kernel's dir.c): create, mkdir, mknod, symlink, link, unlink,
//! rmdir, rename — with whiteouts, opaque directories and directory redirects.

use crate::copy_up::Data;
use crate::error::{err, Error, Result};
use crate::inode::Node;
use crate::overlay::{Attr, Found, Lookup, Overlay};
use crate::sys;
use crate::whiteout;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The caller of a creating request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// The calling thread (0: unknown), for what the kernel does not pass: supplementary
    /// groups and capabilities, read from /proc when a set-id bit may have to go.
    pub pid: u32,
}

/// What to create.
#[derive(Debug, Clone)]
pub enum NewKind {
    File { mode: u32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: Vec<u8> },
}

/// A whiteout that exists in an upper directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpperWhiteout {
    None,
    CharDev,
    WhFile,
}

impl Overlay {
    /// The whiteout for `name` in directory node `dir`'s upper directory `pup`, if any.
    fn upper_whiteout(&self, dir: &Node, pup: &OwnedFd, name: &[u8]) -> UpperWhiteout {
        match sys::fstatat(pup.as_fd(), name) {
            Ok(st) if whiteout::is_whiteout_stat(&st) => return UpperWhiteout::CharDev,
            Ok(_) => return UpperWhiteout::None,
            Err(_) => {}
        }
        if !self.upper_whfree(dir)
            && sys::fstatat(pup.as_fd(), &whiteout::whiteout_name(name)).is_ok()
        {
            UpperWhiteout::WhFile
        } else {
            UpperWhiteout::None
        }
    }

    /// Create a whiteout for `name` in the upper directory `pup` (nothing is there yet).
    pub(crate) fn create_whiteout(&self, pup: &Arc<OwnedFd>, name: &[u8]) -> Result<()> {
        self.counters.whiteouts.fetch_add(1, Ordering::Relaxed);
        if self.chardev_whiteouts.load(Ordering::Relaxed) {
            if self.link_shared_whiteout(pup, name)? {
                return Ok(());
            }
            match sys::mknodat(pup.as_fd(), name, libc::S_IFCHR, 0) {
                Ok(()) => {
                    *self.shared_whiteout.lock() = Some((pup.clone(), name.to_vec()));
                    return Ok(());
                }
                Err(e) if e.is(libc::EPERM) || e.is(libc::EOPNOTSUPP) || e.is(libc::EINVAL) => {
                    log::warn!(
                        "char 0/0 whiteouts refused ({e}): using .wh.NAME files from now on"
                    );
                    self.chardev_whiteouts.store(false, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        let fd = sys::openat(
            pup.as_fd(),
            &whiteout::whiteout_name(name),
            libc::O_WRONLY | libc::O_CREAT,
            0,
        )?;
        drop(fd);
        Ok(())
    }

    /// Make `name` in `pup` a hard link of the last whiteout made; false when that is not
    /// possible (make a new inode then). Every char 0/0 whiteout is the same object to
    /// every reader, and the kernel overlay (>= 5.8) shares one whiteout inode the same
    /// way: a link costs far less than allocating an inode, which was most of the cost of
    /// removing a lower file (on ext4). The source is any whiteout this daemon made (none
    /// lingers in the workdir); since it may have been replaced or removed since, the link
    /// is checked, and a failed link (gone: ENOENT, link count full: EMLINK) or a link
    /// of something else falls back to a new inode, which becomes the next source.
    fn link_shared_whiteout(&self, pup: &Arc<OwnedFd>, name: &[u8]) -> Result<bool> {
        let shared = self.shared_whiteout.lock().clone();
        let Some((sdir, sname)) = shared else {
            return Ok(false);
        };
        match sys::linkat(sdir.as_fd(), &sname, pup.as_fd(), name) {
            Ok(()) => {}
            Err(e) if e.is(libc::EEXIST) || e.is(libc::ENOSPC) || e.is(libc::EDQUOT) => {
                return Err(e)
            }
            Err(_) => return Ok(false),
        }
        match sys::fstatat(pup.as_fd(), name) {
            Ok(st) if whiteout::is_whiteout_stat(&st) => Ok(true),
            _ => {
                sys::unlinkat(pup.as_fd(), name, false)?;
                Ok(false)
            }
        }
    }

    /// Mark an upper directory opaque in the namespace this daemon writes.
    pub(crate) fn set_opaque(&self, dir: BorrowedFd, name: &[u8]) -> Result<()> {
        sys::setxattr(dir, name, &self.ovl_xattr("opaque"), b"y", 0)?;
        if self.xattr_ns == crate::overlay::XattrNs::User {
            sys::setxattr(dir, name, b"user.fuseoverlayfs.opaque", b"y", 0)?;
        }
        Ok(())
    }

    fn chown_new(
        &self,
        dir: BorrowedFd,
        name: &[u8],
        pup: &OwnedFd,
        who: Caller,
        is_dir: bool,
    ) -> Result<()> {
        let pst = sys::fstat(pup.as_fd())?;
        let sgid = pst.mode & libc::S_ISGID != 0;
        // A shown id no triple covers cannot be stored (the kernel's idmapped mounts say
        // EOVERFLOW too).
        let uid = self
            .ids
            .stored_uid(who.uid)
            .ok_or_else(|| Error::from_errno(libc::EOVERFLOW))?;
        let caller_gid = || {
            self.ids
                .stored_gid(who.gid)
                .ok_or_else(|| Error::from_errno(libc::EOVERFLOW))
        };
        if let Some(x) = self.ids.override_xattr() {
            let st = sys::fstatat(dir, name)?;
            let mut pstored = pst;
            self.apply_override(&mut pstored, pup, b"");
            let o = crate::idmap::OverrideStat {
                uid,
                gid: if sgid { pstored.gid } else { caller_gid()? },
                mode: st.mode & 0o7777,
                kind: Some(st.kind()),
            };
            return sys::setxattr(dir, name, x, &crate::idmap::format_override(&o), 0);
        }
        let gid = if sgid { pst.gid } else { caller_gid()? };
        if self.cfg.chown_new && (uid != self.euid || gid != self.egid) {
            sys::fchownat(dir, name, Some(uid), Some(gid))?;
        }
        if sgid && is_dir {
            let st = sys::fstatat(dir, name)?;
            if st.mode & libc::S_ISGID == 0 {
                sys::fchmodat(dir, name, (st.mode & 0o7777) | libc::S_ISGID)?;
            }
        }
        Ok(())
    }

    /// Make the object; a regular file is opened with `open_flags` (access mode and status
    /// flags of the creating open) and its fd returned.
    fn make_object(
        &self,
        dir: BorrowedFd,
        name: &[u8],
        kind: &NewKind,
        open_flags: i32,
    ) -> Result<Option<OwnedFd>> {
        match kind {
            NewKind::File { mode } => {
                let flags =
                    open_flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_NOCTTY);
                Ok(Some(sys::openat(
                    dir,
                    name,
                    flags | libc::O_CREAT | libc::O_EXCL,
                    mode & 0o7777,
                )?))
            }
            NewKind::Dir { mode } => sys::mkdirat(dir, name, mode & 0o7777).map(|_| None),
            NewKind::Node { mode, rdev } => sys::mknodat(dir, name, *mode, *rdev).map(|_| None),
            NewKind::Symlink { target } => sys::symlinkat(target, dir, name).map(|_| None),
        }
    }

    /// Temporary handle on a resolved object for the duration of one operation.
    fn temp_node(&self, parent: &Arc<Node>, name: &[u8], f: Found) -> Arc<Node> {
        let n = self.instantiate(parent, name, f);
        self.inodes.forget(n.id, 1);
        n
    }

    fn found(&self, parent: &Arc<Node>, name: &[u8]) -> Result<(Arc<Node>, Attr)> {
        match self.resolve(parent, name)? {
            Lookup::Found(f) => {
                let n = self.instantiate(parent, name, *f);
                let a = self.attr_of(&n)?;
                Ok((n, a))
            }
            _ => err(libc::EIO),
        }
    }

    /// Create a new object `name` in directory `parent`.
    pub fn create_object(
        &self,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        who: Caller,
    ) -> Result<(Arc<Node>, Attr)> {
        self.create_inner(parent, name, kind, who, libc::O_RDWR)
            .map(|(n, a, _)| (n, a))
    }

    /// Create a new regular file `name` in directory `parent` (create(2)), returning it
    /// opened with `flags` (the creating open: no second open, and no second lookup).
    pub fn create_file(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<Node>, Attr, OwnedFd)> {
        let (node, attr, fd) =
            self.create_inner(parent, name, NewKind::File { mode }, who, flags)?;
        Ok((node, attr, fd.ok_or_else(|| Error::from_errno(libc::EIO))?))
    }

    fn create_inner(
        &self,
        parent: u64,
        name: &[u8],
        kind: NewKind,
        who: Caller,
        open_flags: i32,
    ) -> Result<(Arc<Node>, Attr, Option<OwnedFd>)> {
        self.check_writable()?;
        if let Some(e) = whiteout::check_new_name(name) {
            return err(e);
        }
        let _g = self.tree.write();
        let p = self.node(parent)?;
        // Absent: nothing in the upper (not even a whiteout) and nothing visible below.
        let whited_out = match self.resolve(&p, name)? {
            Lookup::Found(_) => return err(libc::EEXIST),
            Lookup::WhitedOut => true,
            Lookup::Absent => false,
        };
        let pup = self.copy_up_dir(&p)?;
        let is_dir = matches!(kind, NewKind::Dir { .. });
        let wh = if whited_out {
            self.upper_whiteout(&p, &pup, name)
        } else {
            UpperWhiteout::None
        };
        let fd;
        match wh {
            UpperWhiteout::None => {
                fd = self.make_object(pup.as_fd(), name, &kind, open_flags)?;
                if let Err(e) = self.chown_new(pup.as_fd(), name, &pup, who, is_dir) {
                    let _ = sys::unlinkat(pup.as_fd(), name, is_dir);
                    return Err(e);
                }
            }
            wh => {
                let work = self.work()?.clone();
                let tmp = self.tmp_name();
                fd = self.make_object(work.as_fd(), &tmp, &kind, open_flags)?;
                let staged = (|| -> Result<()> {
                    self.chown_new(work.as_fd(), &tmp, &pup, who, is_dir)?;
                    if is_dir {
                        self.set_opaque(work.as_fd(), &tmp)?;
                    }
                    match (wh, is_dir) {
                        (UpperWhiteout::CharDev, false) => {
                            sys::renameat2(work.as_fd(), &tmp, pup.as_fd(), name, 0)
                        }
                        (UpperWhiteout::CharDev, true) => {
                            sys::renameat2(
                                work.as_fd(),
                                &tmp,
                                pup.as_fd(),
                                name,
                                sys::RENAME_EXCHANGE,
                            )?;
                            sys::unlinkat(work.as_fd(), &tmp, false)
                        }
                        _ => {
                            sys::renameat2(
                                work.as_fd(),
                                &tmp,
                                pup.as_fd(),
                                name,
                                sys::RENAME_NOREPLACE,
                            )?;
                            sys::unlinkat(pup.as_fd(), &whiteout::whiteout_name(name), false)
                        }
                    }
                })();
                if let Err(e) = staged {
                    let _ = sys::unlinkat(work.as_fd(), &tmp, is_dir);
                    return Err(e);
                }
            }
        }
        if let Some(fd) = fd {
            let (node, attr) = self.found_new_file(&p, name, &fd, whited_out)?;
            return Ok((node, attr, Some(fd)));
        }
        let (node, attr) = self.found(&p, name)?;
        if is_dir {
            // made empty here: no `.wh.` file in it
            node.s.lock().upper_whfree = true;
        }
        Ok((node, attr, None))
    }

    /// The node of a regular file just made at (parent, name) and opened as `fd`: what
    /// [`Overlay::resolve`] would find, from the file's fstat (a new file has no origin
    /// xattr to read). Something is visible below the name only if it was whited out.
    fn found_new_file(
        &self,
        p: &Arc<Node>,
        name: &[u8],
        fd: &OwnedFd,
        whited_out: bool,
    ) -> Result<(Arc<Node>, Attr)> {
        let st = sys::fstat(fd.as_fd())?;
        let (plowers, plower_path) = {
            let s = p.s.lock();
            (s.lowers.clone(), s.lower_path.clone())
        };
        let f = Found {
            st,
            st_ino: self.layers.compose_ino(st.dev, st.ino),
            upper_dir: None,
            upper_xwh: false,
            in_upper: true,
            lowers: Vec::new(),
            lower: None,
            lower_path: crate::overlay::join(&plower_path, name),
            has_redirect: false,
            indexed: false,
            lower_present: whited_out && self.lower_has_name(&plowers, name),
            opaque: false,
        };
        let (node, fresh) = self.instantiate_fresh(p, name, f);
        let attr = if fresh {
            let (dir, rname) = self.real_loc(&node)?;
            self.attr_from_stat(&node, st, &dir, &rname)
        } else {
            self.attr_of(&node)?
        };
        Ok((node, attr))
    }

    /// link(2): a new name for an existing non-directory.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8]) -> Result<(Arc<Node>, Attr)> {
        self.check_writable()?;
        if !whiteout::valid_new_name(newname) {
            return err(libc::EPERM);
        }
        let _g = self.tree.write();
        let node = self.node(ino)?;
        if node.is_dir() {
            return err(libc::EPERM);
        }
        let np = self.node(newparent)?;
        if let Lookup::Found(_) = self.resolve(&np, newname)? {
            return err(libc::EEXIST);
        }
        self.copy_up(&node, Data::Full)?;
        let (sdir, sname) = self.upper_loc(&node)?;
        let npup = self.copy_up_dir(&np)?;
        // A new name of an object that may have a lower origin (see rename).
        self.set_impure(&npup)?;
        match self.upper_whiteout(&np, &npup, newname) {
            UpperWhiteout::None => sys::linkat(sdir.as_fd(), &sname, npup.as_fd(), newname)?,
            UpperWhiteout::CharDev => {
                let work = self.work()?.clone();
                let tmp = self.tmp_name();
                sys::linkat(sdir.as_fd(), &sname, work.as_fd(), &tmp)?;
                if let Err(e) = sys::renameat2(work.as_fd(), &tmp, npup.as_fd(), newname, 0) {
                    let _ = sys::unlinkat(work.as_fd(), &tmp, false);
                    return Err(e);
                }
            }
            UpperWhiteout::WhFile => {
                sys::linkat(sdir.as_fd(), &sname, npup.as_fd(), newname)?;
                sys::unlinkat(npup.as_fd(), &whiteout::whiteout_name(newname), false)?;
            }
        }
        self.adjust_union_nlink(&node, 1)?;
        self.found(&np, newname)
    }

    /// Remove `name` from the upper directory, leaving a whiteout when a lower layer has
    /// something by that name.
    fn remove_upper_entry(
        &self,
        pup: &Arc<OwnedFd>,
        name: &[u8],
        lower_present: bool,
        is_dir: bool,
    ) -> Result<()> {
        if !lower_present {
            if is_dir {
                if let Ok(fd) =
                    sys::openat(pup.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                {
                    crate::overlay::remove_contents(&fd)?;
                }
            }
            return sys::unlinkat(pup.as_fd(), name, is_dir);
        }
        let work = self.work()?.clone();
        let tmp = self.tmp_name();
        if self.chardev_whiteouts.load(Ordering::Relaxed) {
            // Atomically swap a fresh whiteout in for the object, then drop the object.
            let swapped = if is_dir {
                self.create_whiteout(&work, &tmp).and_then(|_| {
                    if !self.chardev_whiteouts.load(Ordering::Relaxed) {
                        return err(libc::EPERM);
                    }
                    sys::renameat2(work.as_fd(), &tmp, pup.as_fd(), name, sys::RENAME_EXCHANGE)
                })
            } else {
                sys::renameat2(pup.as_fd(), name, work.as_fd(), &tmp, sys::RENAME_WHITEOUT)
            };
            match swapped {
                Ok(()) => {
                    if is_dir {
                        if let Ok(fd) =
                            sys::openat(work.as_fd(), &tmp, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                        {
                            crate::overlay::remove_contents(&fd)?;
                        }
                    }
                    return sys::unlinkat(work.as_fd(), &tmp, is_dir);
                }
                Err(e) => {
                    let _ = sys::unlinkat(work.as_fd(), &tmp, false);
                    let _ = sys::unlinkat(work.as_fd(), &whiteout::whiteout_name(&tmp), false);
                    log::debug!("atomic whiteout swap failed ({e}); falling back");
                }
            }
        }
        if is_dir {
            if let Ok(fd) = sys::openat(pup.as_fd(), name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
                crate::overlay::remove_contents(&fd)?;
            }
        }
        sys::unlinkat(pup.as_fd(), name, is_dir)?;
        self.create_whiteout(pup, name)
    }

    /// Removing (parent, name) takes the last name of an upper non-directory that the
    /// kernel still holds (an open file, an O_PATH fd, a cwd...): it must stay usable, and
    /// its real inode must stay allocated so its inode number (the node id) is not given
    /// to a new file while the kernel still knows the old one.
    fn needs_orphan(&self, node: &Arc<Node>, parent: &Arc<Node>, name: &[u8]) -> bool {
        if self.work.is_none() || node.lookups.load(Ordering::Acquire) == 0 {
            return false;
        }
        let s = node.s.lock();
        s.kind != libc::S_IFDIR
            && s.in_upper
            && !s.indexed
            && s.aliases.is_empty()
            && s.is_primary(parent.id, name)
    }

    /// The workdir and the node's orphan name in it, cleared of a stale entry.
    pub(crate) fn orphan_slot(&self, node: &Node) -> Result<(Arc<OwnedFd>, Vec<u8>)> {
        let work = self.work()?.clone();
        let oname = format!("orphan-{:016x}", node.id).into_bytes();
        let _ = sys::unlinkat(work.as_fd(), &oname, false);
        Ok((work, oname))
    }

    /// Move the upper object `name` into the workdir as the node's orphan (leaving a
    /// whiteout when lower content has that name) instead of unlinking it.
    fn orphan_upper_entry(
        &self,
        pup: &Arc<OwnedFd>,
        name: &[u8],
        lower_present: bool,
        node: &Arc<Node>,
    ) -> Result<()> {
        let (work, oname) = self.orphan_slot(node)?;
        let mut moved = false;
        if lower_present && self.chardev_whiteouts.load(Ordering::Relaxed) {
            match sys::renameat2(
                pup.as_fd(),
                name,
                work.as_fd(),
                &oname,
                sys::RENAME_WHITEOUT,
            ) {
                Ok(()) => {
                    moved = true;
                    self.counters.whiteouts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if e.is(libc::EINVAL) || e.is(libc::EPERM) || e.is(libc::EOPNOTSUPP) => {}
                Err(e) => return Err(e),
            }
        }
        if !moved {
            sys::renameat2(pup.as_fd(), name, work.as_fd(), &oname, 0)?;
            if lower_present {
                self.create_whiteout(pup, name)?;
            }
        }
        self.set_orphan(node, oname);
        Ok(())
    }

    /// Record the node's orphan; if the kernel forgot the node meanwhile (the forget saw
    /// no orphan yet), remove it here.
    pub(crate) fn set_orphan(&self, node: &Arc<Node>, oname: Vec<u8>) {
        self.orphans.fetch_add(1, Ordering::AcqRel);
        node.s.lock().orphan = Some(oname);
        if node.lookups.load(Ordering::Acquire) == 0 {
            self.drop_orphan(node);
        }
    }

    /// Drop the name (parent, name) from a node; marks it deleted when no name is left.
    fn drop_name(&self, node: &Arc<Node>, parent: &Arc<Node>, name: &[u8]) {
        let mut s = node.s.lock();
        if s.is_primary(parent.id, name) {
            if let Some((np, nn)) = s.aliases.pop() {
                s.parent = Some(np.clone());
                s.name = nn.clone();
                drop(s);
                // Refresh where the remaining name's data lives.
                if let Ok(Lookup::Found(f)) = self.resolve(&np, &nn) {
                    let mut s = node.s.lock();
                    s.in_upper = f.in_upper;
                    s.indexed = f.indexed;
                    if f.lower.is_some() {
                        s.lower = f.lower;
                    }
                }
            } else {
                s.deleted = true;
            }
        } else {
            s.aliases
                .retain(|(p, n)| !(p.id == parent.id && n.as_slice() == name));
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        let _g = self.tree.write();
        let p = self.node(parent)?;
        let f = match self.resolve(&p, name)? {
            Lookup::Found(f) => f,
            _ => return err(libc::ENOENT),
        };
        if f.st.is_dir() {
            return err(libc::EISDIR);
        }
        let pup = self.copy_up_dir(&p)?;
        let (in_upper, lower_present) = (f.in_upper, f.lower_present);
        // An upper file that never was a lower one (its number is its own inode's, one
        // link, no lower or index copy) has no union link-count record: those are made
        // only for hard-linked lower objects. No record to look for.
        let no_record = f.in_upper
            && f.lower.is_none()
            && !f.indexed
            && f.st.nlink <= 1
            && f.st_ino == self.layers.compose_ino(f.st.dev, f.st.ino);
        let node = self.temp_node(&p, name, *f);
        if in_upper {
            self.refresh_stale_handles(&node);
        }
        if in_upper && self.needs_orphan(&node, &p, name) {
            self.orphan_upper_entry(&pup, name, lower_present, &node)?;
        } else if in_upper {
            self.remove_upper_entry(&pup, name, lower_present, false)?;
        } else {
            self.create_whiteout(&pup, name)?;
        }
        if !no_record {
            self.adjust_union_nlink(&node, -1)?;
        }
        self.drop_name(&node, &p, name);
        Ok(())
    }

    /// Entries visible in a directory (for emptiness checks).
    fn union_is_empty(&self, node: &Arc<Node>) -> Result<bool> {
        Ok(self.merged_entries(node, true)?.is_empty())
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> Result<()> {
        self.check_writable()?;
        let _g = self.tree.write();
        let p = self.node(parent)?;
        let f = match self.resolve(&p, name)? {
            Lookup::Found(f) => f,
            _ => return err(libc::ENOENT),
        };
        if !f.st.is_dir() {
            return err(libc::ENOTDIR);
        }
        let has_upper = f.upper_dir.is_some();
        let lower_present = f.lower_present;
        let node = self.temp_node(&p, name, *f);
        if !self.union_is_empty(&node)? {
            return err(libc::ENOTEMPTY);
        }
        let pup = self.copy_up_dir(&p)?;
        if has_upper {
            self.remove_upper_entry(&pup, name, lower_present, true)?;
        } else {
            self.create_whiteout(&pup, name)?;
        }
        node.s.lock().deleted = true;
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.check_writable()?;
        if flags & !(sys::RENAME_NOREPLACE | sys::RENAME_EXCHANGE) != 0 {
            return err(libc::EINVAL);
        }
        if flags & sys::RENAME_NOREPLACE != 0 && flags & sys::RENAME_EXCHANGE != 0 {
            return err(libc::EINVAL);
        }
        if let Some(e) = whiteout::check_new_name(newname) {
            return err(e);
        }
        let _g = self.tree.write();
        let p = self.node(parent)?;
        let np = self.node(newparent)?;
        let src = match self.resolve(&p, name)? {
            Lookup::Found(f) => f,
            _ => return err(libc::ENOENT),
        };
        let dst = match self.resolve(&np, newname)? {
            Lookup::Found(f) => Some(f),
            _ => None,
        };
        if flags & sys::RENAME_NOREPLACE != 0 && dst.is_some() {
            return err(libc::EEXIST);
        }
        if flags & sys::RENAME_EXCHANGE != 0 && dst.is_none() {
            return err(libc::ENOENT);
        }
        if let Some(d) = &dst {
            if d.st_ino == src.st_ino && flags & sys::RENAME_EXCHANGE == 0 {
                return Ok(()); // same object (hard links): nothing to do
            }
            if flags & sys::RENAME_EXCHANGE == 0 {
                if src.st.is_dir() && !d.st.is_dir() {
                    return err(libc::ENOTDIR);
                }
                if !src.st.is_dir() && d.st.is_dir() {
                    return err(libc::EISDIR);
                }
            }
        }
        let src_is_dir = src.st.is_dir();
        let src_lower_present = src.lower_present;
        let src_has_lowers = !src.lowers.is_empty();
        let src_has_redirect = src.has_redirect;
        let src_in_upper = src.in_upper;
        let src_lower_path = src.lower_path.clone();
        let snode = self.temp_node(&p, name, *src);
        let dst_in_upper = dst.as_ref().map(|d| d.in_upper).unwrap_or(false);
        let dinfo = dst.map(|d| {
            let is_dir = d.st.is_dir();
            let lp = d.lower_present;
            let has_lowers = !d.lowers.is_empty();
            let redirect = d.has_redirect;
            let lpath = d.lower_path.clone();
            (
                self.temp_node(&np, newname, *d),
                is_dir,
                lp,
                has_lowers,
                redirect,
                lpath,
            )
        });
        if let Some((dn, true, ..)) = &dinfo {
            if flags & sys::RENAME_EXCHANGE == 0 && !self.union_is_empty(dn)? {
                return err(libc::ENOTEMPTY);
            }
        }
        if src_is_dir && src_has_lowers && !self.cfg.redirect_dir {
            return err(libc::EXDEV);
        }
        let pup = self.copy_up_dir(&p)?;
        let npup = self.copy_up_dir(&np)?;
        if src_is_dir {
            self.copy_up_dir(&snode)?;
        } else {
            self.copy_up_name(&snode, &p, name, src_in_upper)?;
        }

        // What moves into a directory may carry a lower origin (for an object already in
        // the upper only its xattrs tell, and not always the lower it names): mark the
        // directory impure, as the kernel does for objects with an origin. Harmless for
        // pure upper objects.
        self.set_impure(&npup)?;
        if flags & sys::RENAME_EXCHANGE != 0 {
            self.set_impure(&pup)?;
            let (dn, d_is_dir, d_lower_present, d_has_lowers, d_redirect, d_lpath) =
                dinfo.clone().unwrap();
            if d_is_dir {
                self.copy_up_dir(&dn)?;
            } else {
                self.copy_up_name(&dn, &np, newname, dst_in_upper)?;
            }
            if src_is_dir && src_has_lowers && !src_has_redirect {
                self.set_redirect(&snode, &src_lower_path)?;
            }
            if d_is_dir && d_has_lowers && !d_redirect {
                self.set_redirect(&dn, &d_lpath)?;
            }
            // An upper-only directory landing on a name with lower content must not merge
            // with it.
            if src_is_dir && !src_has_lowers && d_lower_present {
                self.set_opaque_dir(&snode)?;
            }
            if d_is_dir && !d_has_lowers && src_lower_present {
                self.set_opaque_dir(&dn)?;
            }
            sys::renameat2(
                pup.as_fd(),
                name,
                npup.as_fd(),
                newname,
                sys::RENAME_EXCHANGE,
            )?;
            self.move_name(&snode, &p, name, &np, newname);
            self.move_name(&dn, &np, newname, &p, name);
            return Ok(());
        }

        // What sits at the target in the upper, and is there lower content by that name?
        let dst_wh = self.upper_whiteout(&np, &npup, newname);
        let dst_lower = match &dinfo {
            Some((_, _, lp, ..)) => *lp,
            None => dst_wh != UpperWhiteout::None,
        };
        if src_is_dir {
            if src_has_lowers {
                if !src_has_redirect {
                    self.set_redirect(&snode, &src_lower_path)?;
                }
            } else if dst_lower {
                self.set_opaque_dir(&snode)?;
            }
        }
        // An upper directory being replaced holds only whiteouts: clear them.
        if let Some((dn, true, ..)) = &dinfo {
            if let Some(u) = dn.s.lock().upper_dir.clone() {
                crate::overlay::remove_contents(&u)?;
            }
        }
        if let Some((dn, false, ..)) = &dinfo {
            self.refresh_stale_handles(dn);
        }
        // A replaced upper file the kernel still holds lives on as an orphan: link it into
        // the workdir first (if a later step fails, the link stays there until the next
        // mount empties the workdir).
        let dst_orphan = match &dinfo {
            Some((dn, false, ..)) if dst_in_upper && self.needs_orphan(dn, &np, newname) => {
                let (work, o) = self.orphan_slot(dn)?;
                match sys::linkat(npup.as_fd(), newname, work.as_fd(), &o) {
                    Ok(()) => Some(o),
                    Err(e) => {
                        log::debug!("keeping the replaced file as an orphan: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        let mut need_wh_at_old = src_lower_present;
        match dst_wh {
            UpperWhiteout::CharDev if src_is_dir => {
                // A directory cannot replace the whiteout: swap them, and the whiteout lands
                // on the old name, which is what that name needs if lower content is there.
                sys::renameat2(
                    pup.as_fd(),
                    name,
                    npup.as_fd(),
                    newname,
                    sys::RENAME_EXCHANGE,
                )?;
                if !need_wh_at_old {
                    sys::unlinkat(pup.as_fd(), name, false)?;
                }
                need_wh_at_old = false;
            }
            _ => {
                let mut done = false;
                if need_wh_at_old && self.chardev_whiteouts.load(Ordering::Relaxed) {
                    match sys::renameat2(
                        pup.as_fd(),
                        name,
                        npup.as_fd(),
                        newname,
                        sys::RENAME_WHITEOUT,
                    ) {
                        Ok(()) => {
                            done = true;
                            need_wh_at_old = false;
                            self.counters.whiteouts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e)
                            if e.is(libc::EINVAL)
                                || e.is(libc::EPERM)
                                || e.is(libc::EOPNOTSUPP) => {}
                        Err(e) => return Err(e),
                    }
                }
                if !done {
                    sys::renameat2(pup.as_fd(), name, npup.as_fd(), newname, 0)?;
                }
                if dst_wh == UpperWhiteout::WhFile {
                    sys::unlinkat(npup.as_fd(), &whiteout::whiteout_name(newname), false)?;
                }
            }
        }
        if need_wh_at_old {
            self.create_whiteout(&pup, name)?;
        }
        if let Some((dn, d_is_dir, ..)) = &dinfo {
            if *d_is_dir {
                dn.s.lock().deleted = true;
            } else {
                if let Some(o) = dst_orphan {
                    self.set_orphan(dn, o);
                }
                self.adjust_union_nlink(dn, -1)?;
                self.drop_name(dn, &np, newname);
            }
        }
        self.move_name(&snode, &p, name, &np, newname);
        Ok(())
    }

    fn set_opaque_dir(&self, node: &Arc<Node>) -> Result<()> {
        let d = node
            .s
            .lock()
            .upper_dir
            .clone()
            .ok_or_else(|| Error::from_errno(libc::EIO))?;
        self.set_opaque(d.as_fd(), b"")
    }

    fn set_redirect(&self, node: &Arc<Node>, lower_path: &[u8]) -> Result<()> {
        let d = node
            .s
            .lock()
            .upper_dir
            .clone()
            .ok_or_else(|| Error::from_errno(libc::EIO))?;
        sys::setxattr(d.as_fd(), b"", &self.ovl_xattr("redirect"), lower_path, 0)?;
        let mut s = node.s.lock();
        s.has_redirect = true;
        s.lower_path = lower_path.to_vec();
        Ok(())
    }

    fn move_name(
        &self,
        node: &Arc<Node>,
        from: &Arc<Node>,
        fname: &[u8],
        to: &Arc<Node>,
        tname: &[u8],
    ) {
        let mut s = node.s.lock();
        if s.is_primary(from.id, fname) || s.kind == libc::S_IFDIR {
            if s.kind == libc::S_IFDIR {
                self.invalidate_listing(node.id); // its `..` changed
            }
            s.parent = Some(to.clone());
            s.name = tname.to_vec();
        } else {
            for (p, n) in s.aliases.iter_mut() {
                if p.id == from.id && n.as_slice() == fname {
                    *p = to.clone();
                    *n = tname.to_vec();
                }
            }
        }
        s.deleted = false;
    }
}
