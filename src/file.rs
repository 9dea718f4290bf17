//! Open files and directories, and file I/O on the real objects (the kernel's file.c).

use crate::copy_up::Data;
use crate::dir::{Caller, NewKind};
use crate::error::{err, Error, Result};
use crate::inode::Node;
use crate::overlay::{Attr, Overlay};
use crate::readdir::DirEntry;
use crate::sys;
use parking_lot::Mutex;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub enum HandleKind {
    File(OwnedFd),
    Dir(Mutex<Vec<DirEntry>>),
}

pub struct Handle {
    pub node: Arc<Node>,
    pub kind: HandleKind,
}

impl Handle {
    pub fn fd(&self) -> Result<&OwnedFd> {
        match &self.kind {
            HandleKind::File(fd) => Ok(fd),
            HandleKind::Dir(_) => err(libc::EISDIR),
        }
    }
}

fn wants_write(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

impl Overlay {
    fn add_handle(&self, node: Arc<Node>, kind: HandleKind) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.insert(fh, Arc::new(Handle { node, kind }));
        fh
    }

    pub fn handle(&self, fh: u64) -> Result<Arc<Handle>> {
        self.handles
            .get(&fh)
            .map(|h| h.clone())
            .ok_or_else(|| Error::from_errno(libc::EBADF))
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
        sys::openat(dir.as_fd(), &name, f, 0)
    }

    pub fn open(&self, ino: u64, flags: i32) -> Result<u64> {
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
        let fd = self.open_real(&node, flags)?;
        Ok(self.add_handle(node, HandleKind::File(fd)))
    }

    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> Result<(Arc<Node>, Attr, u64)> {
        let (node, attr) = self.create_object(parent, name, NewKind::File { mode }, who)?;
        let fd = self.open_real(&node, flags & !libc::O_TRUNC)?;
        let fh = self.add_handle(node.clone(), HandleKind::File(fd));
        Ok((node, attr, fh))
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(&fh);
    }

    pub fn read(&self, fh: u64, off: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let fd = h.fd()?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let n = sys::pread(fd.as_fd(), &mut buf[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, off: u64, data: &[u8]) -> Result<u32> {
        let h = self.handle(fh)?;
        let fd = h.fd()?;
        let mut done = 0usize;
        while done < data.len() {
            let n = sys::pwrite(fd.as_fd(), &data[done..], off + done as u64)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        Ok(done as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<()> {
        let h = self.handle(fh)?;
        match &h.kind {
            HandleKind::File(fd) => sys::fsync(fd.as_fd(), datasync),
            HandleKind::Dir(_) => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, off: u64, len: u64, mode: i32) -> Result<()> {
        let h = self.handle(fh)?;
        sys::fallocate(h.fd()?.as_fd(), mode, off, len)
    }

    pub fn lseek(&self, fh: u64, off: i64, whence: i32) -> Result<i64> {
        let h = self.handle(fh)?;
        sys::lseek(h.fd()?.as_fd(), off, whence)
    }

    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let node = self.node(ino)?;
        if !node.is_dir() {
            return err(libc::ENOTDIR);
        }
        let entries = self.dir_snapshot(&node)?;
        Ok(self.add_handle(node, HandleKind::Dir(Mutex::new(entries))))
    }

    /// Feed entries from position `off` on to `add(next_offset, entry)` until it returns
    /// true (buffer full). Position 0 (a new stream or rewinddir) refreshes the snapshot, so
    /// changes made since opendir become visible as POSIX asks; otherwise the snapshot keeps
    /// offsets stable while the directory changes.
    pub fn readdir(
        &self,
        fh: u64,
        off: u64,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let h = self.handle(fh)?;
        let HandleKind::Dir(entries) = &h.kind else {
            return err(libc::ENOTDIR);
        };
        if off == 0 {
            let fresh = self.dir_snapshot(&h.node)?;
            *entries.lock() = fresh;
        }
        let e = entries.lock();
        for (i, d) in e.iter().enumerate().skip(off as usize) {
            if add(i as u64 + 1, d) {
                break;
            }
        }
        Ok(())
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let node = self.node(ino)?;
        let (dir, name) = self.real_loc(&node)?;
        sys::readlinkat(dir.as_fd(), &name)
    }
}
