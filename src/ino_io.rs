//! Regular-file I/O by inode, for `noopen` (the kernel's no-open mode).
//!
//! With `noopen` the daemon answers the first OPEN with ENOSYS; the kernel then opens
//! regular files without asking (no OPEN and no RELEASE round trip per open(2)), keeps
//! their page cache across opens (`FOPEN_KEEP_CACHE`), and sends READ, WRITE, FSYNC,
//! FALLOCATE, LSEEK, GETATTR and SETATTR with file handle 0. Files made by CREATE still
//! get a real handle (see `file.rs`). A request with handle 0 is served from the node's
//! current data: the upper copy (also an orphan in the workdir), the hard-link index
//! copy, or the lower file. The fds are kept in a small per-overlay LRU cache keyed by node
//! id ([`INO_FDS`] entries, so the daemon's fd count stays bounded whatever the number of
//! inodes); an entry remembers where the node's data was when it was opened and is
//! re-opened when that has changed (a copy-up, an orphan copy), and it is dropped when
//! the kernel forgets the node (an orphan's space is then freed at once).
//!
//! A write copies the file up first (the usual atomic copy-up, with all its data), since
//! nothing was copied up at open; a lower file removed from the union while the kernel
//! still holds it is copied into the workdir as its orphan instead.

use crate::copy_up::Data;
use crate::dir::Caller;
use crate::error::{err, Result};
use crate::file::{map_lower, read_from};
use crate::inode::Node;
use crate::overlay::Overlay;
use crate::sys;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, OnceLock};

/// How many fds of regular files (by node) the `noopen` cache keeps open.
pub const INO_FDS: usize = 512;

/// Where a node's data is, as far as an fd of it is concerned: an fd opened on one of
/// these stays right until the node's data moves to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataLoc {
    Lower,
    Index,
    Upper,
    Orphan,
}

fn data_loc(node: &Node) -> DataLoc {
    let s = node.s.lock();
    match (s.in_upper, s.indexed) {
        (true, _) if s.deleted && s.orphan.is_some() => DataLoc::Orphan,
        (true, _) => DataLoc::Upper,
        (false, true) => DataLoc::Index,
        (false, false) => DataLoc::Lower,
    }
}

/// An open real file of a node, shared by every request for it.
pub struct InoFile {
    fd: Arc<OwnedFd>,
    loc: DataLoc,
    readable: bool,
    writable: bool,
    /// A mapping to answer reads from (large lower files, see `file::map_lower`).
    map: OnceLock<Option<sys::Mmap>>,
}

/// The bounded cache of [`InoFile`]s, least recently used evicted first.
pub struct InoFiles(parking_lot::Mutex<lru::LruCache<u64, Arc<InoFile>>>);

impl Default for InoFiles {
    fn default() -> Self {
        let cap = NonZeroUsize::new(INO_FDS).unwrap_or(NonZeroUsize::MIN);
        InoFiles(parking_lot::Mutex::new(lru::LruCache::new(cap)))
    }
}

impl InoFiles {
    /// Close the node's fd, if one is cached (the node was forgotten).
    pub fn remove(&self, id: u64) {
        let f = self.0.lock().pop(&id);
        drop(f); // (closed outside the lock)
    }
    pub fn len(&self) -> usize {
        self.0.lock().len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Overlay {
    /// An fd of node `node`'s current data, for reading, or for reading and writing
    /// (`write`; the caller has copied the node up).
    fn ino_file(&self, node: &Arc<Node>, write: bool) -> Result<Arc<InoFile>> {
        let loc = data_loc(node);
        let fits = |f: &InoFile| f.loc == loc && if write { f.writable } else { f.readable };
        if let Some(f) = self.ino_files.0.lock().get(&node.id) {
            if fits(f) {
                return Ok(f.clone());
            }
        }
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        if loc == DataLoc::Upper && node.s.lock().deleted {
            // Removed from the union without an orphan (the kernel did not hold it then):
            // its old name may hold another object now.
            return err(libc::ENOENT);
        }
        let (dir, name) = self.real_loc(node)?;
        if name.is_empty() {
            return err(libc::EISDIR);
        }
        let open = |flags| sys::openat(dir.as_fd(), &name, flags, 0);
        let (fd, readable) = match (
            write,
            open(if write { libc::O_RDWR } else { libc::O_RDONLY }),
        ) {
            (true, Err(e)) if e.is(libc::EACCES) => (open(libc::O_WRONLY)?, false),
            (_, r) => (r?, true),
        };
        let f = Arc::new(InoFile {
            fd: Arc::new(fd),
            loc,
            readable,
            writable: write,
            map: OnceLock::new(),
        });
        let evicted = self.ino_files.0.lock().push(node.id, f.clone());
        drop(evicted); // (closed outside the lock)
        if self.inodes.get(node.id).is_none() {
            // forgotten meanwhile: do not keep its file open
            self.ino_files.remove(node.id);
        }
        Ok(f)
    }

    /// Bring the node's data into the upper before it is changed through the inode (with
    /// `noopen` no copy-up happened at open): the usual copy-up, or for a lower file
    /// removed from the union while the kernel holds it (an fd opened before the unlink),
    /// a copy into the workdir as its orphan. `data`: as for [`Overlay::copy_up`].
    pub(crate) fn copy_up_held(&self, node: &Arc<Node>, data: Data) -> Result<()> {
        self.check_writable()?;
        let lower_deleted = || {
            let s = node.s.lock();
            s.kind == libc::S_IFREG && s.deleted && !s.in_upper && !s.indexed
        };
        if lower_deleted() {
            return self.with_space_retry(|| self.copy_up_orphan(node, data));
        }
        let r = {
            let _g = self.tree.read_recursive();
            self.copy_up(node, data)
        };
        match r {
            Err(e) if e.is(libc::ENOENT) && lower_deleted() => {
                self.with_space_retry(|| self.copy_up_orphan(node, data))
            }
            r => r,
        }
    }

    fn read_ino_with<R>(
        &self,
        ino: u64,
        off: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8]>) -> R,
    ) -> R {
        let f = match self.node(ino).and_then(|n| self.ino_file(&n, false)) {
            Ok(f) => f,
            Err(e) => return reply(Err(e)),
        };
        let map = match f.loc {
            DataLoc::Lower => f.map.get_or_init(|| map_lower(&f.fd, ino)).as_ref(),
            _ => None,
        };
        read_from(map, || Ok(f.fd.clone()), off, size, reply)
    }

    /// Read from open file `fh` of inode `ino`, or by inode for handle 0 (`noopen`).
    pub fn read_file_with<R>(
        &self,
        ino: u64,
        fh: u64,
        off: u64,
        size: u32,
        reply: impl FnOnce(Result<&[u8]>) -> R,
    ) -> R {
        if fh == 0 {
            self.read_ino_with(ino, off, size, reply)
        } else {
            self.read_with(fh, off, size, reply)
        }
    }

    /// Write to open file `fh` of inode `ino`, or by inode for handle 0 (`noopen`): copy-up
    /// first, then set-id bits and file capabilities dropped as for any write (see
    /// [`Overlay::write_as`]).
    pub fn write_file(
        &self,
        ino: u64,
        fh: u64,
        off: u64,
        data: &[u8],
        who: Option<(&Caller, bool)>,
    ) -> Result<u32> {
        if fh != 0 {
            return self.write_as(fh, off, data, who);
        }
        let node = self.node(ino)?;
        self.copy_up_held(&node, Data::Full)?;
        self.kill_privs_on_write(&node, who)?;
        let f = self.ino_file(&node, true)?;
        self.write_fd(&f.fd, off, data)
    }

    /// fsync of open file `fh`, or by inode for handle 0: a file whose data is still in a
    /// lower layer has nothing unwritten.
    pub fn fsync_file(&self, ino: u64, fh: u64, datasync: bool) -> Result<()> {
        if fh != 0 {
            return self.fsync(fh, datasync);
        }
        let node = self.node(ino)?;
        if data_loc(&node) == DataLoc::Lower {
            return Ok(());
        }
        let f = self.ino_file(&node, false)?;
        sys::fsync(f.fd.as_fd(), datasync)
    }

    /// fallocate on open file `fh`, or by inode (after a copy-up) for handle 0.
    pub fn fallocate_file(&self, ino: u64, fh: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        if fh != 0 {
            return self.fallocate(fh, off, len, mode);
        }
        let node = self.node(ino)?;
        self.copy_up_held(&node, Data::Full)?;
        let f = self.ino_file(&node, true)?;
        sys::fallocate(f.fd.as_fd(), mode, off, len)
    }

    /// lseek (SEEK_DATA/SEEK_HOLE) on open file `fh`, or by inode for handle 0.
    pub fn lseek_file(&self, ino: u64, fh: u64, off: i64, whence: i32) -> Result<i64> {
        if fh != 0 {
            return self.lseek(fh, off, whence);
        }
        let node = self.node(ino)?;
        let f = self.ino_file(&node, false)?;
        sys::lseek(f.fd.as_fd(), off, whence)
    }

    /// The cached fd of `node`'s current data, if there is one.
    pub(crate) fn cached_ino_fd(&self, node: &Node) -> Option<Arc<OwnedFd>> {
        let loc = data_loc(node);
        let files = self.ino_files.0.lock();
        files
            .peek(&node.id)
            .filter(|f| f.loc == loc)
            .map(|f| f.fd.clone())
    }

    /// The open fds kept for I/O by inode (`noopen`), for the counters.
    pub fn ino_fds(&self) -> usize {
        self.ino_files.len()
    }
}
