//! Load: many threads doing raw syscalls of mixed fsstress-like operations on one mount.
//!
//! Phase 1: every round, all workers open the same lower file at once (a barrier lines them
//! up); writers stamp their own offset, readers check the data. No stamp may be lost
//! (a racing copy-up must not let one opener write to a copy that is then replaced).
//! Phase 2: for a bounded time, random create/write/read/truncate/rename/link/unlink/
//! mkdir/rmdir/readdir/setxattr/getxattr/stat and copy-up opens over a small shared
//! namespace, so the operations collide. Every call must return within a bound (a watchdog
//! reports the stuck call with the daemon's kernel stacks), every errno must be in the
//! operation's expected set, the daemon's memory growth is bounded relative to the work
//! done, and at the end the tree is readable and a remount shows the same tree.
//!
//! `LAYERFS_STRESS_SECS` (default 30), `LAYERFS_STRESS_THREADS` (default 8),
//! `LAYERFS_STRESS_SEED`, `LAYERFS_STRESS_HANG_SECS` (default 60); `scripts/stress` runs
//! it for longer.

mod common;
#[path = "common/load.rs"]
mod load;

use common::Scratch;
use load::{env_num, rss_kib, seed_from_env, snapshot, snapshot_diff, thread_stacks, Rng};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const CU_FILES: usize = 24;
const CU_SIZE: usize = 256 << 10;
const STAMP: usize = 16;

fn pattern(file: usize, off: usize) -> u8 {
    (off.wrapping_mul(31) ^ file.wrapping_mul(7)) as u8
}

fn lower_data(file: usize) -> Vec<u8> {
    (0..CU_SIZE).map(|o| pattern(file, o)).collect()
}

fn stamp(worker: usize, round: usize) -> [u8; STAMP] {
    let mut s = [b'.'; STAMP];
    let t = format!("w{worker:03}r{round:05}");
    s[..t.len()].copy_from_slice(t.as_bytes());
    s
}

/// What each worker is doing now, for the watchdog.
#[derive(Default)]
struct Slot {
    op: Option<(String, Instant)>,
    tid: i32,
}

struct Shared {
    mnt: PathBuf,
    slots: Vec<Mutex<Slot>>,
    stop: AtomicBool,
    hang: Mutex<Option<String>>,
    /// (op, errno) -> count; errno 0 is success
    counts: Mutex<BTreeMap<(&'static str, i32), u64>>,
    unexpected: Mutex<Vec<String>>,
}

/// The errnos each operation may give when others race it, besides ELOOP (directory
/// components can be symlinks that point at each other), which every operation on the
/// shared namespace may give. EPERM for setxattr: user.* xattrs on a symlink.
fn expected(op: &str) -> &'static [i32] {
    use libc::*;
    match op {
        "create" | "write" | "read" | "truncate" | "unlink" => &[ENOENT, ENOTDIR, EISDIR],
        "rename" => &[ENOENT, ENOTDIR, EISDIR, ENOTEMPTY, EEXIST, EINVAL],
        "exchange" => &[ENOENT, ENOTDIR, EISDIR, EINVAL],
        "link" => &[ENOENT, ENOTDIR, EEXIST, EPERM],
        "mkdir" | "symlink" => &[ENOENT, ENOTDIR, EEXIST],
        "rmdir" => &[ENOENT, ENOTDIR, ENOTEMPTY],
        "readdir" | "chmod" | "stat" => &[ENOENT, ENOTDIR],
        "setxattr" => &[ENOENT, ENOTDIR, EPERM],
        "getxattr" => &[ENOENT, ENOTDIR, ENODATA],
        // copyup and anything else: no error at all
        _ => &[],
    }
}

/// EIO from a call racing others is tolerated (and counted) when
/// `LAYERFS_STRESS_STRICT=0`; by default it fails the test. Its causes found so far are
/// fixed (node ids reused while the kernel held the old inode, new generations for the same
/// object, created files not counted in the passthrough bookkeeping; see the regression
/// tests below).
fn strict() -> bool {
    std::env::var_os("LAYERFS_STRESS_STRICT").is_none_or(|v| v != "0")
}

fn gettid() -> i32 {
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

impl Shared {
    /// Run one operation under the watchdog and account its result.
    fn run(
        &self,
        w: usize,
        op: &'static str,
        what: String,
        f: impl FnOnce() -> std::io::Result<()>,
    ) {
        self.slots[w].lock().unwrap().op = Some((format!("{op} {what}"), Instant::now()));
        let r = f();
        self.slots[w].lock().unwrap().op = None;
        let errno = match &r {
            Ok(()) => 0,
            Err(e) => e.raw_os_error().unwrap_or(-1),
        };
        *self.counts.lock().unwrap().entry((op, errno)).or_default() += 1;
        let known_bug = errno == libc::EIO && !strict();
        let eloop = errno == libc::ELOOP && op != "copyup";
        if errno != 0
            && !expected(op).contains(&errno)
            && !eloop
            && !known_bug
            && !self.stop.load(Ordering::Relaxed)
        {
            self.unexpected
                .lock()
                .unwrap()
                .push(format!("{op} {what}: {:?}", r.unwrap_err()));
        }
    }
}

fn watchdog(sh: Arc<Shared>, daemon: i32, bound: Duration) {
    while !sh.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(500));
        for (i, s) in sh.slots.iter().enumerate() {
            let s = s.lock().unwrap();
            if let Some((op, t)) = &s.op {
                if t.elapsed() > bound {
                    let mut msg = format!(
                        "worker {i} stuck for {:?} in `{op}`\nworker kernel stack:\n{}\n\
                         daemon {daemon} threads:\n{}",
                        t.elapsed(),
                        fs::read_to_string(format!("/proc/self/task/{}/stack", s.tid))
                            .unwrap_or_default(),
                        thread_stacks(daemon)
                    );
                    for (j, o) in sh.slots.iter().enumerate() {
                        if let Ok(o) = o.try_lock() {
                            if let Some((op, t)) = &o.op {
                                msg.push_str(&format!(
                                    "worker {j}: `{op}` for {:?}\n",
                                    t.elapsed()
                                ));
                            }
                        }
                    }
                    *sh.hang.lock().unwrap() = Some(msg);
                    sh.stop.store(true, Ordering::Relaxed);
                    drop(s);
                    // Unblock the stuck calls: they fail with ENOTCONN once the daemon is gone.
                    unsafe { libc::kill(daemon, libc::SIGKILL) };
                    let _ = std::process::Command::new("umount")
                        .arg("-l")
                        .arg(&sh.mnt)
                        .status();
                    return;
                }
            }
        }
    }
}

/// Phase 1: all workers open lower file `k` at once; even workers write a stamp at their
/// offset through a read-write open (copy-up), odd ones read the whole file.
fn copy_up_rounds(sh: &Shared, w: usize, nworkers: usize, barrier: &Barrier) {
    for k in 0..CU_FILES {
        barrier.wait();
        if sh.stop.load(Ordering::Relaxed) {
            continue;
        }
        let p = sh.mnt.join(format!("cu/f{k}"));
        if w % 2 == 0 {
            sh.run(w, "copyup", format!("{p:?} write"), || {
                let f = fs::OpenOptions::new().read(true).write(true).open(&p)?;
                f.write_all_at(&stamp(w, k), (w * 4096) as u64)?;
                Ok(())
            });
        } else {
            sh.run(w, "copyup", format!("{p:?} read"), || {
                let mut d = Vec::new();
                fs::File::open(&p)?.read_to_end(&mut d)?;
                assert_eq!(d.len(), CU_SIZE, "{p:?}: size while copied up");
                for (o, &b) in d.iter().enumerate() {
                    let stamped = (o % 4096) < STAMP && (o / 4096) % 2 == 0 && o / 4096 < nworkers;
                    if !stamped {
                        assert_eq!(b, pattern(k, o), "{p:?}: byte {o} during copy-up");
                    }
                }
                Ok(())
            });
        }
    }
}

const DIRS: [&str; 8] = ["", "d0", "d1", "d2", "d0/s0", "d1/s0", "n0", "n1/n0"];
const NAMES: [&str; 10] = ["f0", "f1", "f2", "f3", "f4", "s0", "n0", "n1", "n2", "x"];

fn mixed(sh: &Shared, w: usize, seed: u64, until: Instant) {
    let mut rng = Rng::new(seed ^ (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let rand_path = |rng: &mut Rng| -> PathBuf {
        let d = rng.pick(&DIRS);
        let n = rng.pick(&NAMES);
        sh.mnt.join(d).join(n)
    };
    while Instant::now() < until && !sh.stop.load(Ordering::Relaxed) {
        let p = rand_path(&mut rng);
        let q = rand_path(&mut rng);
        let what = format!("{}", p.strip_prefix(&sh.mnt).unwrap().display());
        let both = format!("{what} {}", q.strip_prefix(&sh.mnt).unwrap().display());
        let len = rng.below(20000) as usize;
        let byte = rng.next() as u8;
        match rng.below(21) {
            0 => sh.run(w, "create", what, || {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644)
                    .open(&p)?;
                f.write_all(&vec![byte; len])
            }),
            1 | 2 => sh.run(w, "write", what, || {
                let f = fs::OpenOptions::new().write(true).open(&p)?;
                f.write_all_at(&vec![byte; len], (len / 3) as u64)
            }),
            3 => sh.run(w, "read", what, || {
                let mut d = Vec::new();
                fs::File::open(&p)?.read_to_end(&mut d).map(|_| ())
            }),
            4 => sh.run(w, "truncate", what, || {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&p)?
                    .set_len(len as u64)
            }),
            5 | 6 => sh.run(w, "rename", both, || fs::rename(&p, &q)),
            7 => sh.run(w, "link", both, || fs::hard_link(&p, &q)),
            8 => sh.run(w, "unlink", what, || fs::remove_file(&p)),
            9 => sh.run(w, "mkdir", what, || fs::create_dir(&p)),
            10 => sh.run(w, "rmdir", what, || fs::remove_dir(&p)),
            11 => sh.run(w, "readdir", what, || {
                for e in fs::read_dir(&p)? {
                    let _ = e?;
                }
                Ok(())
            }),
            12 => sh.run(w, "setxattr", what, || {
                xattr(&p, b"user.stress", Some(&vec![byte; len % 300]))
            }),
            13 => sh.run(w, "getxattr", what, || xattr(&p, b"user.stress", None)),
            14 => sh.run(w, "stat", what, || fs::symlink_metadata(&p).map(|_| ())),
            15 => {
                let target = *rng.pick(&["f0", "s0", "../f1", "n0/f2", "x", "."]);
                sh.run(w, "symlink", format!("{what} -> {target}"), || {
                    std::os::unix::fs::symlink(target, &p)
                })
            }
            16 => {
                let mode = *rng.pick(&[0o644, 0o600, 0o755, 0o4755, 0o1777]);
                sh.run(w, "chmod", what, || {
                    fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode))
                })
            }
            17 => sh.run(w, "exchange", both, || {
                let (a, b) = (cpath(&p), cpath(&q));
                let r = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                if r < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            }),
            _ => {
                let k = rng.below(CU_FILES as u64) as usize;
                let p = sh.mnt.join(format!("cu2/f{k}"));
                sh.run(w, "copyup", format!("{p:?}"), || {
                    let f = fs::OpenOptions::new().read(true).write(true).open(&p)?;
                    f.write_all_at(&stamp(w, k), (w * 4096) as u64)?;
                    let mut b = [0u8; 64];
                    f.read_exact_at(&mut b, (w * 4096 + 100) as u64)?;
                    assert_eq!(b[..], lower_data(k)[w * 4096 + 100..w * 4096 + 164]);
                    Ok(())
                });
            }
        }
    }
}

fn cpath(p: &Path) -> std::ffi::CString {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn xattr(p: &Path, name: &[u8], set: Option<&[u8]>) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    let r = unsafe {
        match set {
            Some(v) => {
                libc::lsetxattr(cp.as_ptr(), cn.as_ptr(), v.as_ptr().cast(), v.len(), 0) as isize
            }
            None => {
                let mut buf = [0u8; 512];
                libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }
        }
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[test]
fn stress_mixed_operations() {
    if !common::require_mount_privilege("stress_mixed_operations") {
        return;
    }
    let secs = env_num("LAYERFS_STRESS_SECS", 30);
    let nworkers = env_num("LAYERFS_STRESS_THREADS", 8) as usize;
    let hang = Duration::from_secs(env_num("LAYERFS_STRESS_HANG_SECS", 60));
    let seed = seed_from_env("LAYERFS_STRESS_SEED");
    let s = Scratch::new();
    let l0 = s.lower(0);
    let l1 = s.lower(1);
    for d in ["cu", "cu2"] {
        fs::create_dir(l1.join(d)).unwrap();
        for k in 0..CU_FILES {
            fs::write(l1.join(format!("{d}/f{k}")), lower_data(k)).unwrap();
        }
    }
    for d in ["d0", "d1", "d2"] {
        for sub in ["", "/s0"] {
            fs::create_dir_all(l1.join(format!("{d}{sub}"))).unwrap();
            fs::create_dir_all(l0.join(format!("{d}{sub}"))).unwrap();
            for (i, n) in NAMES.iter().enumerate().take(5) {
                let l = if i % 2 == 0 { &l0 } else { &l1 };
                fs::write(l.join(format!("{d}{sub}/{n}")), format!("{d}{sub}/{n}\n")).unwrap();
            }
        }
    }
    fs::hard_link(l1.join("d0/f1"), l1.join("d1/f4.lnk")).unwrap();

    let lowers = [l0.clone(), l1.clone()];
    let opts = common::layer_opts(&lowers, Some(&s.upper()), Some(&s.work()));
    let log = s.path().join("daemon.log");
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let m = load::FgMount::start(&opts, &s.mnt(), &log, &rust_log);
    let daemon = m.pid();
    // Warm up the daemon (first readdirs, allocator arenas) before measuring.
    snapshot(&s.mnt()).unwrap();
    let rss0 = rss_kib(daemon);
    let sh = Arc::new(Shared {
        mnt: s.mnt(),
        slots: (0..nworkers).map(|_| Mutex::new(Slot::default())).collect(),
        stop: AtomicBool::new(false),
        hang: Mutex::new(None),
        counts: Mutex::new(BTreeMap::new()),
        unexpected: Mutex::new(Vec::new()),
    });
    let dog = {
        let sh = sh.clone();
        std::thread::spawn(move || watchdog(sh, daemon, hang))
    };
    let barrier = Arc::new(Barrier::new(nworkers));
    let start = Instant::now();
    let until = start + Duration::from_secs(secs);
    let workers: Vec<_> = (0..nworkers)
        .map(|w| {
            let sh = sh.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                sh.slots[w].lock().unwrap().tid = gettid();
                copy_up_rounds(&sh, w, nworkers, &barrier);
                mixed(&sh, w, seed, until);
            })
        })
        .collect();
    let mut panics = Vec::new();
    for (i, t) in workers.into_iter().enumerate() {
        if let Err(e) = t.join() {
            panics.push(format!(
                "worker {i}: {}",
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            ));
        }
    }
    sh.stop.store(true, Ordering::Relaxed);
    dog.join().unwrap();
    if let Some(h) = sh.hang.lock().unwrap().take() {
        panic!("a call did not return within {hang:?} (seed {seed}):\n{h}");
    }
    let counts = sh.counts.lock().unwrap().clone();
    let total: u64 = counts.values().sum();
    let mut report = String::new();
    let mut by_op: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for ((op, errno), n) in &counts {
        let e = by_op.entry(op).or_default();
        if *errno == 0 {
            e.0 += n
        } else {
            e.1 += n
        }
    }
    for (op, (ok, fail)) in &by_op {
        report.push_str(&format!("  {op:9} {ok:8} ok {fail:8} failed\n"));
    }
    let rss1 = rss_kib(daemon);
    eprintln!(
        "stress: {nworkers} workers, {total} operations in {:?} (seed {seed}), daemon RSS \
         {rss0} KiB -> {rss1} KiB\n{report}errnos: {counts:?}",
        start.elapsed()
    );
    assert!(panics.is_empty(), "seed {seed}: {panics:#?}");
    let unexpected = sh.unexpected.lock().unwrap();
    if !unexpected.is_empty() {
        let keep = std::env::temp_dir().join(format!("layerfs-stress-{seed}.log"));
        let _ = fs::copy(&log, &keep);
        eprintln!("daemon log kept in {}", keep.display());
    }
    assert!(
        unexpected.is_empty(),
        "seed {seed}: errnos outside the expected sets ({} calls):\n{}\ndaemon log (end):\n{}",
        unexpected.len(),
        unexpected
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        tail(&m.log_text(), 40)
    );
    assert!(common::is_mounted(&s.mnt()), "the daemon died");
    // Memory: generous, relative to the work done (not to time): 64 MiB plus 1 KiB per call.
    let bound = 64 * 1024 + total;
    assert!(
        rss1.saturating_sub(rss0) <= bound,
        "daemon RSS grew {rss0} -> {rss1} KiB over {total} operations (bound {bound} KiB)"
    );
    // No stamp lost in the synchronized copy-ups.
    for k in 0..CU_FILES {
        let d = fs::read(s.mnt().join(format!("cu/f{k}"))).unwrap();
        let mut want = lower_data(k);
        for w in (0..nworkers).step_by(2) {
            want[w * 4096..w * 4096 + STAMP].copy_from_slice(&stamp(w, k));
        }
        assert!(d == want, "cu/f{k}: a concurrent opener's write was lost");
    }
    // Consistency: the tree is readable, and a remount shows the same tree.
    let before = snapshot(&s.mnt()).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    if let Some(status) = m.stop() {
        assert!(status.success(), "daemon exit status {status}");
    }
    let staging = s.work().join("work");
    let m = s.mount(2, "");
    let after = snapshot(&s.mnt()).unwrap_or_else(|e| panic!("seed {seed} after remount: {e}"));
    let diff = snapshot_diff(&before, &after);
    assert!(
        diff.is_empty(),
        "seed {seed}: the remount shows another tree:\n{}",
        diff.join("\n")
    );
    let left: Vec<_> = fs::read_dir(&staging).unwrap().collect();
    assert!(left.is_empty(), "staging not empty after remount: {left:?}");
    eprintln!("stress: {} objects in the final tree", after.len());
    drop(m);
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The kernel overlay keeps an unlinked file usable through references taken before the
/// unlink (an O_PATH fd, /proc/self/fd reopen, a racing open). So does layerfs: the upper
/// file lives on in the workdir as an orphan until the kernel forgets the inode, which also
/// keeps its real inode number (and so the node id) from being given to a new file (ext4
/// reuses freed inode numbers at once) while the kernel still holds the old inode.
#[test]
fn unlinked_file_stays_usable_through_open_references() {
    if !common::require_mount_privilege("unlinked_file_stays_usable_through_open_references") {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    let m = s.mount(1, "");
    for i in 0..20 {
        let a = m.path(&format!("a{i}"));
        fs::write(&a, "old").unwrap();
        let pathfd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&a)
            .unwrap();
        let ino = pathfd.metadata().unwrap().ino();
        fs::remove_file(&a).unwrap();
        // A new file that may get the freed upper inode (and so the same st_ino).
        let b = m.path(&format!("b{i}"));
        fs::write(&b, "new").unwrap();
        let reused = fs::metadata(&b).unwrap().ino() == ino;
        let via = format!("/proc/self/fd/{}", pathfd.as_raw_fd());
        let st = fs::metadata(&via);
        assert!(
            st.is_ok(),
            "round {i} (ino reused: {reused}): fstat of the unlinked file: {st:?}"
        );
        let data = fs::read(&via);
        assert_eq!(
            data.as_deref().ok(),
            Some(&b"old"[..]),
            "round {i} (ino reused: {reused}): reading the unlinked file through its reference: {data:?}"
        );
    }
}

/// Regression (found by the stress test): after a copied-up lower file got a second name
/// and the first name was unlinked, the second name gave ENXIO (the node still pointed at
/// the first name, now a whiteout) until the kernel forgot the inode.
#[test]
fn second_hard_link_survives_unlink_of_the_copied_up_first() {
    if !common::require_mount_privilege("second_hard_link_survives_unlink_of_the_copied_up_first") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir(s.lower(0).join("d")).unwrap();
    fs::write(s.lower(0).join("d/f"), "lower").unwrap();
    let m = s.mount(1, "");
    fs::write(m.path("d/f"), "x\n").unwrap();
    fs::hard_link(m.path("d/f"), m.path("d/g")).unwrap();
    fs::remove_file(m.path("d/f")).unwrap();
    assert_eq!(fs::read_to_string(m.path("d/g")).unwrap(), "x\n");
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("d/g"))
        .unwrap()
        .write_all(b"y\n")
        .unwrap();
    assert_eq!(fs::read_to_string(m.path("d/g")).unwrap(), "x\ny\n");
    // and the other way round: a third name, the second removed
    fs::hard_link(m.path("d/g"), m.path("d/h")).unwrap();
    fs::remove_file(m.path("d/g")).unwrap();
    assert_eq!(fs::read_to_string(m.path("d/h")).unwrap(), "x\ny\n");
    assert!(!m.path("d/f").exists() && !m.path("d/g").exists());
}

/// Regression (found by the stress test): opening a file that was unlinked after the kernel
/// looked it up (here: reopening through /proc/self/fd of an O_PATH descriptor) gave ENXIO,
/// because its name in the upper now holds a whiteout device. Like the kernel overlay,
/// layerfs now opens the unlinked (orphaned) copy.
#[test]
fn open_of_unlinked_copied_up_file_opens_the_orphan() {
    if !common::require_mount_privilege("open_of_unlinked_copied_up_file_opens_the_orphan") {
        return;
    }
    use std::os::fd::AsRawFd;
    let s = Scratch::new();
    fs::write(s.lower(0).join("f"), "lower").unwrap();
    let m = s.mount(1, "");
    fs::write(m.path("f"), "upper").unwrap();
    let pathfd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(m.path("f"))
        .unwrap();
    fs::remove_file(m.path("f")).unwrap();
    let d = fs::read_to_string(format!("/proc/self/fd/{}", pathfd.as_raw_fd()));
    assert_eq!(d.ok().as_deref(), Some("upper"));
    assert!(!m.path("f").exists());
}

/// A file replaced by rename(2) stays usable through references taken before, like an
/// unlinked one; its orphan in the workdir goes once the last reference is dropped, and
/// nothing is left behind for a remount.
#[test]
fn file_replaced_by_rename_stays_usable_and_orphans_are_cleaned() {
    if !common::require_mount_privilege(
        "file_replaced_by_rename_stays_usable_and_orphans_are_cleaned",
    ) {
        return;
    }
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new();
    fs::write(s.lower(0).join("t"), "lower t").unwrap();
    let m = s.mount(1, "");
    fs::write(m.path("t"), "upper t").unwrap(); // copied up, lower content below
    fs::write(m.path("u"), "upper-only u").unwrap();
    fs::write(m.path("src1"), "src1").unwrap();
    fs::write(m.path("src2"), "src2").unwrap();
    let open_path = |p: &str| {
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(m.path(p))
            .unwrap()
    };
    let (ft, fu) = (open_path("t"), open_path("u"));
    let ino_t = ft.metadata().unwrap().ino();
    fs::rename(m.path("src1"), m.path("t")).unwrap();
    fs::rename(m.path("src2"), m.path("u")).unwrap();
    let via = |f: &fs::File| fs::read_to_string(format!("/proc/self/fd/{}", f.as_raw_fd()));
    assert_eq!(via(&ft).unwrap(), "upper t");
    assert_eq!(via(&fu).unwrap(), "upper-only u");
    assert_eq!(ft.metadata().unwrap().ino(), ino_t);
    assert_eq!(fs::read_to_string(m.path("t")).unwrap(), "src1");
    assert_eq!(fs::read_to_string(m.path("u")).unwrap(), "src2");
    let orphans = || {
        fs::read_dir(s.work().join("work"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("orphan-"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(orphans() >= 2, "no orphans kept while referenced");
    drop((ft, fu));
    // The kernel forgets the inodes once the last reference is gone.
    let t0 = std::time::Instant::now();
    while orphans() > 0 && t0.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        orphans(),
        0,
        "orphans left after the references were dropped"
    );
}

/// Regression (from the stress test's EIO hunt): a removed node found again through a name
/// it did not know (another hard link) got a new generation, which makes the kernel mark
/// the inode it still holds bad: an open file of the removed name then gave EIO.
#[test]
fn hard_link_found_after_unlink_keeps_open_files_working() {
    if !common::require_mount_privilege("hard_link_found_after_unlink_keeps_open_files_working") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("a"), "linked").unwrap();
    fs::hard_link(s.lower(0).join("a"), s.lower(0).join("b")).unwrap();
    let m = s.mount(1, "");
    let f = fs::File::open(m.path("a")).unwrap();
    fs::remove_file(m.path("a")).unwrap();
    // the kernel looks `b` up now: the same object as the removed `a`
    assert_eq!(fs::read_to_string(m.path("b")).unwrap(), "linked");
    let md = f.metadata();
    assert!(md.is_ok(), "fstat of the open, unlinked name: {md:?}");
    let mut d = String::new();
    (&f).read_to_string(&mut d).unwrap();
    assert_eq!(d, "linked");
}

/// Regression (the stress test's remaining EIO): a file created through the mount was
/// answered in cached I/O mode without being counted, so a second open while the first
/// was still open was answered with FUSE passthrough, which the kernel refuses for an
/// inode with cached opens: EIO. Checked with and without passthrough.
#[test]
fn open_while_created_file_is_open() {
    if !common::require_mount_privilege("open_while_created_file_is_open") {
        return;
    }
    for extra in ["", "writeback=1"] {
        let s = Scratch::new();
        let m = s.mount(1, extra);
        let mut w = fs::File::create(m.path("new")).unwrap();
        w.write_all(b"one\n").unwrap();
        let r = fs::read_to_string(m.path("new"));
        assert_eq!(
            r.as_deref().ok(),
            Some("one\n"),
            "{extra}: second open: {r:?}"
        );
        let rw = fs::OpenOptions::new().append(true).open(m.path("new"));
        assert!(rw.is_ok(), "{extra}: third open: {rw:?}");
        rw.unwrap().write_all(b"two\n").unwrap();
        drop(w);
        assert_eq!(fs::read_to_string(m.path("new")).unwrap(), "one\ntwo\n");
    }
}
