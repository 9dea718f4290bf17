//! Every raw syscall layerfs makes, and all of its `unsafe`.
//!
//! Objects inside a layer are always reached as (directory fd, single name component) with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, so no symlink inside a layer is ever followed; paths
//! of several components (redirects, the offline tools) go through [`openat2_beneath`] with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`.
#![allow(unsafe_code)]

use crate::error::{err, Error, Result};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

pub type Fd<'a> = BorrowedFd<'a>;

fn cstr(name: &[u8]) -> Result<CString> {
    CString::new(name).map_err(|_| Error::from_errno(libc::EINVAL))
}

fn check(ret: libc::c_int) -> Result<libc::c_int> {
    if ret < 0 {
        Err(Error::from_errno(last_errno()))
    } else {
        Ok(ret)
    }
}

fn check_size(ret: libc::ssize_t) -> Result<usize> {
    if ret < 0 {
        Err(Error::from_errno(last_errno()))
    } else {
        Ok(ret as usize)
    }
}

pub fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Retry a syscall on EINTR.
fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    loop {
        match f() {
            Err(e) if e.is(libc::EINTR) => continue,
            r => return r,
        }
    }
}

/// The subset of `struct stat` layerfs uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    pub nlink: u64,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u64,
    pub size: u64,
    pub blksize: u64,
    pub blocks: u64,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl Stat {
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    pub fn is_reg(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
    pub fn is_lnk(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }
    pub fn is_chr(&self) -> bool {
        self.kind() == libc::S_IFCHR
    }
    fn from_raw(st: &libc::stat64) -> Stat {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            rdev: st.st_rdev,
            size: st.st_size as u64,
            blksize: st.st_blksize as u64,
            blocks: st.st_blocks as u64,
            atime: (st.st_atime, st.st_atime_nsec),
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; `name` empty means the fd itself.
pub fn fstatat(dir: Fd, name: &[u8]) -> Result<Stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat64>::zeroed();
    let flags = if name.is_empty() {
        libc::AT_SYMLINK_NOFOLLOW | libc::AT_EMPTY_PATH
    } else {
        libc::AT_SYMLINK_NOFOLLOW
    };
    let c = cstr(name)?;
    retry(|| {
        check(unsafe { libc::fstatat64(dir.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) })
    })?;
    Ok(Stat::from_raw(unsafe { &st.assume_init() }))
}

pub fn fstat(fd: Fd) -> Result<Stat> {
    fstatat(fd, b"")
}

/// Open a single component `name` in `dir`, never following a symlink.
pub fn openat(dir: Fd, name: &[u8], flags: i32, mode: u32) -> Result<OwnedFd> {
    let c = cstr(name)?;
    let fd = retry(|| {
        check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a path of one or more components inside `root`, resolving it as if `root` were `/`
/// and refusing every symlink on the way (`RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS`). Used for redirect targets and the offline tools.
pub fn openat2_beneath(root: Fd, path: &[u8], flags: i32) -> Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
    const RESOLVE_NO_SYMLINKS: u64 = 0x04;
    const RESOLVE_IN_ROOT: u64 = 0x10;
    let p = if path.is_empty() { &b"."[..] } else { path };
    let c = cstr(p)?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    let fd = retry(|| {
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                c.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        check(r as libc::c_int)
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a directory given by an absolute or relative host path (layer roots, workdir).
pub fn open_dir_path(path: &std::path::Path) -> Result<OwnedFd> {
    let c = cstr(path.as_os_str().as_bytes())?;
    let fd = retry(|| {
        check(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })
    })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Open a subdirectory of `dir` for reading entries and xattrs; falls back to `O_PATH` when
/// the directory is not readable (a rootless user on a mode-0 lower directory).
pub fn open_subdir(dir: Fd, name: &[u8]) -> Result<OwnedFd> {
    match openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        Err(e) if e.is(libc::EACCES) || e.is(libc::EPERM) => {
            openat(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0)
        }
        r => r,
    }
}

pub fn dup(fd: Fd) -> Result<OwnedFd> {
    fd.try_clone_to_owned().map_err(Error::from)
}

pub fn mkdirat(dir: Fd, name: &[u8], mode: u32) -> Result<()> {
    let c = cstr(name)?;
    retry(|| check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })).map(drop)
}

pub fn mknodat(dir: Fd, name: &[u8], mode: u32, rdev: u64) -> Result<()> {
    let c = cstr(name)?;
    retry(|| check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) })).map(drop)
}

pub fn symlinkat(target: &[u8], dir: Fd, name: &[u8]) -> Result<()> {
    let t = cstr(target)?;
    let c = cstr(name)?;
    retry(|| check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) })).map(drop)
}

pub fn linkat(olddir: Fd, oldname: &[u8], newdir: Fd, newname: &[u8]) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    retry(|| {
        check(unsafe {
            libc::linkat(
                olddir.as_raw_fd(),
                o.as_ptr(),
                newdir.as_raw_fd(),
                n.as_ptr(),
                0,
            )
        })
    })
    .map(drop)
}

pub fn unlinkat(dir: Fd, name: &[u8], is_dir: bool) -> Result<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    retry(|| check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })).map(drop)
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;
pub const RENAME_WHITEOUT: u32 = 4;

pub fn renameat2(olddir: Fd, oldname: &[u8], newdir: Fd, newname: &[u8], flags: u32) -> Result<()> {
    let o = cstr(oldname)?;
    let n = cstr(newname)?;
    retry(|| {
        check(unsafe {
            libc::renameat2(
                olddir.as_raw_fd(),
                o.as_ptr(),
                newdir.as_raw_fd(),
                n.as_ptr(),
                flags,
            )
        })
    })
    .map(drop)
}

pub fn readlinkat(dir: Fd, name: &[u8]) -> Result<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_char,
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// chown without following a symlink; `None` leaves an id unchanged.
pub fn fchownat(dir: Fd, name: &[u8], uid: Option<u32>, gid: Option<u32>) -> Result<()> {
    let c = cstr(name)?;
    let mut flags = libc::AT_SYMLINK_NOFOLLOW;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    let u = uid.unwrap_or(u32::MAX);
    let g = gid.unwrap_or(u32::MAX);
    retry(|| check(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), u, g, flags) })).map(drop)
}

/// chmod of `name` in `dir` (not for symlinks, whose mode cannot change on Linux).
pub fn fchmodat(dir: Fd, name: &[u8], mode: u32) -> Result<()> {
    if name.is_empty() {
        return fchmod_path_fd(dir, mode);
    }
    let c = cstr(name)?;
    retry(|| check(unsafe { libc::fchmodat(dir.as_raw_fd(), c.as_ptr(), mode & 0o7777, 0) }))
        .map(drop)
}

fn fchmod_path_fd(fd: Fd, mode: u32) -> Result<()> {
    // Works for O_PATH fds too, through /proc/self/fd.
    let p = proc_fd_path(fd.as_raw_fd(), None);
    let c = cstr(&p)?;
    retry(|| check(unsafe { libc::chmod(c.as_ptr(), mode & 0o7777) })).map(drop)
}

/// Timestamps: `None` = UTIME_OMIT, `Some(None)` = UTIME_NOW, `Some(Some(t))` = t.
pub type TimeSpec = Option<Option<(i64, i64)>>;

fn to_timespec(t: TimeSpec) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(None) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(Some((s, ns))) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
    }
}

pub fn utimensat(dir: Fd, name: &[u8], atime: TimeSpec, mtime: TimeSpec) -> Result<()> {
    let ts = [to_timespec(atime), to_timespec(mtime)];
    if name.is_empty() {
        let p = cstr(&proc_fd_path(dir.as_raw_fd(), None))?;
        return retry(|| {
            check(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) })
        })
        .map(drop);
    }
    let c = cstr(name)?;
    retry(|| {
        check(unsafe {
            libc::utimensat(
                dir.as_raw_fd(),
                c.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
    })
    .map(drop)
}

pub fn futimens(fd: Fd, atime: TimeSpec, mtime: TimeSpec) -> Result<()> {
    let ts = [to_timespec(atime), to_timespec(mtime)];
    retry(|| check(unsafe { libc::futimens(fd.as_raw_fd(), ts.as_ptr()) })).map(drop)
}

fn proc_fd_path(fd: RawFd, name: Option<&[u8]>) -> Vec<u8> {
    let mut p = format!("/proc/self/fd/{fd}").into_bytes();
    if let Some(n) = name {
        if !n.is_empty() {
            p.push(b'/');
            p.extend_from_slice(n);
        }
    }
    p
}

/// Where an xattr call acts: the directory fd itself (`name` empty) or the entry `name` in
/// it, never following a symlink at `name`.
fn xattr_path(dir: Fd, name: &[u8]) -> Result<(CString, bool)> {
    if name.contains(&b'/') {
        return err(libc::EINVAL);
    }
    let follow = name.is_empty();
    Ok((cstr(&proc_fd_path(dir.as_raw_fd(), Some(name)))?, follow))
}

/// The `*xattrat(2)` calls (Linux 6.13): an xattr of the entry (dir, name) reached with
/// one lookup of `name` in `dir`, where the path calls walk `/proc/self/fd/N/name` (a
/// procfs magic-link resolution each time: most of the cost of reading a missing xattr).
/// Used for a non-empty `name` (the fd itself takes the f*xattr calls), never following a
/// symlink at `name`; the first ENOSYS (an older kernel, a seccomp filter) switches them
/// off and the path calls serve from then on.
mod xattr_at {
    use super::{last_errno, CString, Fd};
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};

    // The same numbers in every architecture's table (added after the tables were unified).
    const SETXATTRAT: libc::c_long = 463;
    const GETXATTRAT: libc::c_long = 464;
    const LISTXATTRAT: libc::c_long = 465;
    const REMOVEXATTRAT: libc::c_long = 466;

    static OFF: AtomicBool = AtomicBool::new(false);

    /// `struct xattr_args` of the uapi.
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }

    /// Run one call; None when the calls are unavailable (the caller takes the path).
    fn call(f: impl FnOnce() -> libc::c_long) -> Option<isize> {
        if OFF.load(Ordering::Relaxed) {
            return None;
        }
        let r = f();
        if r < 0 && last_errno() == libc::ENOSYS {
            OFF.store(true, Ordering::Relaxed);
            return None;
        }
        Some(r as isize)
    }

    pub(super) fn get(dir: Fd, name: &CString, attr: &CString, buf: &mut [u8]) -> Option<isize> {
        let mut args = XattrArgs {
            value: if buf.is_empty() {
                0
            } else {
                buf.as_mut_ptr() as u64
            },
            size: buf.len() as u32,
            flags: 0,
        };
        // SAFETY: name and attr are NUL-terminated; args points at `buf.len()` writable
        // bytes (or none with size 0) and lives across the call.
        call(|| unsafe {
            libc::syscall(
                GETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &mut args as *mut XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        })
    }

    pub(super) fn set(
        dir: Fd,
        name: &CString,
        attr: &CString,
        value: &[u8],
        flags: i32,
    ) -> Option<isize> {
        let args = XattrArgs {
            value: value.as_ptr() as u64,
            size: value.len() as u32,
            flags: flags as u32,
        };
        // SAFETY: as in `get`; the kernel only reads `value`.
        call(|| unsafe {
            libc::syscall(
                SETXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args as *const XattrArgs,
                std::mem::size_of::<XattrArgs>(),
            )
        })
    }

    pub(super) fn remove(dir: Fd, name: &CString, attr: &CString) -> Option<isize> {
        // SAFETY: NUL-terminated strings.
        call(|| unsafe {
            libc::syscall(
                REMOVEXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
            )
        })
    }

    pub(super) fn list(dir: Fd, name: &CString, buf: &mut [u8]) -> Option<isize> {
        // SAFETY: `buf` has `buf.len()` writable bytes.
        call(|| unsafe {
            libc::syscall(
                LISTXATTRAT,
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                buf.as_mut_ptr(),
                buf.len(),
            )
        })
    }
}

/// name_to_handle_at(2) of (dir, name), or of `dir` itself when `name` is empty, never
/// following a final symlink: (handle type, handle bytes).
pub fn name_to_handle(dir: Fd, name: &[u8]) -> Result<(i32, Vec<u8>)> {
    const MAX_HANDLE_SZ: usize = 128;
    #[repr(C)]
    struct Handle {
        bytes: libc::c_uint,
        kind: libc::c_int,
        data: [u8; MAX_HANDLE_SZ],
    }
    let mut h = Handle {
        bytes: MAX_HANDLE_SZ as libc::c_uint,
        kind: 0,
        data: [0; MAX_HANDLE_SZ],
    };
    let mut mount_id: libc::c_int = 0;
    let c = cstr(name)?;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `h` is a `struct file_handle` with room for MAX_HANDLE_SZ bytes, as
    // `bytes` says; the kernel writes at most that much.
    check(unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut h as *mut Handle as *mut libc::file_handle,
            &mut mount_id,
            flags,
        )
    })?;
    let n = (h.bytes as usize).min(MAX_HANDLE_SZ);
    Ok((h.kind, h.data[..n].to_vec()))
}

/// The UUID of the filesystem `fd` is on (FS_IOC_GETFSUUID, Linux >= 6.5: the
/// superblock's s_uuid, as the kernel overlay records in origin file handles); None when
/// the filesystem has none or the kernel cannot tell.
pub fn fs_uuid(fd: Fd) -> Option<[u8; 16]> {
    #[repr(C)]
    struct FsUuid2 {
        len: u8,
        uuid: [u8; 16],
    }
    // _IOR(0x15, 0, struct fsuuid2)
    const FS_IOC_GETFSUUID: libc::c_ulong =
        (2 << 30) | ((std::mem::size_of::<FsUuid2>() as libc::c_ulong) << 16) | (0x15 << 8);
    let mut u = FsUuid2 {
        len: 0,
        uuid: [0; 16],
    };
    // SAFETY: the ioctl writes one `struct fsuuid2` into `u`.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            FS_IOC_GETFSUUID as _,
            &mut u as *mut FsUuid2,
        )
    };
    (r == 0 && u.len == 16).then_some(u.uuid)
}

/// Read an xattr; `Ok(None)` when it does not exist (or xattrs are unsupported).
pub fn getxattr(dir: Fd, name: &[u8], attr: &[u8]) -> Result<Option<Vec<u8>>> {
    let (p, follow) = xattr_path(dir, name)?;
    let a = cstr(attr)?;
    let mut buf = vec![0u8; 256];
    // `dir` itself: fgetxattr(2) spares the walk through /proc (it fails with EBADF only
    // on an O_PATH fd, which the path then serves).
    let mut by_fd = name.is_empty();
    let cname = cstr(name)?;
    loop {
        let at = if by_fd || name.is_empty() {
            None
        } else {
            xattr_at::get(dir, &cname, &a, &mut buf)
        };
        let r = unsafe {
            if let Some(r) = at {
                r
            } else if by_fd {
                libc::fgetxattr(
                    dir.as_raw_fd(),
                    a.as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                )
            } else if follow {
                libc::getxattr(
                    p.as_ptr(),
                    a.as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                )
            } else {
                libc::lgetxattr(
                    p.as_ptr(),
                    a.as_ptr(),
                    buf.as_mut_ptr() as *mut _,
                    buf.len(),
                )
            }
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(Some(buf));
        }
        match last_errno() {
            libc::ENODATA | libc::ENOTSUP => return Ok(None),
            libc::ERANGE if buf.len() < 65536 * 2 => {
                let want = buf.len() * 4;
                buf.resize(want.min(65536 * 2), 0);
            }
            libc::EBADF if by_fd => by_fd = false,
            libc::EINTR => {}
            e => return err(e),
        }
    }
}

/// Size-query-aware xattr read for the user: `size == 0` asks for the length only.
pub fn getxattr_raw(dir: Fd, name: &[u8], attr: &[u8], size: usize) -> Result<Vec<u8>> {
    let (p, follow) = xattr_path(dir, name)?;
    let a = cstr(attr)?;
    let mut buf = vec![0u8; size];
    let at = if name.is_empty() {
        None
    } else {
        xattr_at::get(dir, &cstr(name)?, &a, &mut buf)
    };
    let r = unsafe {
        let ptr = if size == 0 {
            std::ptr::null_mut()
        } else {
            buf.as_mut_ptr() as *mut libc::c_void
        };
        if let Some(r) = at {
            r
        } else if follow {
            libc::getxattr(p.as_ptr(), a.as_ptr(), ptr, size)
        } else {
            libc::lgetxattr(p.as_ptr(), a.as_ptr(), ptr, size)
        }
    };
    let n = check_size(r)?;
    if size == 0 {
        return Ok(vec![0u8; n]);
    }
    buf.truncate(n);
    Ok(buf)
}

pub fn setxattr(dir: Fd, name: &[u8], attr: &[u8], value: &[u8], flags: i32) -> Result<()> {
    let (p, follow) = xattr_path(dir, name)?;
    let a = cstr(attr)?;
    let cname = cstr(name)?;
    retry(|| {
        let at = if follow {
            None
        } else {
            xattr_at::set(dir, &cname, &a, value, flags)
        };
        check(unsafe {
            if let Some(r) = at {
                r as libc::c_int
            } else if follow {
                libc::setxattr(
                    p.as_ptr(),
                    a.as_ptr(),
                    value.as_ptr() as *const _,
                    value.len(),
                    flags,
                )
            } else {
                libc::lsetxattr(
                    p.as_ptr(),
                    a.as_ptr(),
                    value.as_ptr() as *const _,
                    value.len(),
                    flags,
                )
            }
        })
    })
    .map(drop)
}

pub fn removexattr(dir: Fd, name: &[u8], attr: &[u8]) -> Result<()> {
    let (p, follow) = xattr_path(dir, name)?;
    let a = cstr(attr)?;
    let cname = cstr(name)?;
    retry(|| {
        let at = if follow {
            None
        } else {
            xattr_at::remove(dir, &cname, &a)
        };
        check(unsafe {
            if let Some(r) = at {
                r as libc::c_int
            } else if follow {
                libc::removexattr(p.as_ptr(), a.as_ptr())
            } else {
                libc::lremovexattr(p.as_ptr(), a.as_ptr())
            }
        })
    })
    .map(drop)
}

/// All xattr names of an object (each without its NUL).
pub fn listxattr(dir: Fd, name: &[u8]) -> Result<Vec<Vec<u8>>> {
    let (p, follow) = xattr_path(dir, name)?;
    let cname = cstr(name)?;
    let mut buf = vec![0u8; 1024];
    loop {
        let at = if follow {
            None
        } else {
            xattr_at::list(dir, &cname, &mut buf)
        };
        let r = unsafe {
            if let Some(r) = at {
                r
            } else if follow {
                libc::listxattr(p.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len())
            } else {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len())
            }
        };
        if r >= 0 {
            buf.truncate(r as usize);
            return Ok(buf
                .split(|&b| b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| s.to_vec())
                .collect());
        }
        match last_errno() {
            libc::ENOTSUP => return Ok(Vec::new()),
            libc::ERANGE if buf.len() < 1 << 20 => {
                let n = buf.len() * 4;
                buf.resize(n, 0);
            }
            libc::EINTR => {}
            e => return err(e),
        }
    }
}

/// One directory entry as read from a real directory.
#[derive(Debug, Clone)]
pub struct RawDirent {
    pub name: Vec<u8>,
    pub ino: u64,
    pub dtype: u8,
}

/// Read every entry (except `.` and `..`) of the directory `fd` (which is not consumed).
pub fn read_dir(fd: Fd) -> Result<Vec<RawDirent>> {
    let mut out = Vec::new();
    read_dir_each(fd, |e| {
        out.push(e);
        true
    })?;
    Ok(out)
}

/// Stream the entries of `fd` into `f` until it returns false.
pub fn read_dir_each(fd: Fd, mut f: impl FnMut(RawDirent) -> bool) -> Result<()> {
    let own = openat(fd, b".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = own.as_raw_fd();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unsafe { libc::syscall(libc::SYS_getdents64, raw, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            let e = last_errno();
            if e == libc::EINTR {
                continue;
            }
            return err(e);
        }
        if n == 0 {
            return Ok(());
        }
        let mut off = 0usize;
        while off < n as usize {
            // struct linux_dirent64 { u64 d_ino; i64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
            let rec = &buf[off..];
            let ino = u64::from_ne_bytes(rec[0..8].try_into().unwrap());
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().unwrap()) as usize;
            let dtype = rec[18];
            let name_area = &rec[19..reclen];
            let len = name_area
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_area.len());
            let name = &name_area[..len];
            off += reclen;
            if name == b"." || name == b".." {
                continue;
            }
            if !f(RawDirent {
                name: name.to_vec(),
                ino,
                dtype,
            }) {
                return Ok(());
            }
        }
    }
}

pub fn pread(fd: Fd, buf: &mut [u8], off: u64) -> Result<usize> {
    retry(|| {
        check_size(unsafe {
            libc::pread64(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut _,
                buf.len(),
                off as i64,
            )
        })
    })
}

pub fn pwrite(fd: Fd, buf: &[u8], off: u64) -> Result<usize> {
    retry(|| {
        check_size(unsafe {
            libc::pwrite64(
                fd.as_raw_fd(),
                buf.as_ptr() as *const _,
                buf.len(),
                off as i64,
            )
        })
    })
}

pub fn write_all_at(fd: Fd, mut buf: &[u8], mut off: u64) -> Result<()> {
    while !buf.is_empty() {
        let n = pwrite(fd, buf, off)?;
        if n == 0 {
            return err(libc::EIO);
        }
        buf = &buf[n..];
        off += n as u64;
    }
    Ok(())
}

pub fn fsync(fd: Fd, datasync: bool) -> Result<()> {
    retry(|| {
        check(unsafe {
            if datasync {
                libc::fdatasync(fd.as_raw_fd())
            } else {
                libc::fsync(fd.as_raw_fd())
            }
        })
    })
    .map(drop)
}

pub fn ftruncate(fd: Fd, len: u64) -> Result<()> {
    retry(|| check(unsafe { libc::ftruncate64(fd.as_raw_fd(), len as i64) })).map(drop)
}

pub fn fallocate(fd: Fd, mode: i32, off: u64, len: u64) -> Result<()> {
    retry(|| check(unsafe { libc::fallocate64(fd.as_raw_fd(), mode, off as i64, len as i64) }))
        .map(drop)
}

pub fn lseek(fd: Fd, off: i64, whence: i32) -> Result<i64> {
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off, whence) };
    if r < 0 {
        err(last_errno())
    } else {
        Ok(r)
    }
}

pub fn fchmod(fd: Fd, mode: u32) -> Result<()> {
    retry(|| check(unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) })).map(drop)
}

/// `copy_file_range` of up to `len` bytes; returns bytes copied (0 at EOF).
pub fn copy_file_range(src: Fd, soff: u64, dst: Fd, doff: u64, len: usize) -> Result<usize> {
    let mut so = soff as i64;
    let mut d = doff as i64;
    retry(|| {
        check_size(unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, len, 0)
        })
    })
}

/// Whole-file reflink (FICLONE); fails with EOPNOTSUPP/EXDEV/EINVAL where unsupported.
pub fn ficlone(dst: Fd, src: Fd) -> Result<()> {
    const FICLONE: libc::c_ulong = 0x40049409;
    check(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) }).map(drop)
}

pub fn flock(fd: Fd, op: i32) -> Result<()> {
    check(unsafe { libc::flock(fd.as_raw_fd(), op) }).map(drop)
}

/// POSIX record lock on the real file: F_OFD_* so locks belong to the open file (one per
/// FUSE handle), which matches the kernel's per-owner semantics closely enough for a
/// single daemon.
pub fn fcntl_lock(
    fd: Fd,
    cmd: i32,
    typ: i32,
    start: u64,
    end: u64,
    pid: i32,
) -> Result<(i32, u64, u64, i32)> {
    let len = if end == u64::MAX || end < start {
        0
    } else {
        (end - start + 1) as i64
    };
    let mut fl = libc::flock {
        l_type: typ as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: start as i64,
        l_len: len,
        l_pid: 0,
    };
    let _ = pid;
    retry(|| check(unsafe { libc::fcntl(fd.as_raw_fd(), cmd, &mut fl) }))?;
    let end = if fl.l_len == 0 {
        u64::MAX
    } else {
        (fl.l_start + fl.l_len - 1) as u64
    };
    Ok((fl.l_type as i32, fl.l_start as u64, end, fl.l_pid))
}

pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

pub fn fstatvfs(fd: Fd) -> Result<StatFs> {
    let mut s = std::mem::MaybeUninit::<libc::statvfs64>::zeroed();
    check(unsafe { libc::fstatvfs64(fd.as_raw_fd(), s.as_mut_ptr()) })?;
    let s = unsafe { s.assume_init() };
    Ok(StatFs {
        blocks: s.f_blocks,
        bfree: s.f_bfree,
        bavail: s.f_bavail,
        files: s.f_files,
        ffree: s.f_ffree,
        bsize: s.f_bsize as u32,
        namelen: s.f_namemax as u32,
        frsize: s.f_frsize as u32,
    })
}

/// Give freed heap memory back to the system (glibc keeps it otherwise).
pub fn malloc_trim() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn geteuid() -> u32 {
    unsafe { libc::geteuid() }
}

/// True when this process runs in the initial user namespace (its uid_map is the identity
/// over all ids), where root holds real capabilities; false inside `unshare -U`, rootless
/// podman's namespace, or when the map cannot be read.
pub fn in_initial_user_namespace() -> bool {
    std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(false)
}

pub fn getegid() -> u32 {
    unsafe { libc::getegid() }
}

pub fn set_umask(mask: u32) -> u32 {
    unsafe { libc::umask(mask) }
}

/// Raise RLIMIT_NOFILE's soft limit to the hard limit (layerfs keeps a descriptor per
/// cached directory and layer).
pub fn raise_nofile_limit() {
    unsafe {
        let mut r = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Switch the calling thread's fs uid/gid (used to create files as the caller where the
/// daemon can, so quotas and ownership follow the caller). Returns the previous ids.
pub fn setfsids(uid: u32, gid: u32) -> (u32, u32) {
    unsafe {
        let og = libc::setfsgid(gid) as u32;
        let ou = libc::setfsuid(uid) as u32;
        (ou, og)
    }
}

pub fn is_mountpoint_live(path: &OsStr) -> bool {
    // A FUSE mount is live when stat of the mountpoint reports a different device than its
    // parent directory.
    let p = std::path::Path::new(path);
    let parent = p.parent().unwrap_or(p);
    match (std::fs::metadata(p), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => {
            use std::os::unix::fs::MetadataExt;
            a.dev() != b.dev()
        }
        _ => false,
    }
}

/// fork(2). Only called before any thread is started.
pub enum Fork {
    Parent(i32),
    Child,
}

pub fn fork() -> Result<Fork> {
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => err(last_errno()),
        0 => Ok(Fork::Child),
        p => Ok(Fork::Parent(p)),
    }
}

pub fn setsid() {
    unsafe {
        libc::setsid();
    }
}

/// Point stdin/stdout/stderr at /dev/null (daemon mode).
pub fn redirect_stdio_to_null() {
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            libc::dup2(fd, 2);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn waitpid_nohang(pid: i32) -> Option<i32> {
    let mut status = 0;
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if r == pid {
        Some(if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        })
    } else {
        None
    }
}

/// Block SIGTERM/SIGINT/SIGHUP/SIGUSR1 in this thread (and threads it starts), so that one
/// thread can take them with [`wait_signal`].
pub fn block_signals() {
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Wait for one of the signals blocked by [`block_signals`].
pub fn wait_signal() -> i32 {
    unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, s);
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
        sig
    }
}

pub fn kill_self(sig: i32) {
    unsafe {
        libc::kill(libc::getpid(), sig);
    }
}

/// Lazy unmount of a path (used on SIGTERM when fuser's own unmount fails).
pub fn umount_detach(path: &std::path::Path) -> Result<()> {
    let c = cstr(path.as_os_str().as_bytes())?;
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

pub fn major(dev: u64) -> u32 {
    libc::major(dev)
}

pub fn minor(dev: u64) -> u32 {
    libc::minor(dev)
}

pub fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let r = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if r > 0 {
        r as usize
    } else {
        4096
    }
}

/// `fd` as raw for logging.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}

/// Open the system log for the daemon (`ident` is kept for the process's life).
pub fn openlog(ident: &'static std::ffi::CStr) {
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_DAEMON,
        )
    }
}

/// Send one message to the system log at warning level.
pub fn syslog(msg: &[u8]) {
    let m: Vec<u8> = msg.iter().map(|&b| if b == 0 { b' ' } else { b }).collect();
    if let Ok(c) = CString::new(m) {
        unsafe { libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), c.as_ptr()) }
    }
}

/// Whether a syslog daemon listens on /dev/log.
pub fn syslog_available() -> bool {
    std::fs::symlink_metadata("/dev/log").is_ok()
}

/// Unmount a path (`umount2(path, 0)`).
pub fn umount(path: &std::path::Path) -> Result<()> {
    let c = cstr(path.as_os_str().as_bytes())?;
    check(unsafe { libc::umount2(c.as_ptr(), 0) }).map(drop)
}

/// A read-only shared mapping of the first `len` bytes of a file that nobody changes while
/// it is mapped (a lower-layer file: layers are immutable). Replies to reads are written
/// straight from it, so the kernel copies the file's page cache into the FUSE pages once,
/// instead of a `pread` into a buffer and a second copy out of it. Nothing in layerfs reads
/// through the mapping itself; a page beyond a (contract-breaking) truncation makes the
/// reply's `writev` fail with EFAULT, never a SIGBUS.
pub struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and owned; sharing its address between threads is fine.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

impl Mmap {
    /// Map `len` (> 0) bytes of `fd` read-only, with sequential readahead for its faults.
    pub fn map(fd: Fd, len: usize) -> Result<Mmap> {
        if len == 0 {
            return err(libc::EINVAL);
        }
        // SAFETY: a fresh mapping chosen by the kernel; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::from_errno(last_errno()));
        }
        // SAFETY: advice on the mapping made above.
        unsafe { libc::madvise(ptr, len, libc::MADV_SEQUENTIAL) };
        Ok(Mmap { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Drop the page-table entries of the whole pages in `[off, off + len)`
    /// (MADV_DONTNEED): the data stays in the file's page cache and is mapped again on the
    /// next access.
    pub fn unmap_pages(&self, off: u64, len: u64) {
        let page = page_size() as u64;
        let start = off.div_ceil(page) * page;
        let end = off.saturating_add(len).min(self.len as u64) / page * page;
        if end <= start {
            return;
        }
        // SAFETY: advice on whole pages inside the read-only mapping owned by self; no
        // reference into it is kept across this call (replies are written before it).
        unsafe {
            libc::madvise(
                (self.ptr as *mut u8).add(start as usize) as *mut libc::c_void,
                (end - start) as usize,
                libc::MADV_DONTNEED,
            )
        };
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The mapped bytes `[off, off + len)`, clipped to the mapping.
    pub fn slice(&self, off: u64, len: usize) -> &[u8] {
        let start = (off.min(self.len as u64)) as usize;
        let end = start + len.min(self.len - start);
        // SAFETY: in bounds of a live mapping owned by self; its file is not modified
        // while mapped (see the type's comment).
        unsafe { std::slice::from_raw_parts((self.ptr as *const u8).add(start), end - start) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping this value owns; no slice of it outlives self.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}
