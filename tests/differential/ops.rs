//! Operations: the abstract ones proptest generates ([`Op`], targets picked by index modulo
//! the current tree) and the concrete ones applied to every mount ([`Act`], paths and values
//! spelled out, printed in a form that can be pasted into a `regression_*` test).

use super::layers::cpath;
use super::snapshot::{Kind, Snapshot};
use proptest::prelude::*;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A path relative to the mount root.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct P(pub Vec<u8>);

/// `p("d/a")`
pub fn p(s: &str) -> P {
    P(s.as_bytes().to_vec())
}

/// `pb(b"odd/bad\xff\xfe")`
pub fn pb(s: &[u8]) -> P {
    P(s.to_vec())
}

impl fmt::Debug for P {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) if !s.contains(['\n', '\t', '"', '\\']) => write!(f, "p({s:?})"),
            _ => write!(f, "pb(b\"{}\")", self.0.escape_ascii()),
        }
    }
}

impl P {
    pub fn path(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(&self.0))
    }
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(self.path())
    }
    /// `self` is `other` or inside it
    pub fn within(&self, other: &P) -> bool {
        self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.get(other.0.len()) == Some(&b'/'))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    At(i64, i64),
    Now,
    Omit,
}

/// A concrete operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// open(O_WRONLY|O_CREAT [|O_EXCL] [|O_TRUNC], 0644), write DATA[data]
    Create(P, usize, bool, bool),
    /// open(O_WRONLY), pwrite DATA[data] at offset
    PWrite(P, u64, usize),
    /// open(O_WRONLY|O_APPEND), write DATA[data]
    Append(P, usize),
    /// truncate(2) (follows symlinks)
    Truncate(P, u64),
    /// chmod(2) (follows symlinks)
    Chmod(P, u32),
    /// lchown(2); u32::MAX keeps the id
    Chown(P, u32, u32),
    /// utimensat(AT_SYMLINK_NOFOLLOW) with atime, mtime
    Utimens(P, Time, Time),
    Mkdir(P, u32),
    Rmdir(P),
    Unlink(P),
    /// renameat2(from, to, flags)
    Rename(P, P, u32),
    /// link(2)
    Link(P, P),
    /// symlink(target, path)
    Symlink(&'static str, P),
    /// mknod(S_IFIFO|0640)
    Mkfifo(P),
    /// lsetxattr(path, name, value, flags)
    SetXattr(P, &'static str, &'static [u8], i32),
    RemoveXattr(P, &'static str),
    /// open O_RDONLY, then append through a second open (copy-up), then read the first fd:
    /// an fd opened before copy-up must see the new data (kernel >= 4.19)
    ReadOldFd(P),
    /// unmount every mount and mount its upper again
    Remount,
    /// lstat(2) (after [`Act::DropCaches`] this decides which name layerfs learns an
    /// object by first)
    Stat(P),
    /// `echo 3 > /proc/sys/vm/drop_caches`: the kernel drops unused dentries and inodes,
    /// so layerfs gets FORGETs and learns objects again by whatever name comes next
    DropCaches,
}

pub const DATA: &[&[u8]] = &[b"", b"one\n", b"two two\n", &[b'x'; 9000]];
pub const OFFSETS: &[u64] = &[0, 2, 5000, 40 << 20];
pub const LENS: &[u64] = &[0, 3, 5000, 3 << 20];
pub const MODES: &[u32] = &[0o600, 0o755, 0o4755, 0o1777, 0o000, 0o2750, 0o644];
pub const OWNERS: &[(u32, u32)] = &[(0, 0), (1000, 1000), (1000, u32::MAX), (u32::MAX, 2000)];
pub const TIMES: &[(Time, Time)] = &[
    (Time::At(1_234_567_890, 500), Time::At(987_654_321, 0)),
    (Time::Now, Time::Now),
    (Time::Omit, Time::At(1_111_111_111, 999_999_999)),
    (Time::At(1_222_222_222, 0), Time::Omit),
];
pub const LINK_TARGETS: &[&str] = &["a", "../a", "d/b", "/nonexistent/layerfs-diff/x", "e", ""];
pub const XATTR_NAMES: &[&str] = &[
    "user.a",
    "user.b",
    "trusted.t",
    "trusted.overlay.opaque",
    "user.origin",
    "user.overlay.x",
];
pub const XATTR_VALUES: &[&[u8]] = &[b"v1", b"", b"\x00\x01binary\xff"];
pub const XATTR_FLAGS: &[i32] = &[0, 0, libc::XATTR_CREATE, libc::XATTR_REPLACE];
pub const RENAME_FLAGS: &[u32] = &[
    0,
    0,
    libc::RENAME_NOREPLACE,
    libc::RENAME_EXCHANGE,
    libc::RENAME_WHITEOUT,
];
/// Names new objects get: the tiny alphabet (collisions) plus two odd ones.
pub const NEW_NAMES: &[&[u8]] = &[b"a", b"b", b"c", b"d", b"e", b"-x y", b"\xffz"];

/// A target: an existing path (index modulo the sorted paths of the current tree) or a
/// name from [`NEW_NAMES`] in an existing directory of depth <= 2 (which may exist too).
#[derive(Debug, Clone, Copy)]
pub enum Tgt {
    Old(u8),
    New(u8, u8),
}

/// An abstract operation; indices are taken modulo the tables above.
#[derive(Debug, Clone)]
pub enum Op {
    Create(Tgt, u8, bool, bool),
    PWrite(Tgt, u8, u8),
    Append(Tgt, u8),
    Truncate(Tgt, u8),
    Chmod(Tgt, u8),
    Chown(Tgt, u8),
    Utimens(Tgt, u8),
    Mkdir(Tgt),
    Rmdir(Tgt),
    Unlink(Tgt),
    Rename(Tgt, Tgt, u8),
    Link(Tgt, Tgt),
    Symlink(u8, Tgt),
    Mkfifo(Tgt),
    SetXattr(Tgt, u8, u8, u8),
    RemoveXattr(Tgt, u8),
    ReadOldFd(Tgt),
    Remount,
    DropCaches,
    Stat(Tgt),
}

fn old() -> impl Strategy<Value = Tgt> {
    prop_oneof![
        4 => any::<u8>().prop_map(Tgt::Old),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(d, n)| Tgt::New(d, n)),
    ]
}

fn new() -> impl Strategy<Value = Tgt> {
    prop_oneof![
        1 => any::<u8>().prop_map(Tgt::Old),
        3 => (any::<u8>(), any::<u8>()).prop_map(|(d, n)| Tgt::New(d, n)),
    ]
}

fn either() -> impl Strategy<Value = Tgt> {
    prop_oneof![
        any::<u8>().prop_map(Tgt::Old),
        (any::<u8>(), any::<u8>()).prop_map(|(d, n)| Tgt::New(d, n)),
    ]
}

pub fn op_strategy() -> impl Strategy<Value = Op> {
    let u = any::<u8>;
    prop_oneof![
        3 => (new(), u(), any::<bool>(), any::<bool>()).prop_map(|(t, d, x, tr)| Op::Create(t, d, x, tr)),
        2 => (old(), u(), u()).prop_map(|(t, o, d)| Op::PWrite(t, o, d)),
        2 => (old(), u()).prop_map(|(t, d)| Op::Append(t, d)),
        1 => (old(), u()).prop_map(|(t, l)| Op::Truncate(t, l)),
        2 => (old(), u()).prop_map(|(t, m)| Op::Chmod(t, m)),
        1 => (old(), u()).prop_map(|(t, o)| Op::Chown(t, o)),
        1 => (old(), u()).prop_map(|(t, w)| Op::Utimens(t, w)),
        3 => new().prop_map(Op::Mkdir),
        2 => old().prop_map(Op::Rmdir),
        2 => old().prop_map(Op::Unlink),
        6 => (old(), either(), u()).prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        2 => (old(), new()).prop_map(|(a, b)| Op::Link(a, b)),
        1 => (u(), new()).prop_map(|(l, t)| Op::Symlink(l, t)),
        1 => new().prop_map(Op::Mkfifo),
        2 => (old(), u(), u(), u()).prop_map(|(t, n, v, f)| Op::SetXattr(t, n, v, f)),
        1 => (old(), u()).prop_map(|(t, n)| Op::RemoveXattr(t, n)),
        1 => old().prop_map(Op::ReadOldFd),
        1 => Just(Op::Remount),
        1 => Just(Op::DropCaches),
        1 => old().prop_map(Op::Stat),
    ]
}

fn pick<T: Copy>(t: &[T], i: u8) -> T {
    t[i as usize % t.len()]
}

/// Turn an abstract op into a concrete one against the current (reference) tree.
pub fn resolve(op: &Op, tree: &Snapshot) -> Act {
    let paths: Vec<&PathBuf> = tree.entries.keys().collect();
    let mut dirs: Vec<PathBuf> = vec![PathBuf::new()];
    dirs.extend(
        tree.entries
            .iter()
            .filter(|(p, e)| e.kind == Kind::Dir && p.components().count() <= 2)
            .map(|(p, _)| p.clone()),
    );
    let t = |t: Tgt| -> P {
        match t {
            Tgt::Old(i) if !paths.is_empty() => P(paths[i as usize % paths.len()]
                .as_os_str()
                .as_bytes()
                .to_vec()),
            Tgt::Old(i) => P(pick(NEW_NAMES, i).to_vec()),
            Tgt::New(d, n) => {
                let d = &dirs[d as usize % dirs.len()];
                P(d.join(std::ffi::OsStr::from_bytes(pick(NEW_NAMES, n)))
                    .as_os_str()
                    .as_bytes()
                    .to_vec())
            }
        }
    };
    match *op {
        Op::Create(a, d, x, tr) => Act::Create(t(a), d as usize % DATA.len(), x, tr),
        Op::PWrite(a, o, d) => Act::PWrite(t(a), pick(OFFSETS, o), d as usize % DATA.len()),
        Op::Append(a, d) => Act::Append(t(a), d as usize % DATA.len()),
        Op::Truncate(a, l) => Act::Truncate(t(a), pick(LENS, l)),
        Op::Chmod(a, m) => Act::Chmod(t(a), pick(MODES, m)),
        Op::Chown(a, o) => {
            let (u, g) = pick(OWNERS, o);
            Act::Chown(t(a), u, g)
        }
        Op::Utimens(a, w) => {
            let (at, mt) = pick(TIMES, w);
            Act::Utimens(t(a), at, mt)
        }
        Op::Mkdir(a) => Act::Mkdir(t(a), 0o755),
        Op::Rmdir(a) => Act::Rmdir(t(a)),
        Op::Unlink(a) => Act::Unlink(t(a)),
        Op::Rename(a, b, f) => Act::Rename(t(a), t(b), pick(RENAME_FLAGS, f)),
        Op::Link(a, b) => Act::Link(t(a), t(b)),
        Op::Symlink(l, a) => Act::Symlink(pick(LINK_TARGETS, l), t(a)),
        Op::Mkfifo(a) => Act::Mkfifo(t(a)),
        Op::SetXattr(a, n, v, f) => Act::SetXattr(
            t(a),
            pick(XATTR_NAMES, n),
            pick(XATTR_VALUES, v),
            pick(XATTR_FLAGS, f),
        ),
        Op::RemoveXattr(a, n) => Act::RemoveXattr(t(a), pick(XATTR_NAMES, n)),
        Op::ReadOldFd(a) => Act::ReadOldFd(t(a)),
        Op::Remount => Act::Remount,
        Op::DropCaches => Act::DropCaches,
        Op::Stat(a) => Act::Stat(t(a)),
    }
}

/// What a call returned: errno (0 = success) and any data it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub errno: i32,
    pub data: Option<Vec<u8>>,
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

fn rc(r: libc::c_int) -> i32 {
    if r == 0 {
        0
    } else {
        last_errno()
    }
}

fn open(p: &Path, flags: i32) -> Result<i32, i32> {
    let fd = unsafe {
        libc::open(
            cpath(p).as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NONBLOCK,
            0o644,
        )
    };
    if fd < 0 {
        Err(last_errno())
    } else {
        Ok(fd)
    }
}

fn write_all(fd: i32, data: &[u8], off: Option<u64>) -> i32 {
    let mut done = 0usize;
    while done < data.len() || data.is_empty() {
        let rest = &data[done..];
        let n = unsafe {
            match off {
                Some(o) => libc::pwrite(
                    fd,
                    rest.as_ptr() as *const _,
                    rest.len(),
                    (o + done as u64) as i64,
                ),
                None => libc::write(fd, rest.as_ptr() as *const _, rest.len()),
            }
        };
        if n < 0 {
            return last_errno();
        }
        done += n as usize;
        if data.is_empty() {
            break;
        }
    }
    0
}

fn with_fd(p: &Path, flags: i32, f: impl FnOnce(i32) -> i32) -> i32 {
    match open(p, flags) {
        Err(e) => e,
        Ok(fd) => {
            let r = f(fd);
            let c = unsafe { libc::close(fd) };
            if r != 0 {
                r
            } else if c != 0 {
                last_errno()
            } else {
                0
            }
        }
    }
}

fn ts(t: Time) -> libc::timespec {
    match t {
        Time::At(s, n) => libc::timespec {
            tv_sec: s,
            tv_nsec: n,
        },
        Time::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Time::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// Apply `act` under the mount `root` (everything but [`Act::Remount`]).
pub fn apply(root: &Path, act: &Act) -> Outcome {
    let errno = |e: i32| Outcome {
        errno: e,
        data: None,
    };
    let c = |x: &P| cpath(&x.under(root));
    match act {
        Act::Create(a, d, excl, trunc) => {
            let mut fl = libc::O_WRONLY | libc::O_CREAT;
            if *excl {
                fl |= libc::O_EXCL;
            }
            if *trunc {
                fl |= libc::O_TRUNC;
            }
            errno(with_fd(&a.under(root), fl, |fd| {
                write_all(fd, DATA[*d], None)
            }))
        }
        Act::PWrite(a, off, d) => errno(with_fd(&a.under(root), libc::O_WRONLY, |fd| {
            write_all(fd, DATA[*d], Some(*off))
        })),
        Act::Append(a, d) => errno(with_fd(
            &a.under(root),
            libc::O_WRONLY | libc::O_APPEND,
            |fd| write_all(fd, DATA[*d], None),
        )),
        Act::Truncate(a, l) => errno(rc(unsafe { libc::truncate(c(a).as_ptr(), *l as i64) })),
        Act::Chmod(a, m) => errno(rc(unsafe { libc::chmod(c(a).as_ptr(), *m) })),
        Act::Chown(a, u, g) => errno(rc(unsafe { libc::lchown(c(a).as_ptr(), *u, *g) })),
        Act::Utimens(a, at, mt) => {
            let t = [ts(*at), ts(*mt)];
            errno(rc(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c(a).as_ptr(),
                    t.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            }))
        }
        Act::Mkdir(a, m) => errno(rc(unsafe { libc::mkdir(c(a).as_ptr(), *m) })),
        Act::Rmdir(a) => errno(rc(unsafe { libc::rmdir(c(a).as_ptr()) })),
        Act::Unlink(a) => errno(rc(unsafe { libc::unlink(c(a).as_ptr()) })),
        Act::Rename(a, b, f) => errno(rc(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c(a).as_ptr(),
                libc::AT_FDCWD,
                c(b).as_ptr(),
                *f,
            )
        })),
        Act::Link(a, b) => errno(rc(unsafe { libc::link(c(a).as_ptr(), c(b).as_ptr()) })),
        Act::Symlink(t, a) => {
            let t = std::ffi::CString::new(*t).unwrap();
            errno(rc(unsafe { libc::symlink(t.as_ptr(), c(a).as_ptr()) }))
        }
        Act::Mkfifo(a) => errno(rc(unsafe {
            libc::mknod(c(a).as_ptr(), libc::S_IFIFO | 0o640, 0)
        })),
        Act::SetXattr(a, n, v, f) => {
            let n = std::ffi::CString::new(*n).unwrap();
            errno(rc(unsafe {
                libc::lsetxattr(
                    c(a).as_ptr(),
                    n.as_ptr(),
                    v.as_ptr() as *const _,
                    v.len(),
                    *f,
                )
            }))
        }
        Act::RemoveXattr(a, n) => {
            let n = std::ffi::CString::new(*n).unwrap();
            errno(rc(unsafe { libc::lremovexattr(c(a).as_ptr(), n.as_ptr()) }))
        }
        Act::ReadOldFd(a) => {
            let path = a.under(root);
            let fd1 = match open(&path, libc::O_RDONLY) {
                Ok(fd) => fd,
                Err(e) => return errno(e),
            };
            let w = with_fd(&path, libc::O_WRONLY | libc::O_APPEND, |fd| {
                write_all(fd, b"+appended\n", None)
            });
            let mut buf = vec![0u8; 65536];
            let n = unsafe { libc::pread(fd1, buf.as_mut_ptr() as *mut _, buf.len(), 0) };
            let r = if n < 0 { last_errno() } else { 0 };
            unsafe { libc::close(fd1) };
            if w != 0 {
                return errno(w);
            }
            if r != 0 {
                return errno(r);
            }
            buf.truncate(n as usize);
            Outcome {
                errno: 0,
                data: Some(buf),
            }
        }
        Act::Stat(a) => errno(rc(unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            libc::lstat(c(a).as_ptr(), &mut st)
        })),
        Act::Remount => unreachable!("the runner handles Remount"),
        Act::DropCaches => unreachable!("the runner handles DropCaches"),
    }
}

/// Paths whose object may change identity (st_ino) with `act`: the rename endpoints and
/// everything below them. Every other path that exists before and after must keep st_ino.
pub fn moved_paths(act: &Act) -> Vec<&P> {
    match act {
        Act::Rename(a, b, _) => vec![a, b],
        _ => vec![],
    }
}
