//! `impl fuser::Filesystem`: a thin adapter. Each callback calls one `Overlay` method and
//! turns its `Result` into a reply; errors become errno through `Error::errno`, the one
//! mapping.

use crate::attr::SetAttr;
use crate::counters::Op;
use crate::dir::{Caller, NewKind};
use crate::error::Error;
use crate::file::IoPlan;
use crate::overlay::{Attr, Overlay};
use crate::sys;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Fs {
    pub ov: Arc<Overlay>,
    pub ttl: Duration,
    pub acl: bool,
    /// Try FUSE passthrough for regular-file I/O.
    pub passthrough: bool,
    /// The kernel opens directories without OPENDIR once told ENOSYS (set at init).
    pub no_opendir: bool,
    /// `noopen`: OPEN is answered ENOSYS, so the kernel opens regular files alone and
    /// sends their I/O with handle 0 (see `ino_io.rs`).
    pub noopen: bool,
}

fn errno(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

fn ts(t: (i64, i64)) -> SystemTime {
    if t.0 >= 0 {
        UNIX_EPOCH + Duration::new(t.0 as u64, t.1 as u32)
    } else {
        UNIX_EPOCH - Duration::new((-t.0) as u64, 0) + Duration::from_nanos(t.1 as u64)
    }
}

fn file_type(kind: u32) -> FileType {
    match kind {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.size,
        blocks: st.blocks,
        atime: ts(st.atime),
        mtime: ts(st.mtime),
        ctime: ts(st.ctime),
        crtime: UNIX_EPOCH,
        kind: file_type(st.kind()),
        perm: (st.mode & 0o7777) as u16,
        nlink: st.nlink.min(u32::MAX as u64) as u32,
        uid: st.uid,
        gid: st.gid,
        rdev: st.rdev as u32,
        blksize: st.blksize as u32,
        flags: 0,
    }
}

fn time_spec(t: Option<TimeOrNow>) -> sys::TimeSpec {
    match t {
        None => None,
        Some(TimeOrNow::Now) => Some(None),
        Some(TimeOrNow::SpecificTime(t)) => Some(Some(match t.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
            Err(e) => {
                let d = e.duration();
                let mut s = -(d.as_secs() as i64);
                let mut ns = d.subsec_nanos() as i64;
                if ns > 0 {
                    s -= 1;
                    ns = 1_000_000_000 - ns;
                }
                (s, ns)
            }
        })),
    }
}

/// Attributes of an entry the kernel keeps no inode for: `.`/`..` in readdirplus, and
/// (with ino 0) a negative lookup.
fn placeholder_attr(ino: u64, kind: FileType) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind,
        perm: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

impl Fs {
    fn entry(&self, reply: ReplyEntry, r: crate::error::Result<(Arc<crate::inode::Node>, Attr)>) {
        match r {
            Ok((node, attr)) => {
                let generation = node.generation.load(std::sync::atomic::Ordering::Relaxed);
                reply.entry(&self.ttl, &file_attr(&attr), Generation(generation))
            }
            Err(e) => {
                log::debug!("entry reply error: {e}");
                reply.error(errno(&e))
            }
        }
    }
    fn empty(&self, reply: ReplyEmpty, what: &str, r: crate::error::Result<()>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => {
                log::debug!("{what}: {e}");
                reply.error(errno(&e))
            }
        }
    }
}

/// Answer an open. One that has to wait (see [`Overlay::open_must_wait`]) is answered
/// later, from the thread that releases the last open passed through to the lower file or
/// at `deadline`, so no worker thread waits (the release has to get through).
fn open_file(
    ov: &Arc<Overlay>,
    ino: u64,
    flags: i32,
    who: Caller,
    reply: ReplyOpen,
    deadline: Instant,
) {
    let late = Instant::now() >= deadline;
    let defer = |reply: ReplyOpen| {
        let again = ov.clone();
        ov.defer_open(
            ino,
            flags,
            deadline,
            Box::new(move || open_file(&again, ino, flags, who, reply, deadline)),
        )
    };
    if !late && ov.open_must_wait(ino, flags) {
        return defer(reply);
    }
    let fh = match ov.open_as(ino, flags, Some(&who)) {
        Ok(fh) => fh,
        Err(e) if e.is(libc::ETXTBSY) && !late && ov.open_must_wait(ino, flags) => {
            return defer(reply)
        }
        Err(e) => {
            log::debug!("open: {e}");
            return reply.error(errno(&e));
        }
    };
    match ov.plan_io(fh, |fd| reply.open_backing(fd)) {
        Ok(IoPlan::Passthrough { backing, direct_io }) => {
            reply.opened_passthrough(FileHandle(fh), pt_flags(direct_io), &backing)
        }
        Ok(IoPlan::Cached { keep_cache }) => {
            let flags = if keep_cache {
                FopenFlags::FOPEN_KEEP_CACHE
            } else {
                FopenFlags::empty()
            };
            reply.opened(FileHandle(fh), flags)
        }
        Err(e) => {
            ov.release(fh);
            if e.is(libc::ETXTBSY) && !late && ov.open_must_wait(ino, flags) {
                return defer(reply);
            }
            reply.error(errno(&e))
        }
    }
}

/// Open flags besides FOPEN_PASSTHROUGH (which fuser adds) for a passthrough open.
fn pt_flags(direct_io: bool) -> FopenFlags {
    if direct_io {
        FopenFlags::FOPEN_DIRECT_IO
    } else {
        FopenFlags::empty()
    }
}

impl Filesystem for Fs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let mut want = InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_EXPORT_SUPPORT
            | InitFlags::FUSE_CACHE_SYMLINKS
            // The daemon drops set-id bits and file capabilities on write, truncate and
            // chown (Overlay::kill_privs), with the VFS's rules: the kernel's own FUSE
            // fallback keeps set-group-id without group-execute. Also makes the kernel
            // skip the security.capability GETXATTR on repeated writes (SB_NOSEC).
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        if self.acl {
            want |= InitFlags::FUSE_POSIX_ACL;
        }
        if !self.noopen {
            // O_TRUNC handled by OPEN. Not with `noopen`: an open without OPEN would then
            // truncate nothing (the kernel skips the SETATTR it sends otherwise).
            want |= InitFlags::FUSE_ATOMIC_O_TRUNC;
        }
        for f in want.iter() {
            if config.add_capabilities(f).is_err() {
                log::debug!("kernel lacks FUSE capability {f:?}");
            }
        }
        self.no_opendir = config
            .capabilities()
            .contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if self.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.ov.passthrough.store(true, Ordering::Relaxed);
            log::info!("FUSE passthrough enabled");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.ov.counters.requests.count(Op::Lookup);
        match self.ov.lookup(parent.0, name.as_bytes()) {
            // A negative entry (node id 0) the kernel may cache like a positive one: names
            // only appear through this mount, and the kernel replaces the negative dentry
            // when one is created here.
            Err(e) if e.is(libc::ENOENT) && !self.ttl.is_zero() => reply.entry(
                &self.ttl,
                &placeholder_attr(0, FileType::RegularFile),
                Generation(0),
            ),
            r => self.entry(reply, r),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.ov.counters.requests.count(Op::Forget);
        self.ov.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.ov.counters.requests.count(Op::Getattr);
        let r = match fh {
            Some(fh) => self.ov.getattr_fh(ino.0, fh.0),
            None => self.ov.getattr(ino.0),
        };
        match r {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.ov.counters.requests.count(Op::Setattr);
        let a = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_spec(atime),
            mtime: time_spec(mtime),
            fh: fh.map(|f| f.0),
            who: Some(caller(req)),
        };
        match self.ov.setattr(ino.0, a) {
            Ok(a) => reply.attr(&self.ttl, &file_attr(&a)),
            Err(e) => {
                log::debug!("setattr: {e}");
                reply.error(errno(&e))
            }
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.ov.counters.requests.count(Op::Readlink);
        match self.ov.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.ov.counters.requests.count(Op::Mknod);
        let kind = if mode & libc::S_IFMT == libc::S_IFREG {
            NewKind::File { mode }
        } else {
            NewKind::Node {
                mode,
                rdev: rdev as u64,
            }
        };
        self.entry(
            reply,
            self.ov
                .create_object(parent.0, name.as_bytes(), kind, caller(req)),
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.ov.counters.requests.count(Op::Mkdir);
        self.entry(
            reply,
            self.ov.create_object(
                parent.0,
                name.as_bytes(),
                NewKind::Dir { mode },
                caller(req),
            ),
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.ov.counters.requests.count(Op::Unlink);
        self.empty(reply, "unlink", self.ov.unlink(parent.0, name.as_bytes()))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.ov.counters.requests.count(Op::Rmdir);
        self.empty(reply, "rmdir", self.ov.rmdir(parent.0, name.as_bytes()))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        self.ov.counters.requests.count(Op::Symlink);
        let kind = NewKind::Symlink {
            target: target.as_os_str().as_bytes().to_vec(),
        };
        self.entry(
            reply,
            self.ov
                .create_object(parent.0, link_name.as_bytes(), kind, caller(req)),
        )
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Rename);
        self.empty(
            reply,
            "rename",
            self.ov.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.ov.counters.requests.count(Op::Link);
        self.entry(reply, self.ov.link(ino.0, newparent.0, newname.as_bytes()))
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.ov.counters.requests.count(Op::Open);
        if self.noopen {
            // Once: the kernel then opens regular files without OPEN and RELEASE.
            return reply.error(Errno::ENOSYS);
        }
        let deadline = std::time::Instant::now() + crate::file::PINNED_WAIT;
        open_file(&self.ov, ino.0, flags.0, caller(req), reply, deadline);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.ov.counters.requests.count(Op::Read);
        self.ov
            .read_file_with(ino.0, fh.0, offset, size, |r| match r {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(errno(&e)),
            })
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.ov.counters.requests.count(Op::Write);
        // A write-back of cached pages (mmap) drops nothing, as on the VFS.
        let who = caller(req);
        let who = (!write_flags.contains(WriteFlags::FUSE_WRITE_CACHE)).then(|| {
            (
                &who,
                write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            )
        });
        match self.ov.write_file(ino.0, fh.0, offset, data, who) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Flush);
        // Nothing to flush (writes reach the real file before they are answered, and the
        // kernel keeps POSIX locks itself). ENOSYS tells the kernel to stop sending FLUSH,
        // saving a round trip on every close(2).
        reply.error(Errno::ENOSYS);
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Release);
        self.ov.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Fsync);
        self.empty(reply, "fsync", self.ov.fsync_file(ino.0, fh.0, datasync))
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.ov.counters.requests.count(Op::Opendir);
        // ENOSYS, once: the kernel then opens directories without asking (no OPENDIR and
        // no RELEASEDIR round trip per opendir(3)) and caches every listing
        // (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE). It drops a cached listing itself when an
        // entry is created, removed or renamed through the mount; a move of the
        // directory itself (its `..`) is invalidated by the rename. Reads come by inode,
        // so a kernel without that support (before 5.1) gets the same flags and no handle.
        if self.no_opendir {
            reply.error(Errno::ENOSYS);
        } else {
            let flags = FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE;
            reply.opened(FileHandle(0), flags);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.ov.counters.requests.count(Op::Readdir);
        let r = self.ov.readdir(ino.0, offset, |next, e| {
            reply.add(
                INodeNo(e.ino),
                next,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.ov.counters.requests.count(Op::Readdirplus);
        let ttl = self.ttl;
        let r = self.ov.readdirplus(ino.0, offset, |next, e, found| {
            let name = OsStr::from_bytes(&e.name);
            match found {
                Some((node, attr)) => {
                    let generation = Generation(node.generation.load(Ordering::Relaxed));
                    reply.add(
                        INodeNo(e.ino),
                        next,
                        name,
                        &ttl,
                        &file_attr(attr),
                        generation,
                    )
                }
                None => {
                    // `.`/`..`: the kernel takes no reference for these.
                    let fa = placeholder_attr(e.ino, FileType::Directory);
                    reply.add(
                        INodeNo(e.ino),
                        next,
                        name,
                        &Duration::ZERO,
                        &fa,
                        Generation(0),
                    )
                }
            }
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        // (only from kernels that cannot open directories without OPENDIR: no handle)
        self.ov.counters.requests.count(Op::Releasedir);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Fsyncdir);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.ov.counters.requests.count(Op::Statfs);
        match self.ov.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
            ),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Setxattr);
        self.empty(
            reply,
            "setxattr",
            self.ov.setxattr(ino.0, name.as_bytes(), value, flags),
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.ov.counters.requests.count(Op::Getxattr);
        match self.ov.getxattr(ino.0, name.as_bytes(), size) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.ov.counters.requests.count(Op::Listxattr);
        match self.ov.listxattr(ino.0) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() > size as usize => reply.error(Errno::from_i32(libc::ERANGE)),
            Ok(v) => reply.data(&v),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.ov.counters.requests.count(Op::Removexattr);
        self.empty(
            reply,
            "removexattr",
            self.ov.removexattr(ino.0, name.as_bytes()),
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.ov.counters.requests.count(Op::Create);
        match self
            .ov
            .create(parent.0, name.as_bytes(), mode, flags, caller(req))
        {
            Ok((node, attr, fh)) => {
                let generation = Generation(node.generation.load(Ordering::Relaxed));
                let fa = file_attr(&attr);
                // The same I/O-mode bookkeeping as open: the kernel fails a later open of
                // the file with EIO if it is told passthrough while this one is cached.
                match self.ov.plan_io(fh, |fd| reply.open_backing(fd)) {
                    Ok(IoPlan::Passthrough { backing, direct_io }) => reply.created_passthrough(
                        &self.ttl,
                        &fa,
                        generation,
                        FileHandle(fh),
                        pt_flags(direct_io),
                        &backing,
                    ),
                    Ok(IoPlan::Cached { .. }) => reply.created(
                        &self.ttl,
                        &fa,
                        generation,
                        FileHandle(fh),
                        FopenFlags::empty(),
                    ),
                    Err(e) => {
                        self.ov.release(fh);
                        self.ov.forget(node.id, 1);
                        reply.error(errno(&e))
                    }
                }
            }
            Err(e) => {
                log::debug!("create: {e}");
                reply.error(errno(&e))
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        self.ov.counters.requests.count(Op::Fallocate);
        self.empty(
            reply,
            "fallocate",
            self.ov.fallocate_file(ino.0, fh.0, offset, length, mode),
        )
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        self.ov.counters.requests.count(Op::Lseek);
        match self.ov.lseek_file(ino.0, fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(&e)),
        }
    }
}
