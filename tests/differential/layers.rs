//! The lower layer sets of the differential test.
//!
//! One logical stack of three lowers (`0` is the top) is written in two on-disk formats:
//! - [`Format::Kernel`]: char 0/0 whiteouts, `trusted.overlay.opaque=y`, and one directory
//!   with `trusted.overlay.opaque=x` holding an xattr whiteout. The kernel overlay and
//!   layerfs both read it.
//! - [`Format::Wh`]: the same stack as containers/storage extracts it for fuse-overlayfs:
//!   `.wh.NAME` files, `.wh..wh..opq` and `user.fuseoverlayfs.opaque=y`. The kernel does not
//!   read these, so only layerfs mounts it, and it is compared against the kernel mounted on
//!   the [`Format::Kernel`] copy (same logical content).
//!
//! Every object gets a fixed old mtime, so copy-up that keeps (or loses) times shows.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Kernel,
    Wh,
}

/// mtime given to every lower object: 2001-09-09 plus a small per-object offset.
pub const LOWER_MTIME: i64 = 1_000_000_000;

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int, what: &str, p: &Path) {
    assert!(
        r == 0,
        "{what} {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

struct Layer {
    root: PathBuf,
    fmt: Format,
}

impl Layer {
    fn p(&self, rel: &[u8]) -> PathBuf {
        self.root.join(std::ffi::OsStr::from_bytes(rel))
    }
    fn dir(&self, rel: &[u8], mode: u32) {
        let p = self.p(rel);
        std::fs::create_dir_all(&p).unwrap();
        check(
            unsafe { libc::chmod(cpath(&p).as_ptr(), mode) },
            "chmod",
            &p,
        );
    }
    fn file(&self, rel: &[u8], data: &[u8], mode: u32) {
        let p = self.p(rel);
        std::fs::write(&p, data).unwrap();
        check(
            unsafe { libc::chmod(cpath(&p).as_ptr(), mode) },
            "chmod",
            &p,
        );
    }
    fn chown(&self, rel: &[u8], uid: u32, gid: u32) {
        let p = self.p(rel);
        check(
            unsafe { libc::lchown(cpath(&p).as_ptr(), uid, gid) },
            "lchown",
            &p,
        );
    }
    fn symlink(&self, rel: &[u8], target: &str) {
        std::os::unix::fs::symlink(target, self.p(rel)).unwrap();
    }
    fn link(&self, from: &[u8], to: &[u8]) {
        std::fs::hard_link(self.p(from), self.p(to)).unwrap();
    }
    fn node(&self, rel: &[u8], mode: u32, dev: libc::dev_t) {
        let p = self.p(rel);
        check(
            unsafe { libc::mknod(cpath(&p).as_ptr(), mode, dev) },
            "mknod",
            &p,
        );
    }
    fn xattr(&self, rel: &[u8], name: &str, value: &[u8]) {
        let p = self.p(rel);
        let n = CString::new(name).unwrap();
        check(
            unsafe {
                libc::lsetxattr(
                    cpath(&p).as_ptr(),
                    n.as_ptr(),
                    value.as_ptr() as *const libc::c_void,
                    value.len(),
                    0,
                )
            },
            "lsetxattr",
            &p,
        );
    }
    /// Hide `rel` from the layers below.
    fn whiteout(&self, rel: &[u8]) {
        match self.fmt {
            Format::Kernel => self.node(rel, libc::S_IFCHR, 0),
            Format::Wh => {
                let (dir, name) = split(rel);
                let mut wh = dir.to_vec();
                if !wh.is_empty() {
                    wh.push(b'/');
                }
                wh.extend_from_slice(b".wh.");
                wh.extend_from_slice(name);
                self.file(&wh, b"", 0);
            }
        }
    }
    /// Make the directory `rel` opaque; `alt` picks the second spelling of the format.
    fn opaque(&self, rel: &[u8], alt: bool) {
        match (self.fmt, alt) {
            (Format::Kernel, _) => self.xattr(rel, "trusted.overlay.opaque", b"y"),
            (Format::Wh, false) => {
                let mut p = rel.to_vec();
                p.extend_from_slice(b"/.wh..wh..opq");
                self.file(&p, b"", 0);
            }
            (Format::Wh, true) => self.xattr(rel, "user.fuseoverlayfs.opaque", b"y"),
        }
    }
    /// A whiteout of `name` inside `dir`, spelled as an xattr whiteout (kernel 6.7+ format:
    /// `overlay.opaque=x` on the directory, a zero-size file with `overlay.whiteout`).
    fn xattr_whiteout(&self, dir: &[u8], name: &[u8]) {
        let mut rel = dir.to_vec();
        rel.push(b'/');
        rel.extend_from_slice(name);
        match self.fmt {
            Format::Kernel => {
                self.xattr(dir, "trusted.overlay.opaque", b"x");
                self.file(&rel, b"", 0o644);
                self.xattr(&rel, "trusted.overlay.whiteout", b"");
            }
            Format::Wh => self.whiteout(&rel),
        }
    }
}

fn split(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (&[][..], rel),
    }
}

/// Pattern data that is not all zeros anywhere (so holes and data are told apart).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed) | 1)
        .collect()
}

pub const LONG_NAME_LEN: usize = 255;

/// Names in `odd/` that exercise byte-level handling.
pub fn odd_names() -> Vec<Vec<u8>> {
    vec![
        b"with space".to_vec(),
        b"new\nline".to_vec(),
        b"-leading-dash".to_vec(),
        b"bad\xff\xfe".to_vec(),
        vec![b'n'; LONG_NAME_LEN],
        b"tab\tand*star?".to_vec(),
    ]
}

/// Write the three lower layers in `fmt` under `base/0`, `base/1`, `base/2`; returns them
/// top first (the order of `lowerdir=`).
pub fn build(base: &Path, fmt: Format) -> Vec<PathBuf> {
    let layers: Vec<Layer> = (0..3)
        .map(|i| {
            let root = base.join(i.to_string());
            std::fs::create_dir_all(&root).unwrap();
            Layer { root, fmt }
        })
        .collect();
    let (l0, l1, l2) = (&layers[0], &layers[1], &layers[2]);

    // ---- bottom layer (2)
    l2.file(b"a", b"l2 a\n", 0o644);
    l2.dir(b"c", 0o755); // hidden by the top layer's file c
    l2.file(b"c/x", b"l2 c/x\n", 0o644);
    l2.dir(b"d", 0o755);
    l2.xattr(b"d", "user.dir", b"l2");
    l2.file(b"d/a", b"l2 d/a\n", 0o644);
    l2.xattr(b"d/a", "user.origin", b"l2");
    l2.xattr(b"d/a", "trusted.keep", b"t");
    l2.file(b"d/b", b"l2 d/b\n", 0o600);
    l2.dir(b"d/d", 0o700);
    l2.file(b"d/d/a", b"l2 d/d/a\n", 0o644);
    l2.dir(b"d/e", 0o755);
    l2.file(b"d/e/a", b"l2 d/e/a\n", 0o644);
    l2.dir(b"e", 0o750);
    l2.chown(b"e", 1000, 1000);
    l2.file(b"e/a", b"l2 e/a\n", 0o644);
    l2.file(b"e/b", b"l2 e/b\n", 0o640);
    l2.chown(b"e/b", 1000, 1000);
    l2.dir(b"e/d", 0o755);
    l2.file(b"e/d/a", b"l2 e/d/a\n", 0o644);
    // hard links: b + e/c (names in the op alphabet), hl + d/hl2
    l2.file(b"b", b"l2 b (linked as e/c)\n", 0o644);
    l2.link(b"b", b"e/c");
    l2.file(b"hl", b"l2 hl (linked as d/hl2)\n", 0o644);
    l2.link(b"hl", b"d/hl2");
    l2.dir(b"g", 0o755); // whited out as a whole by layer 1, recreated by layer 0
    l2.file(b"g/a", b"l2 g/a\n", 0o644);
    l2.symlink(b"f", "a");
    l2.dir(b"odd", 0o755);
    l2.node(b"odd/fifo", libc::S_IFIFO | 0o640, 0);
    l2.node(b"odd/null", libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    drop(std::os::unix::net::UnixListener::bind(l2.p(b"odd/sock")).unwrap());
    l2.symlink(b"odd/abs", "/nonexistent/layerfs-diff/abs");
    l2.symlink(b"odd/dangling", "../nowhere");
    l2.symlink(b"odd/dir-link", "../d");
    for (i, n) in odd_names().iter().enumerate() {
        let mut rel = b"odd/".to_vec();
        rel.extend_from_slice(n);
        l2.file(&rel, format!("odd {i}\n").as_bytes(), 0o644);
    }
    l2.file(b"odd/gone\xfe", b"whited out by layer 0\n", 0o644);
    l2.file(b"odd/suid", b"#!/bin/true\n", 0o4755);
    l2.file(b"odd/big", &pattern(2 << 20, 7), 0o644);
    {
        // 64 MiB sparse file: data at 1 MB and at 50 MiB, an xattr with binary value
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(l2.p(b"odd/sparse")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&pattern(5000, 1), 1_000_000).unwrap();
        f.write_all_at(&pattern(3000, 2), 50 << 20).unwrap();
    }
    l2.xattr(b"odd/sparse", "user.odd", b"v\x01\x02\x00end");

    // ---- middle layer (1)
    l1.dir(b"d", 0o755);
    l1.xattr(b"d", "user.dir", b"l1");
    l1.file(b"d/c", b"l1 d/c\n", 0o644);
    l1.whiteout(b"d/b");
    l1.dir(b"d/e", 0o755);
    l1.opaque(b"d/e", false);
    l1.file(b"d/e/b", b"l1 d/e/b\n", 0o644);
    l1.dir(b"d/d", 0o711);
    l1.opaque(b"d/d", true);
    l1.file(b"d/d/b", b"l1 d/d/b\n", 0o644);
    l1.dir(b"e", 0o755);
    l1.file(b"e/a", b"l1 e/a\n", 0o644);
    l1.xattr_whiteout(b"e", b"d");
    l1.whiteout(b"g");

    // ---- top layer (0)
    l0.file(b"c", b"l0 c\n", 0o644);
    l0.dir(b"d", 0o755);
    l0.file(b"d/top", b"l0 d/top\n", 0o644);
    l0.dir(b"e", 0o755);
    l0.whiteout(b"e/a");
    l0.dir(b"g", 0o755);
    l0.file(b"g/b", b"l0 g/b\n", 0o644);
    l0.dir(b"odd", 0o755);
    l0.whiteout(b"odd/gone\xfe");
    l0.file(b"odd/top only", b"l0 odd\n", 0o600);

    for l in &layers {
        set_times(&l.root);
    }
    layers.into_iter().map(|l| l.root).collect()
}

/// Give every object under `root` a fixed old mtime derived from its path (the same in
/// both formats), atime a quarter second later.
fn set_times(root: &Path) {
    fn walk(root: &Path, p: &Path) {
        let md = std::fs::symlink_metadata(p).unwrap();
        if md.is_dir() {
            for c in std::fs::read_dir(p).unwrap() {
                walk(root, &c.unwrap().path());
            }
        }
        let rel = p.strip_prefix(root).unwrap().as_os_str().as_bytes();
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for &b in rel {
            h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        let sec = LOWER_MTIME + (h % 1_000_000) as i64;
        let ts = [
            libc::timespec {
                tv_sec: sec,
                tv_nsec: 250_000_000,
            },
            libc::timespec {
                tv_sec: sec,
                tv_nsec: (h % 1_000_000_000) as i64,
            },
        ];
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                cpath(p).as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(r, "utimensat", p);
    }
    walk(root, root);
}
