//! Open files and directories, and file I/O on the real objects (the kernel's file.c).

use crate::attr::{Kill, NO_CAPS, NO_SETID};
use crate::copy_up::Data;
use crate::dir::{Caller, NewKind};
use crate::error::{err, Error, Result};
use crate::inode::{IoState, Node};
use crate::overlay::{Attr, Overlay};
use crate::sys;
use parking_lot::{Mutex, RwLock};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The real file behind an open regular file. A handle opened (read-only) while its
/// object was still only in a lower layer switches to the upper copy on first use after a
/// copy-up, so it sees data written since, as the kernel overlay does (>= 4.19).
pub struct OpenFile {
    fd: RwLock<Arc<OwnedFd>>,
    /// The open flags, to open the copy the same way.
    flags: i32,
    /// `fd` is the lower object (it may have been copied up since).
    on_lower: AtomicBool,
}

/// An open regular file (directories are not opened: see [`Overlay::readdir`]).
pub struct Handle {
    pub node: Arc<Node>,
    pub file: OpenFile,
    pub mode: Mutex<IoMode>,
}

/// How one open file does its I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoMode {
    /// Through the daemon, with the kernel's page cache.
    Cached,
    /// FUSE passthrough to the inode's backing file.
    Passthrough,
}

/// What the adapter should answer an open with.
pub enum IoPlan {
    /// Through the daemon; `keep_cache`: the kernel may keep the pages it has for this
    /// inode (only layerfs changes the layers and every change it makes goes through
    /// the kernel's page cache, except passthrough writes, after which it is dropped).
    Cached {
        keep_cache: bool,
    },
    Passthrough(Arc<fuser::BackingId>),
}

impl Handle {
    /// The real file as opened (see [`Overlay::file_fd`] for the current one).
    pub fn fd(&self) -> Result<Arc<OwnedFd>> {
        Ok(self.file.fd.read().clone())
    }
}

/// The data of non-directory `node` is read from its lower layer (not copied up into the
/// upper or the hard-link index).
pub(crate) fn data_on_lower(node: &Node) -> bool {
    let s = node.s.lock();
    !s.in_upper && !s.indexed
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// Count a page-cached open; its pages may be kept if no passthrough open came between.
fn cached_plan(io: &mut IoState, mode: &mut IoMode) -> IoPlan {
    io.cached_opens += 1;
    *mode = IoMode::Cached;
    let keep_cache = io.cache_valid;
    io.cache_valid = true;
    IoPlan::Cached { keep_cache }
}

impl Overlay {
    fn add_handle(&self, node: Arc<Node>, file: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(
            fh,
            Arc::new(Handle {
                node,
                file,
                mode: Mutex::new(IoMode::Cached),
            }),
        );
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::from_errno(libc::EBADF))
    }

    /// The real file of an open regular file now: a handle opened on the lower object
    /// that has been copied up since (into the upper or the hard-link index) is re-opened
    /// on the copy first. Such a handle is always page-cached (passthrough is never used
    /// for lower files of a writable mount), and the kernel keeps no stale pages of it:
    /// every change of the data went through this inode, and opens do not keep the cache.
    pub fn file_fd(&self, h: &Handle) -> Result<Arc<OwnedFd>> {
        let f = &h.file;
        if f.on_lower.load(Ordering::Acquire) && !data_on_lower(&h.node) {
            let mut fd = f.fd.write();
            if f.on_lower.load(Ordering::Acquire) {
                match self.open_real(&h.node, f.flags) {
                    Ok(copy) => *fd = Arc::new(copy),
                    // No name of the copy is left (unlinked since): keep the lower file.
                    Err(e) => log::debug!("re-open after copy-up of {}: {e}", h.node.st_ino),
                }
                // (swap: exactly one of this and release counts the handle out)
                if f.on_lower.swap(false, Ordering::AcqRel) {
                    let mut io = h.node.io.lock();
                    io.stale_opens = io.stale_opens.saturating_sub(1);
                }
            }
            return Ok(fd.clone());
        }
        Ok(f.fd.read().clone())
    }

    /// Before an upper name of non-directory `node` is removed (it may be the last one):
    /// switch the handles opened on its lower file before its copy-up to the copy while
    /// it can still be opened by name, so they keep reading it once it is unlinked.
    pub(crate) fn refresh_stale_handles(&self, node: &Node) {
        if node.io.lock().stale_opens == 0 || data_on_lower(node) {
            return;
        }
        let stale: Vec<Arc<Handle>> = self
            .handles
            .iter()
            .filter(|h| h.node.id == node.id)
            .map(|h| h.clone())
            .collect();
        for h in stale {
            let _ = self.file_fd(&h);
        }
    }

    fn add_file_handle(&self, node: Arc<Node>, fd: OwnedFd, flags: i32, on_lower: bool) -> u64 {
        let f = OpenFile {
            fd: RwLock::new(Arc::new(fd)),
            flags: flags & !(libc::O_TRUNC | libc::O_CREAT | libc::O_EXCL),
            on_lower: AtomicBool::new(on_lower),
        };
        self.add_handle(node, f)
    }

    fn open_real(&self, node: &Arc<Node>, flags: i32) -> Result<OwnedFd> {
        let (dir, name) = self.real_loc(node)?;
        let mut f = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY);
        if name.is_empty() {
            return err(libc::EISDIR);
        }
        if !wants_write(flags) {
            f &= !libc::O_TRUNC;
        }
        sys::openat(dir.as_fd(), &name, f, 0).map_err(|e| {
            // A file unlinked while the kernel still held it: its name now holds a whiteout
            // (a device, hence ENXIO) or another object. The object is gone: ENOENT.
            if e.is(libc::ENXIO) && node.kind() == libc::S_IFREG {
                Error::from_errno(libc::ENOENT)
            } else {
                e
            }
        })
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        self.open_as(ino, flags, None)
    }

    /// open; `who`: the process opening, for a request from the kernel: an open with
    /// O_TRUNC then drops set-id bits and file capabilities as a truncate does (the
    /// kernel leaves that to the daemon, see [`Overlay::kill_privs`]).
    pub fn open_as(&self, ino: u64, flags: i32, who: Option<&Caller>) -> Result<u64> {
        let node = self.node(ino)?;
        if node.is_dir() {
            return err(libc::EISDIR);
        }
        if wants_write(flags) {
            self.check_writable()?;
            let _g = self.tree.read();
            let data = if flags & libc::O_TRUNC != 0 {
                Data::UpTo(0)
            } else {
                Data::Full
            };
            self.copy_up(&node, data)?;
        }
        if let (Some(who), true) = (who, flags & libc::O_TRUNC != 0 && wants_write(flags)) {
            // Before the truncating open: where the daemon lacks CAP_FSETID (a user
            // namespace) the upper's filesystem drops set-user-id itself on truncate, and
            // the kernel would keep the old mode cached.
            if self.kill_privs(&node, Kill::Truncate, who, None)? {
                self.invalidate_attr(node.id);
            }
        }
        // Decided before the open: a copy-up in between leaves the flag set, and the first
        // use then re-opens the copy.
        let on_lower = !self.cfg.read_only && data_on_lower(&node);
        let fd = self.open_real(&node, flags)?;
        if on_lower {
            node.io.lock().stale_opens += 1;
        }
        Ok(self.add_file_handle(node, fd, flags, on_lower))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<Node>, Attr, u64)> {
        let (node, attr) = match self.create_object(parent, name, NewKind::File { mode }, who) {
            Err(e) if e.is(libc::EEXIST) && flags & libc::O_EXCL == 0 => {
                // Made by someone else since the kernel's lookup: open it, as open(2) with
                // O_CREAT and without O_EXCL does.
                return self.create_existing(parent, name, flags, who);
            }
            r => r?,
        };
        if attr.st.mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
            // a new file has no file capability either: its writes need no check
            node.privs.fetch_or(NO_CAPS | NO_SETID, Ordering::AcqRel);
        }
        let fd = self.open_real(&node, flags & !libc::O_TRUNC)?;
        let fh = self.add_file_handle(node.clone(), fd, flags, false);
        Ok((node, attr, fh))
    }

    fn create_existing(
        &self,
        parent: u64,
        name: &[u8],
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<Node>, Attr, u64)> {
        let (node, _) = self.lookup(parent, name)?;
        let opened = match node.kind() {
            libc::S_IFREG => self
                .open_as(node.id, flags & !(libc::O_CREAT | libc::O_EXCL), Some(&who))
                .and_then(|fh| match self.attr_of(&node) {
                    Ok(a) => Ok((fh, a)),
                    Err(e) => {
                        self.release(fh);
                        Err(e)
                    }
                }),
            libc::S_IFDIR => err(libc::EISDIR),
            _ => err(libc::EEXIST),
        };
        match opened {
            Ok((fh, attr)) => Ok((node, attr, fh)),
            Err(e) => {
                self.forget(node.id, 1);
                Err(e)
            }
        }
    }

    pub fn release(&self, fh: u64) {
        let Some((_, h)) = self.handles.remove(&fh) else {
            return;
        };
        let mut io = h.node.io.lock();
        if h.file.on_lower.swap(false, Ordering::AcqRel) {
            io.stale_opens = io.stale_opens.saturating_sub(1);
        }
        let mode = *h.mode.lock();
        match mode {
            IoMode::Passthrough => {
                io.pt_opens = io.pt_opens.saturating_sub(1);
                if io.pt_opens == 0 {
                    io.backing = None;
                }
            }
            IoMode::Cached => io.cached_opens = io.cached_opens.saturating_sub(1),
        }
    }

    /// Decide how open file `fh` does I/O, registering a passthrough backing file through
    /// `make_backing` when that is possible and allowed by the inode's other opens.
    pub fn plan_io(
        &self,
        fh: u64,
        make_backing: impl FnOnce(&OwnedFd) -> std::io::Result<fuser::BackingId>,
    ) -> Result<IoPlan> {
        let h = self.handle(fh)?;
        let fd = self.file_fd(&h)?;
        let upper = h.node.s.lock().in_upper;
        let mut io = h.node.io.lock();
        let mut mode = h.mode.lock();
        // A backing file on a lower layer of a writable mount is never registered: while it
        // is live the kernel would demand that a later write-open pass through to the same
        // (lower!) file. Upper files and read-only mounts cannot hit that.
        let allowed = upper || self.cfg.read_only;
        if !self.passthrough.load(Ordering::Relaxed) || !allowed || io.cached_opens > 0 {
            return Ok(cached_plan(&mut io, &mut mode));
        }
        if io.pt_opens > 0 {
            let same = io
                .backing
                .as_ref()
                .filter(|(_, u)| *u == upper)
                .map(|(b, _)| b.clone());
            if let Some(b) = same {
                io.pt_opens += 1;
                *mode = IoMode::Passthrough;
                return Ok(IoPlan::Passthrough(b));
            }
            // Cannot happen with the rule above (an upper object never goes back to a
            // lower); refuse rather than let the kernel mix backing files.
            log::error!("passthrough backing mismatch on inode {}", h.node.st_ino);
            return err(libc::ETXTBSY);
        }
        match make_backing(&fd) {
            Ok(b) => {
                let b = Arc::new(b);
                io.backing = Some((b.clone(), upper));
                io.pt_opens = 1;
                io.cache_valid = false;
                *mode = IoMode::Passthrough;
                Ok(IoPlan::Passthrough(b))
            }
            Err(e) => {
                if e.raw_os_error() == Some(libc::EPERM) {
                    if self.passthrough.swap(false, Ordering::Relaxed) {
                        log::warn!(
                            "FUSE passthrough refused ({e}): file I/O goes through the daemon"
                        );
                    }
                } else {
                    log::debug!("passthrough not possible for this file: {e}");
                }
                Ok(cached_plan(&mut io, &mut mode))
            }
        }
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; size as usize];
        let done = self.read_into(fh, off, &mut buf)?;
        buf.truncate(done);
        Ok(buf)
    }

    /// Read up to `buf.len()` bytes at `off` (fewer only at end of file); the adapter
    /// passes a per-thread buffer, so reads allocate nothing.
    pub fn read_into(&self, fh: u64, off: u64, buf: &mut [u8]) -> Result<usize> {
        let h = self.handle(fh)?;
        let fd = self.file_fd(&h)?;
        let mut done = 0usize;
        while done < buf.len() {
            let n = sys::pread(fd.as_fd(), &mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done)
    }

    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32> {
        self.write_as(fh, off, data, None)
    }

    /// write; `who`: the writing process for a write(2) from the kernel, and whether the
    /// kernel asked to drop set-id bits (FUSE_WRITE_KILL_SUIDGID: the writer lacks
    /// CAP_FSETID). Set-id bits and the file capability go first, as the VFS does it.
    pub fn write_as(
        &self,
        fh: u64,
        off: u64,
        data: &[u8],
        who: Option<(&Caller, bool)>,
    ) -> Result<u32> {
        let h = self.handle(fh)?;
        if let Some((who, kill)) = who {
            if self.kill_privs(&h.node, Kill::Write, who, Some(!kill))? {
                self.invalidate_attr(h.node.id);
            }
        }
        let fd = self.file_fd(&h)?;
        let mut done = 0usize;
        while done < data.len() {
            let at = off + done as u64;
            let n = self.with_space_retry(|| sys::pwrite(fd.as_fd(), &data[done..], at))?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        sys::fsync(self.file_fd(&h)?.as_fd(), datasync)
    }

    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        sys::fallocate(self.file_fd(&h)?.as_fd(), mode, off, len)
    }

    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        sys::lseek(self.file_fd(&h)?.as_fd(), off, whence)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let (dir, name) = self.real_loc(&node)?;
        sys::readlinkat(dir.as_fd(), &name)
    }
}
