//! The visible tree of a mount, read with plain syscalls, and its comparison.
//!
//! [`Entry`] holds what must agree between the kernel overlay and layerfs; what may differ
//! by design is left out of it (see `ALLOWED_DIFFERENCES` in tests/differential.rs).
//! Inode numbers are kept per mount (`Snapshot::ino`) and only compared within one mount,
//! except for the hard-link structure (`Entry::aliases`: which other paths share an inode).

use super::layers::cpath;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CStr, CString, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Regular files up to this size are compared byte by byte; bigger ones by a digest of
/// their non-zero 4 KiB blocks (so the hole granularity does not matter).
const SMALL_FILE: u64 = 1 << 20;

/// Private xattrs: never compared (the kernel hides `trusted.overlay.*`; layerfs hides all
/// of these; a kernel mounted on a layerfs upper shows layerfs's own `trusted.layerfs.*`).
pub const PRIVATE_XATTR_PREFIXES: &[&[u8]] = &[
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"trusted.fuseoverlayfs.",
    b"security.fuseoverlayfs.",
    b"trusted.layerfs.",
    b"user.layerfs.",
    b"user.containers.override_",
];

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Kind {
    Dir,
    File,
    Symlink(Bytes),
    Fifo,
    Char(u64),
    Block(u64),
    Socket,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.0[..self.0.len().min(64)];
        write!(f, "\"{}\"", shown.escape_ascii())?;
        if self.0.len() > 64 {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Content {
    Bytes(Bytes),
    /// digest of the non-zero 4 KiB blocks with their offsets; `sparse`: fewer blocks
    /// allocated than half the size (holes kept)
    Digest {
        hash: u64,
        sparse: bool,
    },
    Unreadable(i32),
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum MTime {
    /// set by this run (after the layers were built): the two mounts ran at different times
    Recent,
    At(i64, i64),
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    pub kind: Kind,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    /// None for directories (their st_size is the upper filesystem's business)
    pub size: Option<u64>,
    pub nlink: Option<u64>,
    pub mtime: MTime,
    pub content: Option<Content>,
    pub xattrs: Vec<(Bytes, Bytes)>,
    /// other paths with the same st_ino (non-directories): the hard-link structure
    pub aliases: Vec<PathBuf>,
}

#[derive(Default, Clone)]
pub struct Snapshot {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub ino: BTreeMap<PathBuf, u64>,
    /// per-mount invariant violations (readdir vs lstat, duplicates, hidden names)
    pub problems: Vec<String>,
}

#[derive(Clone, Copy)]
pub struct SnapOpts {
    /// mtimes at or after this second count as [`MTime::Recent`]
    pub recent_from: i64,
    /// compare st_nlink of directories
    pub dir_nlink: bool,
    /// check that readdir's `..` has the parent's st_ino (layerfs only, see the table)
    pub dotdot_ino: bool,
    /// check readdir d_ino of hard-linked entries (st_nlink > 1) too (layerfs only, see
    /// the table)
    pub link_dino: bool,
}

struct DirEnt {
    name: Vec<u8>,
    ino: u64,
    dtype: u8,
}

fn read_dir_raw(p: &Path) -> Result<Vec<DirEnt>, i32> {
    let c = cpath(p);
    let d = unsafe { libc::opendir(c.as_ptr()) };
    if d.is_null() {
        return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
    }
    let mut out = Vec::new();
    loop {
        unsafe { *libc::__errno_location() = 0 };
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            unsafe { libc::closedir(d) };
            if err != 0 {
                return Err(err);
            }
            return Ok(out);
        }
        let e = unsafe { &*e };
        let name = unsafe { CStr::from_ptr(e.d_name.as_ptr()) }
            .to_bytes()
            .to_vec();
        out.push(DirEnt {
            name,
            ino: e.d_ino,
            dtype: e.d_type,
        });
    }
}

fn dtype_of(md: &std::fs::Metadata) -> u8 {
    let ft = md.file_type();
    if ft.is_dir() {
        libc::DT_DIR
    } else if ft.is_file() {
        libc::DT_REG
    } else if ft.is_symlink() {
        libc::DT_LNK
    } else if ft.is_fifo() {
        libc::DT_FIFO
    } else if ft.is_char_device() {
        libc::DT_CHR
    } else if ft.is_block_device() {
        libc::DT_BLK
    } else {
        libc::DT_SOCK
    }
}

pub fn xattrs(p: &Path) -> Vec<(Bytes, Bytes)> {
    let c = cpath(p);
    let mut buf = vec![0u8; 1024];
    let n = loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
        if n < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ERANGE) {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        break n;
    };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        if PRIVATE_XATTR_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr() as *mut _, v.len()) };
        let value = if r < 0 {
            format!("<error {}>", std::io::Error::last_os_error()).into_bytes()
        } else {
            v.truncate(r as usize);
            v
        };
        out.push((Bytes(name.to_vec()), Bytes(value)));
    }
    out.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
    out
}

fn fnv(h: &mut u64, data: &[u8]) {
    for &b in data {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100_0000_01b3);
    }
}

fn read_content(p: &Path, md: &std::fs::Metadata) -> Content {
    use std::io::Read;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    {
        Ok(f) => f,
        Err(e) => return Content::Unreadable(e.raw_os_error().unwrap_or(-1)),
    };
    if md.len() <= SMALL_FILE {
        let mut v = Vec::new();
        return match (&f).read_to_end(&mut v) {
            Ok(_) => Content::Bytes(Bytes(v)),
            Err(e) => Content::Unreadable(e.raw_os_error().unwrap_or(-1)),
        };
    }
    use std::os::fd::AsRawFd;
    let fd = f.as_raw_fd();
    let size = md.len() as i64;
    let mut extents = Vec::new();
    let mut pos = 0i64;
    while pos < size {
        let d = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::ENXIO) {
                break;
            }
            // no SEEK_DATA: everything is data
            extents = vec![(0, size)];
            break;
        }
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        let h = if h < 0 { size } else { h };
        extents.push((d, h));
        pos = h;
    }
    let mut blocks: BTreeMap<i64, u64> = BTreeMap::new();
    let mut buf = vec![0u8; 4096];
    for (s, e) in extents {
        let mut off = s & !4095;
        while off < e {
            let n = match f.read_at(&mut buf, off as u64) {
                Ok(n) => n,
                Err(e) => return Content::Unreadable(e.raw_os_error().unwrap_or(-1)),
            };
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|&b| b != 0) {
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                fnv(&mut h, &buf[..n]);
                blocks.insert(off, h);
            }
            off += 4096;
        }
    }
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for (off, h) in blocks {
        fnv(&mut hash, &off.to_le_bytes());
        fnv(&mut hash, &h.to_le_bytes());
    }
    Content::Digest {
        hash,
        sparse: md.blocks() * 512 < md.len() / 2,
    }
}

/// One object's [`Entry`] from lstat and friends (no readdir).
fn entry_of(full: &Path, md: &std::fs::Metadata, o: &SnapOpts) -> Entry {
    let ft = md.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink(Bytes(
            std::fs::read_link(full)
                .map(|t| t.into_os_string().into_vec())
                .unwrap_or_else(|e| format!("<readlink: {e}>").into_bytes()),
        ))
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::Char(md.rdev())
    } else if ft.is_block_device() {
        Kind::Block(md.rdev())
    } else {
        Kind::Socket
    };
    let is_dir = kind == Kind::Dir;
    let mtime = if md.mtime() >= o.recent_from {
        MTime::Recent
    } else {
        MTime::At(md.mtime(), md.mtime_nsec())
    };
    let content = (kind == Kind::File).then(|| read_content(full, md));
    Entry {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: (!is_dir).then_some(md.len()),
        nlink: (!is_dir || o.dir_nlink).then_some(md.nlink()),
        mtime,
        content,
        xattrs: xattrs(full),
        aliases: Vec::new(),
        kind,
    }
}

/// Whether every proper ancestor of `rel` under `root` is a directory reached
/// without following a symlink.
fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut dir = root.to_path_buf();
    let mut comps: Vec<_> = rel.components().collect();
    comps.pop();
    comps.into_iter().all(|c| {
        dir.push(c);
        std::fs::symlink_metadata(&dir).is_ok_and(|md| md.file_type().is_dir())
    })
}

/// Read the whole visible tree under `root`. The paths of `known` (the previous snapshot
/// of this mount) are read first by path, before any readdir: through the kernel's cached
/// dentries, so a daemon whose inode state went stale shows it (a readdir could refresh
/// it). Then the readdir walk finds new names and checks that readdir and lookup agree.
pub fn snapshot(root: &Path, o: &SnapOpts, known: Option<&Snapshot>) -> Snapshot {
    let mut s = Snapshot::default();
    let root_md = std::fs::symlink_metadata(root).unwrap();
    s.ino.insert(PathBuf::new(), root_md.ino());
    let mut by_path: BTreeMap<PathBuf, (u64, u8)> = BTreeMap::new();
    for p in known.iter().flat_map(|k| k.entries.keys()) {
        // A name known before is looked up again only if its parents are still
        // directories: a parent replaced by a symlink (RENAME_EXCHANGE of a
        // directory with a symlink) would make lstat find it by following that
        // symlink, on the kernel overlay as on layerfs, while no readdir of the
        // walk lists it under that path.
        if !parents_are_dirs(root, p) {
            continue;
        }
        let full = root.join(p);
        if let Ok(md) = std::fs::symlink_metadata(&full) {
            by_path.insert(p.clone(), (md.ino(), dtype_of(&md)));
            s.entries.insert(p.clone(), entry_of(&full, &md, o));
        }
    }
    let mut listed: BTreeSet<PathBuf> = BTreeSet::new();
    let mut queue = vec![(PathBuf::new(), root_md.ino(), root_md.ino())];
    while let Some((rel, dir_ino, parent_ino)) = queue.pop() {
        let dir = root.join(&rel);
        let ents = match read_dir_raw(&dir) {
            Ok(v) => v,
            Err(e) => {
                s.problems
                    .push(format!("{rel:?}: readdir failed with errno {e}"));
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for e in &ents {
            if !seen.insert(e.name.clone()) {
                s.problems.push(format!(
                    "{rel:?}: readdir lists {:?} twice",
                    Bytes(e.name.clone())
                ));
            }
        }
        for dot in [&b"."[..], b".."] {
            if !seen.contains(dot) {
                s.problems
                    .push(format!("{rel:?}: readdir lacks {:?}", Bytes(dot.to_vec())));
            }
        }
        for e in &ents {
            if e.name == b"." {
                if e.ino != dir_ino {
                    s.problems.push(format!(
                        "{rel:?}: d_ino of . is {} but st_ino {dir_ino}",
                        e.ino
                    ));
                }
                continue;
            }
            if e.name == b".." {
                if o.dotdot_ino && !rel.as_os_str().is_empty() && e.ino != parent_ino {
                    s.problems.push(format!(
                        "{rel:?}: d_ino of .. is {} but the parent's st_ino {parent_ino}",
                        e.ino
                    ));
                }
                continue;
            }
            let r = rel.join(OsStr::from_bytes(&e.name));
            listed.insert(r.clone());
            if e.name.starts_with(b".wh.") {
                s.problems
                    .push(format!("{r:?}: whiteout-format name shown"));
            }
            let full = root.join(&r);
            let (ino, dtype) = match by_path.get(&r) {
                Some(x) => *x,
                None => match std::fs::symlink_metadata(&full) {
                    Ok(md) => {
                        s.entries.insert(r.clone(), entry_of(&full, &md, o));
                        (md.ino(), dtype_of(&md))
                    }
                    Err(err) => {
                        s.problems
                            .push(format!("{r:?}: listed by readdir but lstat fails: {err}"));
                        continue;
                    }
                },
            };
            let linked = s
                .entries
                .get(&r)
                .and_then(|x| x.nlink)
                .is_some_and(|n| n > 1);
            if e.ino != ino && (o.link_dino || !linked) {
                s.problems.push(format!(
                    "{r:?}: readdir d_ino {} != lstat st_ino {ino}",
                    e.ino
                ));
            }
            if e.dtype != libc::DT_UNKNOWN && e.dtype != dtype {
                s.problems
                    .push(format!("{r:?}: d_type {} but lstat says {dtype}", e.dtype));
            }
            s.ino.insert(r.clone(), ino);
            if dtype == libc::DT_DIR {
                queue.push((r, ino, dir_ino));
            }
        }
    }
    // names lstat finds that no readdir lists
    let ghosts: Vec<PathBuf> = s
        .entries
        .keys()
        .filter(|p| !listed.contains(*p))
        .cloned()
        .collect();
    for p in ghosts {
        s.problems.push(format!(
            "{p:?}: lstat finds it but readdir of its directory does not list it"
        ));
        s.entries.remove(&p);
    }
    // hard-link structure
    let mut by_ino: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    for (p, e) in &s.entries {
        if e.kind != Kind::Dir {
            by_ino.entry(s.ino[p]).or_default().push(p.clone());
        }
    }
    for group in by_ino.values().filter(|g| g.len() > 1) {
        for p in group {
            s.entries.get_mut(p).unwrap().aliases =
                group.iter().filter(|q| *q != p).cloned().collect();
        }
    }
    s
}

use std::os::unix::ffi::OsStringExt;

/// Differences of `b` against the reference `a`, one line per path. Paths in `relaxed` are
/// compared by kind only.
pub fn diff(
    a: &Snapshot,
    b: &Snapshot,
    an: &str,
    bn: &str,
    relaxed: &BTreeSet<PathBuf>,
) -> Vec<String> {
    let mut out = Vec::new();
    let paths: BTreeSet<&PathBuf> = a.entries.keys().chain(b.entries.keys()).collect();
    for p in paths {
        match (a.entries.get(p), b.entries.get(p)) {
            (Some(x), Some(y)) if x == y => {}
            // ALLOWED_DIFFERENCES "st_nlink 1 of directories"
            (Some(x), Some(y))
                if x.kind == Kind::Dir
                    && x.nlink == Some(1)
                    && x == &Entry {
                        nlink: x.nlink,
                        ..y.clone()
                    } => {}
            (Some(x), Some(y)) if relaxed.contains(p) && x.kind == y.kind => {}
            (Some(x), Some(y)) => {
                let mut fields = Vec::new();
                macro_rules! f {
                    ($($n:ident),*) => {$(
                        if x.$n != y.$n {
                            fields.push(format!(
                                "{}: {an} {:?} / {bn} {:?}",
                                stringify!($n), x.$n, y.$n
                            ));
                        }
                    )*};
                }
                f!(kind, perm, uid, gid, size, nlink, mtime, content, xattrs, aliases);
                out.push(format!("{p:?}: {}", fields.join("; ")));
            }
            (Some(x), None) => out.push(format!("{p:?}: only in {an} ({:?})", x.kind)),
            (None, Some(y)) => out.push(format!("{p:?}: only in {bn} ({:?})", y.kind)),
            (None, None) => unreachable!(),
        }
    }
    out
}
