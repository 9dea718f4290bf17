//! Open regular files and file I/O on the real objects (the kernel's file.c); directories
//! are listed without being opened (see readdir.rs).

use crate::attr::{Kill, NO_CAPS, NO_SETID};
use crate::copy_up::Data;
use crate::dir::Caller;
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
/// copy-up, so it sees data written since, as the kernel overlay does (>= 4.19) — unless
/// it is passed through to the lower file (`passthrough=all`): the kernel then reads the
/// lower file for it, and the handle stays on that file too.
pub struct OpenFile {
    fd: RwLock<Arc<OwnedFd>>,
    /// The open flags, to open the copy the same way.
    flags: i32,
    /// `fd` is the lower object (it may have been copied up since).
    on_lower: AtomicBool,
    /// Passed through to the lower file: `fd` stays the lower file after a copy-up.
    lower_pt: AtomicBool,
    /// A mapping of the lower file for replies to reads, made on the first read of a
    /// large lower file (see [`sys::Mmap`]); `None` inside when not used.
    map: std::sync::OnceLock<Option<sys::Mmap>>,
}

/// Lower files at least this large are read through a mapping: it saves a copy per read
/// request, while for small files the mmap/munmap would cost more than it saves.
const MAP_MIN: u64 = 1 << 20;

/// A read ending at a multiple of this unmaps the chunk before it (see
/// [`sys::Mmap::unmap_pages`]): a sequential reader's pages stay in the page cache but not in
/// the daemon's page tables, so its RSS and page tables stay small and reclaim need not
/// unmap them.
const UNMAP_CHUNK: u64 = 8 << 20;

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
    Cached { keep_cache: bool },
    /// FUSE passthrough to `backing`; with `direct_io` (an open made while the inode is
    /// still passed through to its lower file, copied up since) the kernel sends reads and
    /// writes to the daemon instead (which serves them from the copy) and maps the backing
    /// file only for mmap.
    Passthrough {
        backing: Arc<fuser::BackingId>,
        direct_io: bool,
    },
}

impl Handle {
    /// The handle reads a lower file its node no longer takes its data from (passed
    /// through to the lower file before a copy-up): its fd says nothing about the node's
    /// attributes.
    pub fn reads_old_lower(&self) -> bool {
        self.file.lower_pt.load(Ordering::Acquire) && !data_on_lower(&self.node)
    }
}

/// While an open of `node` is passed through to its lower file, the kernel requires every
/// other open of the inode to pass through to that same file, and it opens the lower file
/// with the new open's flags for mmap: a write open then cannot be served safely.
fn pinned_to_lower(io: &IoState) -> bool {
    io.pt_opens > 0 && matches!(io.backing, Some((_, false)))
}

/// The data of non-directory `node` is read from its lower layer (not copied up into the
/// upper or the hard-link index).
pub(crate) fn data_on_lower(node: &Node) -> bool {
    let s = node.s.lock();
    !s.in_upper && !s.indexed
}

/// The mapping to read handle `h` through: while its data is the (immutable) lower file it
/// was opened on, and that file is large. Made on first use; `None` when it cannot be (the
/// caller then reads with `pread`).
fn lower_map(h: &Handle, read_only: bool) -> Option<&sys::Mmap> {
    let f = &h.file;
    // (A read-only mount never copies up: a handle there keeps the object it opened.)
    if !data_on_lower(&h.node) || !(read_only || f.on_lower.load(Ordering::Acquire)) {
        return None;
    }
    f.map
        .get_or_init(|| map_lower(&f.fd.read().clone(), h.node.st_ino))
        .as_ref()
}

/// A mapping of lower file `fd` (of the object numbered `st_ino`) to answer reads from,
/// when it is large enough to pay (see [`MAP_MIN`]).
pub(crate) fn map_lower(fd: &OwnedFd, st_ino: u64) -> Option<sys::Mmap> {
    let size = sys::fstat(fd.as_fd()).ok()?.size;
    if size < MAP_MIN || usize::try_from(size).is_err() {
        return None;
    }
    sys::Mmap::map(fd.as_fd(), size as usize)
        .map_err(|e| log::debug!("map lower file of {st_ino}: {e}"))
        .ok()
}

/// Answer a read of `size` bytes at `off`: from `map` (a lower file's mapping) when there
/// is one, else with `pread` from the fd `fd` gives.
pub(crate) fn read_from<R>(
    map: Option<&sys::Mmap>,
    fd: impl FnOnce() -> Result<Arc<OwnedFd>>,
    off: u64,
    size: u32,
    reply: impl FnOnce(Result<&[u8]>) -> R,
) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    if let Some(m) = map {
        let r = reply(Ok(m.slice(off, size as usize)));
        let end = off + size as u64;
        if end / UNMAP_CHUNK > off / UNMAP_CHUNK {
            let chunk = end / UNMAP_CHUNK * UNMAP_CHUNK - UNMAP_CHUNK;
            m.unmap_pages(chunk, UNMAP_CHUNK);
        }
        return r;
    }
    let fd = match fd() {
        Ok(fd) => fd,
        Err(e) => return reply(Err(e)),
    };
    BUF.with_borrow_mut(|buf| {
        let size = size as usize;
        if buf.len() < size {
            buf.resize(size, 0);
        }
        match pread_full(fd.as_fd(), &mut buf[..size], off) {
            Ok(n) => reply(Ok(&buf[..n])),
            Err(e) => reply(Err(e)),
        }
    })
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

/// `pread` until `buf` is full or the end of the file: the number of bytes read.
pub(crate) fn pread_full(fd: std::os::fd::BorrowedFd, buf: &mut [u8], off: u64) -> Result<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = sys::pread(fd, &mut buf[done..], off + done as u64)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// How long an open for writing waits for the opens passed through to the lower file to
/// be closed before it is refused with ETXTBSY.
pub const PINNED_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A handle passed through to its lower file keeps that file after a copy-up (the kernel
/// reads it anyway); it no longer counts as one to re-open on the copy.
fn stay_on_lower(f: &OpenFile, io: &mut IoState) {
    f.lower_pt.store(true, Ordering::Release);
    if f.on_lower.swap(false, Ordering::AcqRel) {
        io.stale_opens = io.stale_opens.saturating_sub(1);
    }
}

/// Answer a waiting open. An open for writing counts as waiting until it is answered, so
/// that read-only opens meanwhile are not passed through to the lower file again (see
/// [`Overlay::plan_io`]).
fn run_waiter(node: &Node, w: crate::inode::Waiter) {
    (w.run)();
    if w.write {
        let mut io = node.io.lock();
        io.writers_waiting = io.writers_waiting.saturating_sub(1);
    }
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
    /// on the copy first, unless it was passed through to the lower file. Such a handle is
    /// page-cached, and the kernel keeps no stale pages of it: every change of the data
    /// went through this inode, and opens do not keep the cache.
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
            lower_pt: AtomicBool::new(false),
            map: std::sync::OnceLock::new(),
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

    /// Whether an open of `ino` with `flags` has to wait (be answered later, see
    /// [`Overlay::defer_open`]): an open for writing while opens passed through to the
    /// lower file are live (see [`pinned_to_lower`]; the kernel also lets go of the backing
    /// file before the daemon hears of the release), and then also a read-only open while
    /// such an open for writing waits, so that readers coming and going cannot keep it
    /// waiting forever.
    pub fn open_must_wait(&self, ino: u64, flags: i32) -> bool {
        if self.cfg.read_only {
            return false;
        }
        let Ok(node) = self.node(ino) else {
            return false;
        };
        let io = node.io.lock();
        pinned_to_lower(&io) && (wants_write(flags) || io.writers_waiting > 0)
    }

    /// Run `run` (which answers an open of `ino` with `flags`) once the opens of `ino`
    /// passed through to its lower file are closed, or at `deadline` (from another thread),
    /// whichever comes first; at once if there are none.
    pub fn defer_open(
        &self,
        ino: u64,
        flags: i32,
        deadline: std::time::Instant,
        run: Box<dyn FnOnce() + Send>,
    ) {
        let Ok(node) = self.node(ino) else {
            return run();
        };
        let write = wants_write(flags);
        let seq = self.next_fh.fetch_add(1, Ordering::Relaxed);
        {
            let mut io = node.io.lock();
            if !pinned_to_lower(&io) {
                drop(io);
                return run();
            }
            io.writers_waiting += u32::from(write);
            io.waiters.push(crate::inode::Waiter { seq, write, run });
        }
        std::thread::spawn(move || {
            std::thread::sleep(deadline.saturating_duration_since(std::time::Instant::now()));
            let w = {
                let mut io = node.io.lock();
                let i = io.waiters.iter().position(|w| w.seq == seq);
                i.map(|i| io.waiters.remove(i))
            };
            if let Some(w) = w {
                run_waiter(&node, w);
            }
        });
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
        self.open_as(ino, flags, None)
    }

    /// open; `who`: the process opening, for a request from the kernel: an open with
    /// O_TRUNC then drops set-id bits and file capabilities as a truncate does (the
    /// kernel leaves that to the daemon, see [`Overlay::kill_privs`]).
    pub fn open_as(&self, ino: u64, flags: i32, who: Option<&Caller>) -> Result<u64> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        let node = self.node(ino)?;
        if node.is_dir() {
            return err(libc::EISDIR);
        }
        if wants_write(flags) {
            self.check_writable()?;
            if !self.cfg.read_only && pinned_to_lower(&node.io.lock()) {
                // (The adapter makes such an open wait: see `open_must_wait`.)
                log::debug!(
                    "open for writing of {}: read-only opens of its lower file are passed through",
                    node.st_ino
                );
                return err(libc::ETXTBSY);
            }
            let _g = self.tree.read_recursive();
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
        let (node, attr, fd) = match self.create_file(parent, name, mode, flags, who) {
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
        if !io.waiters.is_empty() && !pinned_to_lower(&io) {
            // Answer the waiting opens, those for writing first.
            let mut waiters = std::mem::take(&mut io.waiters);
            drop(io);
            waiters.sort_by_key(|w| !w.write);
            for w in waiters {
                run_waiter(&h.node, w);
            }
        }
    }

    /// Decide how open file `fh` does I/O, registering a passthrough backing file through
    /// `make_backing` when that is possible and allowed by the inode's other opens.
    ///
    /// The kernel allows one backing file per inode while any passthrough open of it is
    /// live, and no page-cached open meanwhile. Upper files, and every file of a read-only
    /// mount, are passed through; with `passthrough=all` so are read-only opens of a file
    /// whose data is still on a lower layer. Such an open keeps reading the lower file after
    /// a copy-up; until the last of them is closed, later read-only opens share its backing
    /// file with `FOPEN_DIRECT_IO` (reads served by the daemon from the copy, no page cache)
    /// and opens for writing wait (see [`Overlay::open_must_wait`]). Once the last is
    /// closed, new opens are passed through to the copy.
    pub fn plan_io(
        &self,
        fh: u64,
        make_backing: impl FnOnce(&OwnedFd) -> std::io::Result<fuser::BackingId>,
    ) -> Result<IoPlan> {
        let h = self.handle(fh)?;
        let f = &h.file;
        // The fd matching the node's state (a copy-up is one-way: at most one retry).
        let (fd, lower) = loop {
            let before = data_on_lower(&h.node);
            let fd = self.file_fd(&h)?;
            if data_on_lower(&h.node) == before {
                break (fd, before);
            }
        };
        let (upper, single_link) = {
            let s = h.node.s.lock();
            (s.in_upper, s.lower.as_ref().is_none_or(|l| l.nlink <= 1))
        };
        let read_only_open = f.flags & libc::O_ACCMODE == libc::O_RDONLY;
        // Lower hard links (the index) are left to the daemon, as before.
        let lower_ok = lower
            && self.cfg.lower_passthrough
            && read_only_open
            && single_link
            && !self.cfg.read_only;
        let mut io = h.node.io.lock();
        let mut mode = h.mode.lock();
        let allowed = upper || self.cfg.read_only || lower_ok;
        if !self.passthrough.load(Ordering::Relaxed) || io.cached_opens > 0 {
            return Ok(cached_plan(&mut io, &mut mode));
        }
        if io.pt_opens > 0 {
            let Some((b, b_upper)) = io.backing.clone() else {
                log::error!(
                    "passthrough opens without a backing file on {}",
                    h.node.st_ino
                );
                return err(libc::EIO);
            };
            let direct_io = if allowed && b_upper == upper {
                false
            } else if !b_upper && !lower && !self.cfg.read_only && read_only_open {
                // Copied up while opens passed through to the lower file are live.
                true
            } else {
                // A write open racing with the first lower passthrough open (refused
                // before its copy-up otherwise): the kernel would fail it with EIO.
                log::debug!("passthrough backing mismatch on inode {}", h.node.st_ino);
                return err(libc::ETXTBSY);
            };
            io.pt_opens += 1;
            *mode = IoMode::Passthrough;
            if lower_ok {
                stay_on_lower(f, &mut io);
            }
            return Ok(IoPlan::Passthrough {
                backing: b,
                direct_io,
            });
        }
        // A first open passed through to the lower file not while an open for writing
        // waits for such opens to be closed: it would wait for this one too (page-cached
        // instead; the writer's open then is too).
        if !allowed || (lower_ok && io.writers_waiting > 0) {
            return Ok(cached_plan(&mut io, &mut mode));
        }
        match make_backing(&fd) {
            Ok(b) => {
                let b = Arc::new(b);
                io.backing = Some((b.clone(), upper));
                io.pt_opens = 1;
                io.cache_valid = false;
                *mode = IoMode::Passthrough;
                if lower_ok {
                    stay_on_lower(f, &mut io);
                }
                Ok(IoPlan::Passthrough {
                    backing: b,
                    direct_io: false,
                })
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

    /// Read up to `size` bytes at `off` into a new vector (for callers without a FUSE
    /// reply: tests and tools). Always `pread`, never the mapping of a lower file: a copy
    /// out of a mapping in user space would raise SIGBUS on a lower file truncated behind
    /// layerfs's back (the FUSE path gets EFAULT from the kernel instead).
    pub fn read(&self, fh: u64, off: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let fd = self.file_fd(&h)?;
        let mut buf = vec![0u8; size as usize];
        let n = pread_full(fd.as_fd(), &mut buf, off)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn read_with<R>(
        &self,
        fh: u64,
        off: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8]>) -> R,
    ) -> R {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply(Err(e)),
        };
        let map = lower_map(&h, self.cfg.read_only);
        read_from(map, || self.file_fd(&h), off, size, reply)
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
        self.kill_privs_on_write(&h.node, who)?;
        let fd = self.file_fd(&h)?;
        self.write_fd(&fd, off, data)
    }

    /// Before a write by `who` (see [`Overlay::write_as`]): drop set-id bits and the file
    /// capability as the VFS does.
    pub(crate) fn kill_privs_on_write(
        &self,
        node: &Node,
        who: Option<(&Caller, bool)>,
    ) -> Result<()> {
        if let Some((who, kill)) = who {
            if self.kill_privs(node, Kill::Write, who, Some(!kill))? {
                self.invalidate_attr(node.id);
            }
        }
        Ok(())
    }

    /// Write all of `data` at `off` to the real file `fd`: the number of bytes written.
    pub(crate) fn write_fd(&self, fd: &OwnedFd, off: u64, data: &[u8]) -> Result<u32> {
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
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        let node = self.node(ino)?;
        let (dir, name) = self.real_loc(&node)?;
        sys::readlinkat(dir.as_fd(), &name)
    }
}
