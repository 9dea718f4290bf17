//! Helpers for the load, fsx and unmount tests: a seeded PRNG, daemon memory and stacks,
//! a foreground mount whose log is kept, and a full snapshot of a tree.
//! Included with `#[path = "common/load.rs"] mod load;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// xorshift64*: small, seeded, reproducible.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A seed from `var` if set, else from the clock; printed so a failure can be replayed.
pub fn seed_from_env(var: &str) -> u64 {
    let seed = std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{var}={seed}");
    seed
}

pub fn env_num(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS of a process in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Kernel stacks and wait channels of every thread of `pid`, for a hang report.
pub fn thread_stacks(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    for t in tasks.flatten() {
        let p = t.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        let wchan = std::fs::read_to_string(p.join("wchan")).unwrap_or_default();
        let stack = std::fs::read_to_string(p.join("stack")).unwrap_or_default();
        out.push_str(&format!(
            "--- task {} ({}) wchan {}\n{}",
            t.file_name().to_string_lossy(),
            comm.trim(),
            wchan.trim(),
            stack
        ));
    }
    out
}

/// One object of a tree snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Obj {
    pub kind: char,
    pub mode: u32,
    pub size: u64,
    pub ino: u64,
    pub nlink: u64,
    /// File contents hash, symlink target, or sorted child names for directories.
    pub data: String,
}

fn fnv(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Walk `root` without following symlinks: every readdir, lstat, file read and readlink
/// must succeed, and every readdir d_ino must equal the entry's st_ino.
pub fn snapshot(root: &Path) -> Result<BTreeMap<Vec<u8>, Obj>, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let md = std::fs::symlink_metadata(&p).map_err(|e| format!("lstat {rel:?}: {e}"))?;
        let ft = md.file_type();
        let (kind, data) = if ft.is_dir() {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&p).map_err(|e| format!("opendir {rel:?}: {e}"))? {
                let e = e.map_err(|e| format!("readdir {rel:?}: {e}"))?;
                let child = rel.join(e.file_name());
                let cmd = std::fs::symlink_metadata(root.join(&child))
                    .map_err(|e| format!("lstat {child:?}: {e}"))?;
                if e.ino() != cmd.ino() {
                    return Err(format!(
                        "{child:?}: d_ino {} != st_ino {}",
                        e.ino(),
                        cmd.ino()
                    ));
                }
                names.push(String::from_utf8_lossy(e.file_name().as_bytes()).into_owned());
                stack.push(child);
            }
            names.sort();
            ('d', names.join("/"))
        } else if ft.is_file() {
            let d = std::fs::read(&p).map_err(|e| format!("read {rel:?}: {e}"))?;
            if d.len() as u64 != md.len() {
                return Err(format!(
                    "{rel:?}: read {} bytes, size {}",
                    d.len(),
                    md.len()
                ));
            }
            ('f', format!("{:016x}", fnv(&d)))
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&p).map_err(|e| format!("readlink {rel:?}: {e}"))?;
            ('l', t.to_string_lossy().into_owned())
        } else if ft.is_fifo() {
            ('p', String::new())
        } else if ft.is_char_device() || ft.is_block_device() {
            ('c', format!("{:x}", md.rdev()))
        } else {
            ('s', String::new())
        };
        out.insert(
            rel.as_os_str().as_bytes().to_vec(),
            Obj {
                kind,
                mode: md.mode(),
                size: if kind == 'd' { 0 } else { md.len() },
                ino: md.ino(),
                nlink: if kind == 'd' { 0 } else { md.nlink() },
                data,
            },
        );
    }
    Ok(out)
}

/// Lines describing how two snapshots differ (empty when equal).
pub fn snapshot_diff(a: &BTreeMap<Vec<u8>, Obj>, b: &BTreeMap<Vec<u8>, Obj>) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("only before: {} {v:?}", String::from_utf8_lossy(k))),
            Some(w) if w != v => d.push(format!(
                "changed: {} {v:?} -> {w:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for (k, w) in b {
        if !a.contains_key(k) {
            d.push(format!("only after: {} {w:?}", String::from_utf8_lossy(k)));
        }
    }
    d
}

/// layerfs in the foreground (`-f`), its log kept in a file, so a test can see what the
/// daemon said (e.g. whether FUSE passthrough was enabled). Unmounted on drop.
pub struct FgMount {
    pub mnt: PathBuf,
    pub child: Child,
    pub log: PathBuf,
}

impl FgMount {
    pub fn start(opts: &str, mnt: &Path, log: &Path, rust_log: &str) -> FgMount {
        let logf = std::fs::File::create(log).unwrap();
        // (LAYERFS_TEST_MOUNT_OPTS: see common::try_mount_layerfs)
        let opts = match std::env::var("LAYERFS_TEST_MOUNT_OPTS") {
            Ok(all) if !all.is_empty() => format!("{opts},{all}"),
            _ => opts.to_string(),
        };
        let child = Command::new(super::common::LAYERFS)
            .args(["-f", "-o", &opts])
            .arg(mnt)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn layerfs -f");
        let m = FgMount {
            mnt: mnt.to_path_buf(),
            child,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !super::common::is_mounted(mnt) {
            assert!(
                Instant::now() < deadline,
                "layerfs -f did not mount: {}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Unmount and wait for the daemon; returns its exit status, or None when the daemon
    /// could not end because the mount lives on in another mount namespace (see
    /// [`wait_daemon_exit`]).
    pub fn stop(mut self) -> Option<std::process::ExitStatus> {
        super::common::unmount(&self.mnt);
        wait_daemon_exit(&mut self.child, &self.mnt)
    }
}

impl Drop for FgMount {
    fn drop(&mut self) {
        super::common::unmount(&self.mnt);
        // (no panic here: this may run while a test is already failing)
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Wait for a child with a bound; kills it (and panics) when the bound passes.
pub fn wait_timeout(child: &mut Child, bound: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let stacks = thread_stacks(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "process {} did not exit within {bound:?}:\n{stacks}",
                child.id()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes in other mount namespaces whose mount table still has a mount on `mnt`.
/// (Another process that creates a mount namespace, e.g. a concurrent test running
/// `unshare -m`, gets a copy of every mount, ours included; the FUSE connection then lives
/// on after our unmount, and the daemon with it, until that namespace goes away.)
pub fn mount_copies_elsewhere(mnt: &Path) -> Vec<i32> {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    let want = format!(" {} ", mnt.display());
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("ns/mnt")).ok() == own {
            continue;
        }
        let info = std::fs::read_to_string(e.path().join("mountinfo")).unwrap_or_default();
        if info
            .lines()
            .any(|l| l.contains(&want) && l.contains(" - fuse"))
        {
            pids.push(pid);
        }
    }
    pids
}

/// Wait for a daemon to exit after its unmount. If it is still running after 30 s
/// because its mount was copied into another mount namespace, say so, kill it and return
/// None (its clean exit cannot be checked); otherwise a hang fails the test.
pub fn wait_daemon_exit(child: &mut Child, mnt: &Path) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let others = mount_copies_elsewhere(mnt);
    if others.is_empty() {
        let stacks = thread_stacks(child.id() as i32);
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "daemon {} did not exit within 30s of its unmount:\n{stacks}",
            child.id()
        );
    }
    eprintln!(
        "NOTE: daemon {} kept serving: its mount was copied into other mount namespaces \
         (processes {others:?}); killed, clean exit not checked",
        child.id()
    );
    let _ = child.kill();
    let _ = child.wait();
    None
}
