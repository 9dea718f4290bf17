//! Shared helpers for integration tests that really mount.
//!
//! Tests that need root and /dev/fuse call [`require_mount_privilege`] first; it prints a
//! visible SKIP line and returns false only where they are truly absent. Under CI
//! (`CI=true`) a missing privilege is a failure, not a skip.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const LAYERFS: &str = env!("CARGO_BIN_EXE_layerfs");

/// True when this process may mount FUSE and kernel overlay filesystems (root + /dev/fuse).
pub fn require_mount_privilege(test: &str) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let fuse = Path::new("/dev/fuse").exists();
    if root && fuse {
        return true;
    }
    let why = if !root { "not root" } else { "no /dev/fuse" };
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root and /dev/fuse ({why}), and CI must have them");
    }
    eprintln!("SKIP {test}: needs root and /dev/fuse ({why})");
    false
}

/// A scratch area with `lower0..lowerN`, `upper`, `work` and `mnt` directories.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("layerfs-test-")
            .tempdir()
            .expect("tempdir");
        for d in ["upper", "work", "mnt"] {
            std::fs::create_dir(dir.path().join(d)).unwrap();
        }
        Scratch { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// `lower{i}`, created on first use. lower0 is the TOP lower layer.
    pub fn lower(&self, i: usize) -> PathBuf {
        let p = self.dir.path().join(format!("lower{i}"));
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.path().join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }
    pub fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
    /// Mount layerfs over `nlower` lower layers plus upper/work on `mnt`.
    pub fn mount(&self, nlower: usize, extra: &str) -> Mount {
        let lowers: Vec<PathBuf> = (0..nlower).map(|i| self.lower(i)).collect();
        mount_layerfs(
            &lowers,
            Some(&self.upper()),
            Some(&self.work()),
            &self.mnt(),
            extra,
        )
    }
    /// Mount the lowers read-only (no upper).
    pub fn mount_ro(&self, nlower: usize, extra: &str) -> Mount {
        let lowers: Vec<PathBuf> = (0..nlower).map(|i| self.lower(i)).collect();
        mount_layerfs(&lowers, None, None, &self.mnt(), extra)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// A live mount; unmounted (and waited for) on drop.
pub struct Mount {
    pub mnt: PathBuf,
    pub kernel: bool,
}

impl Mount {
    pub fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.mnt.clone()
        } else {
            self.mnt.join(rel)
        }
    }
    /// Unmount now (same as drop, but explicit).
    pub fn unmount(self) {}
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.mnt);
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let Ok(mounts) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = mnt.as_os_str().as_bytes();
    mounts.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .map(layerfs::daemon::unescape_mountinfo)
            .as_deref()
            == Some(want)
    })
}

/// Unmount `mnt` (FUSE or kernel), retrying while busy, and wait until it is gone.
pub fn unmount(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while is_mounted(mnt) {
        let _ = Command::new("umount").arg(mnt).output();
        if !is_mounted(mnt) {
            break;
        }
        if Instant::now() > deadline {
            let _ = Command::new("umount").arg("-l").arg(mnt).output();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run layerfs the way podman does: `layerfs -o lowerdir=..,upperdir=..,workdir=.. MNT`.
/// It must daemonize and exit 0 only once the mount is live.
pub fn mount_layerfs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra: &str,
) -> Mount {
    let out = try_mount_layerfs(lowers, upper, work, mnt, extra);
    assert!(
        out.status.success(),
        "layerfs mount failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        is_mounted(mnt),
        "layerfs exited 0 but {} is not mounted",
        mnt.display()
    );
    Mount {
        mnt: mnt.to_path_buf(),
        kernel: false,
    }
}

pub fn layer_opts(lowers: &[PathBuf], upper: Option<&Path>, work: Option<&Path>) -> String {
    let esc = |p: &Path| p.to_str().expect("utf8 test path").replace(':', "\\:");
    let mut o = format!(
        "lowerdir={}",
        lowers.iter().map(|p| esc(p)).collect::<Vec<_>>().join(":")
    );
    if let Some(u) = upper {
        o.push_str(&format!(",upperdir={}", esc(u)));
    }
    if let Some(w) = work {
        o.push_str(&format!(",workdir={}", esc(w)));
    }
    o
}

pub fn try_mount_layerfs(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra: &str,
) -> Output {
    let mut o = layer_opts(lowers, upper, work);
    // Options for every test mount, e.g. `noopen` to run a suite in that mode (tests that
    // check another mode's specifics then fail); a test's own options come after them.
    let all = std::env::var("LAYERFS_TEST_MOUNT_OPTS").unwrap_or_default();
    for x in [all.as_str(), extra] {
        if !x.is_empty() {
            o.push(',');
            o.push_str(x);
        }
    }
    layerfs(&[OsStr::new("-o"), OsStr::new(&o), mnt.as_os_str()])
}

/// Run the layerfs binary with arguments, with a timeout so a hang fails the test.
pub fn layerfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut child = Command::new(LAYERFS)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn layerfs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(_st) = child.try_wait().unwrap() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "layerfs {:?} did not exit within 30s",
                args.iter()
                    .map(|a| a.as_ref().to_owned())
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount the kernel overlay on the same layers (for differential tests).
pub fn mount_kernel_overlay(
    lowers: &[PathBuf],
    upper: Option<&Path>,
    work: Option<&Path>,
    mnt: &Path,
    extra: &str,
) -> Mount {
    let mut o = layer_opts(lowers, upper, work);
    if !extra.is_empty() {
        o.push(',');
        o.push_str(extra);
    }
    let out = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(mnt)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "kernel overlay mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Mount {
        mnt: mnt.to_path_buf(),
        kernel: true,
    }
}

/// Run a shell snippet (bash -c), returning the output; panics on spawn failure only.
pub fn sh(script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run bash")
}

/// Run a shell snippet and assert it succeeds; returns stdout as a String.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "script failed ({}):\n{script}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// errno of a failed io::Error (0 when none).
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Process ids of layerfs daemons whose command line names `mnt`.
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let mut v = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return v;
    };
    for e in procs.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.first().is_some_and(|a| a.ends_with(b"layerfs"))
            && args.contains(&mnt.as_os_str().as_bytes())
        {
            v.push(pid);
        }
    }
    v
}
