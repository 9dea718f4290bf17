//! Concurrency: several threads on one layerfs mount (creates, renames incl. directory
//! renames into merged directories, links, unlinks, xattrs, copy-ups of their own lower
//! files, readdir) on disjoint names, while pairs of openers copy up the same lower file
//! at once and an evictor thread makes the kernel drop dentries (FORGETs). Checked: every
//! thread finishes within [`DEADLINE`], readdir never shows duplicates, whiteouts or a
//! gap in the untouched names, every call's errno equals that of a serial replay on the
//! kernel overlay, and the final tree (and the remounted uppers) equal the replay's.

use super::ops::{apply, p, Act, Outcome, P};
use super::runner::{drop_caches, Runner, Variants};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

pub const THREADS: usize = 4;
pub const ROUNDS: usize = 25;
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A lower file only worker `t` touches (copied up by that worker).
const OWN_LOWER: [&str; THREADS] = ["d/a", "d/c", "e/b", "d/e/b"];
/// Lower files two openers copy up at the same time: (path, offset of opener 0's write).
const SHARED: &[(&str, u64)] = &[("hl", 0), ("odd/big", 1 << 20), ("odd/with space", 3)];
/// Names nobody touches: every readdir of their directory must show them.
const ALWAYS: &[&str] = &["a", "c", "f", "b", "d/top", "e/c", "odd/sparse", "odd/fifo"];

fn q(s: String) -> P {
    P(s.into_bytes())
}

/// What worker `t` does in round `i` (all names carry the worker's prefix).
pub fn worker_acts(t: usize, i: usize) -> Vec<Act> {
    let x = format!("w{t}");
    let mut v = vec![
        Act::Create(q(format!("{x}f{i}")), 1, true, false),
        Act::Append(q(format!("{x}f{i}")), 2),
        Act::Rename(q(format!("{x}f{i}")), q(format!("{x}g{i}")), 0),
        Act::Create(q(format!("d/{x}_{i}")), 1, true, false),
        Act::Rename(q(format!("d/{x}_{i}")), q(format!("e/{x}_{i}")), 0),
        Act::Link(q(format!("e/{x}_{i}")), q(format!("{x}h{i}"))),
        Act::Mkdir(q(format!("{x}d{i}")), 0o755),
        Act::Create(q(format!("{x}d{i}/in")), 3, true, false),
        Act::Rename(q(format!("{x}d{i}")), q(format!("d/{x}d{i}")), 0),
        Act::SetXattr(q(format!("{x}g{i}")), "user.a", b"v1", 0),
        Act::Rename(
            q(format!("{x}g{i}")),
            q(format!("{x}h{i}")),
            libc::RENAME_NOREPLACE,
        ),
    ];
    if i % 3 == 0 {
        v.extend([
            Act::Unlink(q(format!("d/{x}d{i}/in"))),
            Act::Rmdir(q(format!("d/{x}d{i}"))),
            Act::Unlink(q(format!("{x}g{i}"))),
        ]);
    }
    if i % 4 == 1 {
        v.push(Act::Rename(
            q(format!("e/{x}_{i}")),
            q(format!("{x}h{i}")),
            libc::RENAME_EXCHANGE,
        ));
    }
    let own = OWN_LOWER[t];
    match i {
        0 => v.push(Act::Chmod(p(own), 0o600)),
        1 => v.push(Act::Append(p(own), 1)),
        2 => v.push(Act::Rename(p(own), q(format!("{own}-moved")), 0)),
        3 => v.push(Act::SetXattr(q(format!("{own}-moved")), "user.b", b"", 0)),
        _ => {}
    }
    if t == 0 {
        // a lower directory renamed back and forth (redirects) by one worker only
        match i % 5 {
            2 => v.push(Act::Rename(p("g"), p("g2"), 0)),
            3 => v.push(Act::Rename(p("g2"), p("g"), 0)),
            _ => {}
        }
    }
    v
}

/// readdir invariants of a directory that others are changing.
fn check_readdir(root: &Path, dir: &str, out: &mut Vec<String>) {
    let d = root.join(dir);
    let names: Vec<Vec<u8>> = match std::fs::read_dir(&d) {
        Ok(r) => r
            .map(|e| {
                use std::os::unix::ffi::OsStrExt;
                e.map(|e| e.file_name().as_bytes().to_vec())
                    .unwrap_or_else(|e| format!("<error {e}>").into_bytes())
            })
            .collect(),
        Err(e) => {
            out.push(format!("readdir {dir:?}: {e}"));
            return;
        }
    };
    let set: BTreeSet<&Vec<u8>> = names.iter().collect();
    if set.len() != names.len() {
        out.push(format!("readdir {dir:?} listed a name twice"));
    }
    for n in &names {
        if n.starts_with(b".wh.") || n.starts_with(b"<error") {
            out.push(format!(
                "readdir {dir:?} listed {:?}",
                String::from_utf8_lossy(n)
            ));
        }
    }
    for a in ALWAYS {
        let (ad, an) = a.rsplit_once('/').unwrap_or(("", a));
        if ad == dir && !set.contains(&an.as_bytes().to_vec()) {
            out.push(format!("readdir {dir:?} missed untouched {a:?}"));
        }
    }
}

type Log = Vec<(Act, Outcome)>;

fn worker(root: PathBuf, t: usize) -> (Log, Vec<String>) {
    let mut log = Vec::new();
    let mut problems = Vec::new();
    for i in 0..ROUNDS {
        for a in worker_acts(t, i) {
            let o = apply(&root, &a);
            log.push((a, o));
        }
        for dir in ["", "d", "e"] {
            check_readdir(&root, dir, &mut problems);
        }
    }
    (log, problems)
}

/// Opener `k` of the shared file `i`: open for writing together with the other opener
/// (both opens may trigger the copy-up), then write at its own offset.
fn opener_act(i: usize, k: usize) -> Act {
    let (path, base) = SHARED[i];
    Act::PWrite(p(path), base + 100 * k as u64, 1 + k)
}

fn opener(root: PathBuf, i: usize, k: usize, opened: Arc<Barrier>) -> (Log, Vec<String>) {
    use std::os::unix::fs::FileExt;
    let act = opener_act(i, k);
    let Act::PWrite(path, off, d) = &act else {
        unreachable!()
    };
    opened.wait();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path.under(&root));
    opened.wait();
    let errno = match f.and_then(|f| f.write_all_at(super::ops::DATA[*d], *off)) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    (vec![(act, Outcome { errno, data: None })], Vec::new())
}

/// The concurrency test body.
pub fn run() -> Result<(), String> {
    let mut r = Runner::new(Variants {
        wh: false,
        strict_old_fd: false,
        noopen: false,
    });
    r.start()?;
    let lroot = r.sides[1].mnt.clone();
    let (tx, rx) = mpsc::channel::<(String, (Log, Vec<String>))>();
    let mut names = Vec::new();
    for t in 0..THREADS {
        let (tx, root) = (tx.clone(), lroot.clone());
        names.push(format!("worker {t}"));
        std::thread::spawn(move || {
            let _ = tx.send((format!("worker {t}"), worker(root, t)));
        });
    }
    for (i, (shared, _)) in SHARED.iter().enumerate() {
        let opened = Arc::new(Barrier::new(2));
        for k in 0..2 {
            let (tx, root, opened) = (tx.clone(), lroot.clone(), opened.clone());
            let name = format!("opener {k} of {shared}");
            names.push(name.clone());
            std::thread::spawn(move || {
                let _ = tx.send((name, opener(root, i, k, opened)));
            });
        }
    }
    drop(tx);
    let stop = Arc::new(AtomicBool::new(false));
    let evictor = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop_caches();
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };
    let start = Instant::now();
    let mut results = std::collections::BTreeMap::new();
    while results.len() < names.len() {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok((name, res)) => {
                results.insert(name, res);
            }
            Err(_) => {
                let stuck: Vec<_> = names.iter().filter(|n| !results.contains_key(*n)).collect();
                stop.store(true, Ordering::Relaxed);
                // unblock the stuck threads so the test can end: kill our daemon
                for pid in crate::common::daemon_pids(&lroot) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                return Err(format!(
                    "deadlock: {stuck:?} did not finish within {DEADLINE:?} on layerfs"
                ));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    evictor.join().unwrap();
    let elapsed = start.elapsed();
    let mut problems: Vec<String> = results
        .iter()
        .flat_map(|(n, (_, p))| p.iter().map(move |p| format!("{n}: {p}")))
        .collect();

    // serial replay on the kernel overlay, thread by thread, and the errnos compared
    let kroot = r.sides[0].mnt.clone();
    for (name, (log, _)) in &results {
        for (act, o) in log {
            let k = apply(&kroot, act);
            if k.errno != o.errno {
                problems.push(format!(
                    "{name}: {act:?}: kernel (serial) errno {}, layerfs (concurrent) errno {}",
                    k.errno, o.errno
                ));
            }
        }
    }
    if std::env::var_os("LAYERFS_DIFF_VERBOSE").is_some() {
        let mut hist = std::collections::BTreeMap::new();
        for (log, _) in results.values() {
            for (_, o) in log {
                *hist.entry(o.errno).or_insert(0) += 1;
            }
        }
        eprintln!("concurrent run: {elapsed:?}, errno histogram {hist:?}");
    }
    if !problems.is_empty() {
        return Err(format!("after {elapsed:?}:\n{}", problems.join("\n")));
    }
    r.compare_now("final tree after the concurrent run vs the serial kernel replay")?;
    r.finish()
}
