//! Differential test: the same operation sequences on a kernel overlay mount and on
//! layerfs over identical layers; after every step the errno of the call and the visible
//! tree must agree, and after remounting each upper too.
//!
//! Allowed differences (compared fields leave them out), in one place:
const ALLOWED_DIFFERENCES: &[(&str, &str)] = &[
    (
        "st_ino values",
        "each implementation numbers inodes its own way; layerfs's stability is tested separately",
    ),
    ("st_dev", "different mounts"),
    ("readdir d_ino vs st_ino", "checked on layerfs only: the kernel overlay without xino/index reports the real d_ino of merged directories' entries"),
    (
        "atime/mtime/ctime",
        "timestamps of the two runs differ by the time between them",
    ),
    (
        "directory st_size and st_nlink",
        "depend on the upper filesystem's layout and on merge state",
    ),
    (
        "whiteout format in the upper",
        "both write char 0/0 here, but layerfs may fall back to .wh. files",
    ),
];

mod common;

use common::Scratch;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const PATHS: &[&str] = &[
    "a",
    "b",
    "d",
    "d/a",
    "d/b",
    "d/c",
    "e",
    "e/a",
    "d/e",
    "d/e/a",
    "f",
    "odd",
    "odd/fifo",
    "odd/sparse",
    "odd/dangling-abs",
];

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Append(usize),
    Truncate(usize, u64),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize, u32),
    Link(usize, usize),
    Symlink(usize),
    Chmod(usize, u32),
    SetXattr(usize),
    RemoveXattr(usize),
    Chown(usize, u32),
    Utimes(usize),
    Mkfifo(usize),
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = 0..PATHS.len();
    prop_oneof![
        p.clone().prop_map(Op::Write),
        p.clone().prop_map(Op::Append),
        (p.clone(), 0u64..3).prop_map(|(a, n)| Op::Truncate(a, n)),
        p.clone().prop_map(Op::Unlink),
        p.clone().prop_map(Op::Mkdir),
        p.clone().prop_map(Op::Rmdir),
        (
            p.clone(),
            p.clone(),
            prop_oneof![Just(0u32), Just(1), Just(2)]
        )
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        (p.clone(), p.clone()).prop_map(|(a, b)| Op::Link(a, b)),
        p.clone().prop_map(Op::Symlink),
        (
            p.clone(),
            prop_oneof![Just(0o600u32), Just(0o755), Just(0o4711)]
        )
            .prop_map(|(a, m)| Op::Chmod(a, m)),
        p.clone().prop_map(Op::SetXattr),
        p.clone().prop_map(Op::RemoveXattr),
        (p.clone(), prop_oneof![Just(0u32), Just(1000)]).prop_map(|(a, u)| Op::Chown(a, u)),
        p.clone().prop_map(Op::Utimes),
        p.prop_map(Op::Mkfifo),
    ]
}

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn rc(r: libc::c_int) -> i32 {
    if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    }
}

/// Apply one op under `root`; returns the errno (0 = success).
fn apply(root: &Path, op: &Op) -> i32 {
    let p = |i: usize| root.join(PATHS[i]);
    match *op {
        // O_NONBLOCK: writing a FIFO without a reader fails with ENXIO instead of hanging
        Op::Write(a) => errno(
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(a))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"written\n")),
        ),
        Op::Append(a) => errno(
            fs::OpenOptions::new()
                .append(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(a))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n")),
        ),
        Op::Truncate(a, n) => errno(
            fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p(a))
                .and_then(|f| f.set_len(n)),
        ),
        Op::Unlink(a) => errno(fs::remove_file(p(a))),
        Op::Mkdir(a) => errno(fs::create_dir(p(a))),
        Op::Rmdir(a) => errno(fs::remove_dir(p(a))),
        Op::Rename(a, b, f) => rc(unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                c(&p(a)).as_ptr(),
                libc::AT_FDCWD,
                c(&p(b)).as_ptr(),
                f,
            )
        }),
        Op::Link(a, b) => errno(fs::hard_link(p(a), p(b))),
        Op::Symlink(a) => errno(std::os::unix::fs::symlink("../target", p(a))),
        Op::Chmod(a, m) => rc(unsafe { libc::fchmodat(libc::AT_FDCWD, c(&p(a)).as_ptr(), m, 0) }),
        Op::SetXattr(a) => {
            let v = b"v1";
            rc(unsafe {
                libc::lsetxattr(
                    c(&p(a)).as_ptr(),
                    c"user.test".as_ptr(),
                    v.as_ptr() as *const _,
                    v.len(),
                    0,
                )
            })
        }
        Op::Chown(a, u) => rc(unsafe { libc::lchown(c(&p(a)).as_ptr(), u, u + 1) }),
        Op::Utimes(a) => {
            let ts = [
                libc::timespec {
                    tv_sec: 1_000_000,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 2_000_000,
                    tv_nsec: 7,
                },
            ];
            rc(unsafe {
                libc::utimensat(
                    libc::AT_FDCWD,
                    c(&p(a)).as_ptr(),
                    ts.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                )
            })
        }
        Op::Mkfifo(a) => rc(unsafe { libc::mkfifo(c(&p(a)).as_ptr(), 0o640) }),
        Op::RemoveXattr(a) => {
            rc(unsafe { libc::lremovexattr(c(&p(a)).as_ptr(), c"user.test".as_ptr()) })
        }
    }
}

/// The visible tree without the allowed differences.
fn snapshot(root: &Path, check_dino: bool) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        let dinos: BTreeMap<_, _> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                use std::os::unix::fs::DirEntryExt;
                (e.file_name(), e.ino())
            })
            .collect();
        for n in names {
            let r = rel.join(&n);
            let full = root.join(&r);
            let md = fs::symlink_metadata(&full).unwrap();
            if check_dino {
                assert_eq!(dinos[&n], md.ino(), "{}: d_ino != st_ino", full.display());
            }
            let set_times = md.mtime() == 2_000_000 && md.mtime_nsec() == 7;
            let ft = md.file_type();
            let mut xattrs: Vec<String> = xattr_list(&full);
            xattrs.sort();
            let desc = if ft.is_dir() {
                stack.push(r.clone());
                format!(
                    "dir {:o} {}:{} t={set_times} x={:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    xattrs
                )
            } else if ft.is_symlink() {
                format!(
                    "link -> {:?} {}:{} t={set_times}",
                    fs::read_link(&full).unwrap(),
                    md.uid(),
                    md.gid()
                )
            } else if !ft.is_file() {
                format!(
                    "special {:o} {:o} {}:{} rdev={}",
                    md.mode() & 0o170000,
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.rdev()
                )
            } else if md.len() > 1 << 20 {
                format!(
                    "bigfile {:o} {}:{} n={} len={} x={:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.nlink(),
                    md.len(),
                    xattrs
                )
            } else {
                format!(
                    "file {:o} {}:{} n={} t={set_times} {:?} x={:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    md.nlink(),
                    fs::read(&full).map(|d| String::from_utf8_lossy(&d).into_owned()),
                    xattrs
                )
            };
            out.insert(r, desc);
        }
    }
    out
}

fn xattr_list(p: &Path) -> Vec<String> {
    let cp = c(p);
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(cp.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| s.starts_with(b"user."))
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Lower layers in formats both implementations read (char 0/0 whiteouts, trusted opaque).
fn build_lowers(s: &Scratch) -> Vec<PathBuf> {
    let (l0, l1) = (s.lower(0), s.lower(1));
    common::sh_ok(&format!(
        r#"set -e
cd '{l1}'
mkdir -p d/e e
echo lower-a > a; echo lower-da > d/a; echo lower-db > d/b; echo lower-ea > e/a; echo lower-dea > d/e/a
ln -s a f
setfattr -n user.test -v lower d/a
mkdir odd
mkfifo odd/fifo
ln -s /nonexistent/target odd/dangling-abs
ln -s ../nowhere odd/dangling-rel
touch "odd/$(printf 'bad\xff\xfe')" "odd/with space" "odd/new
line" "odd/-leading" "odd/$(head -c 255 /dev/zero | tr '\0' n)"
truncate -s 64M odd/sparse
printf data | dd of=odd/sparse bs=1 seek=1000000 conv=notrunc status=none
setfattr -n user.odd -v "$(printf 'v\x01\x02')" odd/sparse
cd '{l0}'
mkdir -p d e
echo top-b > b; echo top-dc > d/c
mknod d/b c 0 0
echo top-ea > e/a
setfattr -n trusted.overlay.opaque -v y e
"#,
        l0 = l0.display(),
        l1 = l1.display()
    ));
    vec![l0, l1]
}

fn run_sequence(ops: &[Op]) -> Result<(), String> {
    let s = Scratch::new();
    let lowers = build_lowers(&s);
    for d in ["kupper", "kwork", "kmnt", "kwork2"] {
        fs::create_dir(s.path().join(d)).unwrap();
    }
    let (ku, kw, km) = (
        s.path().join("kupper"),
        s.path().join("kwork"),
        s.path().join("kmnt"),
    );
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let kopts = "redirect_dir=on,index=off,metacopy=off";
    {
        let k = common::mount_kernel_overlay(&lowers, Some(&ku), Some(&kw), &km, kopts);
        let l = common::mount_layerfs(&lowers, Some(&s.upper()), Some(&s.work()), &s.mnt(), "");
        let first = (snapshot(&k.mnt, false), snapshot(&l.mnt, true));
        if first.0 != first.1 {
            return Err(format!(
                "initial trees differ:\nkernel {:#?}\nlayerfs {:#?}",
                first.0, first.1
            ));
        }
        for (i, op) in ops.iter().enumerate() {
            let ek = apply(&k.mnt, op);
            let el = apply(&l.mnt, op);
            if ek != el {
                return Err(format!("step {i} {op:?}: errno kernel {ek} layerfs {el}"));
            }
            let (tk, tl) = (snapshot(&k.mnt, false), snapshot(&l.mnt, true));
            if tk != tl {
                return Err(format!(
                    "step {i} {op:?}: trees differ:\nkernel {tk:#?}\nlayerfs {tl:#?}"
                ));
            }
        }
    }
    // Remount both uppers, and the layerfs upper under the kernel too.
    let k = common::mount_kernel_overlay(&lowers, Some(&ku), Some(&kw), &km, kopts);
    let tk = snapshot(&k.mnt, false);
    drop(k);
    let l = common::mount_layerfs(&lowers, Some(&s.upper()), Some(&s.work()), &s.mnt(), "");
    let tl = snapshot(&l.mnt, true);
    drop(l);
    if tk != tl {
        return Err(format!("after remount:\nkernel {tk:#?}\nlayerfs {tl:#?}"));
    }
    let kw2 = s.path().join("kwork2");
    let k2 = common::mount_kernel_overlay(&lowers, Some(&s.upper()), Some(&kw2), &km, kopts);
    let tk2 = snapshot(&k2.mnt, false);
    drop(k2);
    if tk2 != tl {
        return Err(format!(
            "layerfs upper read by the kernel:\nkernel {tk2:#?}\nlayerfs {tl:#?}"
        ));
    }
    Ok(())
}

#[test]
fn differential_fixed_scenarios() {
    if !common::require_mount_privilege("differential_fixed_scenarios") {
        return;
    }
    assert!(!ALLOWED_DIFFERENCES.is_empty());
    use Op::*;
    let scenarios: Vec<Vec<Op>> = vec![
        vec![Append(0), Chmod(0, 0o600), Unlink(1), Write(1)],
        vec![
            Rmdir(6),
            Unlink(3),
            Unlink(4),
            Unlink(5),
            Unlink(9),
            Rmdir(8),
            Rmdir(2),
            Mkdir(2),
        ],
        vec![Rename(2, 6, 0), Rename(7, 2, 0), Rename(2, 6, 0)],
        vec![
            Rename(8, 6, 2),
            Rename(0, 1, 2),
            Rename(0, 1, 1),
            Link(1, 10),
        ],
        vec![
            SetXattr(0),
            RemoveXattr(3),
            Truncate(3, 1),
            Symlink(0),
            Rename(3, 4, 0),
        ],
        vec![Rename(2, 7, 0), Mkdir(6), Rename(5, 6, 0)],
        vec![
            Chmod(12, 0o600),
            Write(12),
            Chmod(13, 0o600),
            Append(13),
            SetXattr(13),
            Rename(11, 2, 0),
        ],
        vec![Rename(14, 0, 0), Rename(13, 12, 0), Unlink(14), Rmdir(11)],
    ];
    for (i, ops) in scenarios.iter().enumerate() {
        if let Err(e) = run_sequence(ops) {
            panic!("scenario {i}: {e}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn differential_random_sequences(ops in proptest::collection::vec(op_strategy(), 1..25)) {
        if !common::require_mount_privilege("differential_random_sequences") {
            return Ok(());
        }
        if let Err(e) = run_sequence(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn regression_rename_then_mkdir_rmdir_same_name() {
    if !common::require_mount_privilege("regression_rename_then_mkdir_rmdir_same_name") {
        return;
    }
    use Op::*;
    run_sequence(&[Rename(7, 3, 0), Mkdir(7), Rmdir(7)]).unwrap();
}

#[test]
fn regression_exchange_upper_dir_onto_lower_name() {
    if !common::require_mount_privilege("regression_exchange_upper_dir_onto_lower_name") {
        return;
    }
    use Op::*;
    run_sequence(&[Mkdir(4), Rename(4, 6, 2)]).unwrap();
}

/// Per-thread work on its own subtree `t{n}`: creates, renames, unlinks, mkdir/rmdir,
/// appends to a lower file (copy-up), readdir.
fn thread_ops(root: &Path, t: usize, rounds: usize) -> Vec<(String, i32)> {
    let mut log = Vec::new();
    let base = root.join(format!("t{t}"));
    let mut rec = |what: String, r: i32| log.push((what, r));
    rec("mkdir".into(), errno(fs::create_dir(&base)));
    for i in 0..rounds {
        let f = base.join(format!("f{i}"));
        rec(
            format!("write {i}"),
            errno(fs::write(&f, format!("{t}-{i}"))),
        );
        let g = base.join(format!("g{i}"));
        rec(format!("rename {i}"), errno(fs::rename(&f, &g)));
        let d = base.join(format!("d{i}"));
        rec(format!("mkdir {i}"), errno(fs::create_dir(&d)));
        rec(
            format!("move into {i}"),
            errno(fs::rename(&g, d.join("in"))),
        );
        if i % 3 == 0 {
            rec(format!("unlink {i}"), errno(fs::remove_file(d.join("in"))));
            rec(format!("rmdir {i}"), errno(fs::remove_dir(&d)));
        }
        rec(
            format!("append {i}"),
            errno(
                fs::OpenOptions::new()
                    .append(true)
                    .open(root.join("d").join(if t % 2 == 0 { "a" } else { "c" }))
                    .map(drop),
            ),
        );
        rec(
            format!("readdir {i}"),
            errno(fs::read_dir(root).map(|r| r.count())),
        );
    }
    log
}

#[test]
fn concurrent_disjoint_ops_match_serial_kernel_replay() {
    if !common::require_mount_privilege("concurrent_disjoint_ops_match_serial_kernel_replay") {
        return;
    }
    const THREADS: usize = 6;
    const ROUNDS: usize = 40;
    let s = Scratch::new();
    let lowers = build_lowers(&s);
    for d in ["kupper", "kwork", "kmnt"] {
        fs::create_dir(s.path().join(d)).unwrap();
    }
    let (ku, kw, km) = (
        s.path().join("kupper"),
        s.path().join("kwork"),
        s.path().join("kmnt"),
    );
    let l = common::mount_layerfs(&lowers, Some(&s.upper()), Some(&s.work()), &s.mnt(), "");
    let root = l.mnt.clone();
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let r = root.clone();
            std::thread::spawn(move || thread_ops(&r, t, ROUNDS))
        })
        .collect();
    // copy-up of one lower file by several openers at once
    let openers: Vec<_> = (0..4)
        .map(|i| {
            let p = root.join("b");
            std::thread::spawn(move || {
                let mut f = fs::OpenOptions::new().append(true).open(p).unwrap();
                std::io::Write::write_all(&mut f, format!("opener{i}\n").as_bytes()).unwrap();
            })
        })
        .collect();
    let logs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread panicked"))
        .collect();
    for o in openers {
        o.join().expect("opener panicked");
    }
    assert!(
        start.elapsed() < std::time::Duration::from_secs(120),
        "operations took too long: possible deadlock"
    );
    let b = fs::read_to_string(root.join("b")).unwrap();
    assert!(
        b.starts_with("top-b\n"),
        "copy-up lost the lower data: {b:?}"
    );
    for i in 0..4 {
        assert!(
            b.contains(&format!("opener{i}\n")),
            "append of opener {i} lost: {b:?}"
        );
    }
    let mut tl = snapshot(&root, true);
    drop(l);
    let k = common::mount_kernel_overlay(
        &lowers,
        Some(&ku),
        Some(&kw),
        &km,
        "redirect_dir=on,index=off",
    );
    let kroot = k.mnt.clone();
    for (t, log) in logs.iter().enumerate() {
        let klog = thread_ops(&kroot, t, ROUNDS);
        assert_eq!(
            &klog, log,
            "thread {t}: errno sequence differs from the serial kernel replay"
        );
    }
    for i in 0..4 {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(kroot.join("b"))
            .unwrap();
        std::io::Write::write_all(&mut f, format!("opener{i}\n").as_bytes()).unwrap();
    }
    let mut tk = snapshot(&kroot, false);
    // the openers' append order is the only nondeterminism: compare b separately
    tk.remove(Path::new("b"));
    tl.remove(Path::new("b"));
    assert_eq!(tk, tl, "final tree differs from the serial kernel replay");
}
