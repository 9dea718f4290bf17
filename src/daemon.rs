//! Mounting and the daemon's life: go to the background and report success only once the
//! mount is live, serve requests, and unmount cleanly on SIGTERM/SIGINT or an external
//! `umount`/`fusermount3 -u`.
//!
//! The log (warnings, `-d` request traces, the `SIGUSR1` counters) goes to `log=FILE` when
//! given; otherwise to stderr, and once a background daemon has detached from its terminal,
//! to syslog (facility daemon, ident `layerfs`) when a syslog daemon listens on /dev/log.

use crate::fuse::Fs;
use crate::options::Options;
use crate::overlay::Overlay;
use crate::sys;
use fuser::{Config, MountOption, Session, SessionACL};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

static LOG_FILE: parking_lot::Mutex<Option<std::fs::File>> = parking_lot::Mutex::new(None);
static LOG_SYSLOG: AtomicBool = AtomicBool::new(false);

/// Where log records go: `log=FILE`, else syslog once detached, else stderr. Given to
/// env_logger as its target.
pub struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = LOG_FILE.lock().as_mut() {
            return f.write_all(buf).map(|_| buf.len());
        }
        if LOG_SYSLOG.load(Ordering::Relaxed) {
            for line in buf.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                sys::syslog(line);
            }
            return Ok(buf.len());
        }
        std::io::stderr().write_all(buf).map(|_| buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if let Some(f) = LOG_FILE.lock().as_mut() {
            return f.flush();
        }
        Ok(())
    }
}

/// Send the log to `path` (appended, created mode 0600).
pub fn set_log_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    *LOG_FILE.lock() = Some(f);
    Ok(())
}

/// Default entry/attr timeout. Only layerfs changes the union (the layers must not be
/// modified behind its back, as with the kernel overlay), and the kernel invalidates what
/// its own requests change, so entries and attributes may be cached for long.
const DEFAULT_TTL: f64 = 86400.0;

fn fuse_config(opts: &Options, read_only: bool) -> Config {
    let mut mo = vec![
        MountOption::FSName("layerfs".into()),
        MountOption::Subtype("layerfs".into()),
        MountOption::DefaultPermissions,
    ];
    if read_only {
        mo.push(MountOption::RO);
    }
    let (nosuid, nodev) = suid_dev(opts, sys::geteuid() == 0);
    // fuser mounts nosuid,nodev unless told `suid`/`dev`, so both are always explicit.
    mo.push(if nosuid {
        MountOption::NoSuid
    } else {
        MountOption::Suid
    });
    mo.push(if nodev {
        MountOption::NoDev
    } else {
        MountOption::Dev
    });
    if opts.noexec {
        mo.push(MountOption::NoExec);
    }
    if opts.noatime {
        mo.push(MountOption::NoAtime);
    }
    let acl = if opts.allow_other || sys::geteuid() == 0 {
        SessionACL::All
    } else if opts.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    let mut c = Config::default();
    c.mount_options = mo;
    c.acl = acl;
    let threads = if opts.threads > 0 { opts.threads } else { 4 };
    c.n_threads = Some(threads);
    c.clone_fd = true;
    c
}

/// (nosuid, nodev) for the mount: what the user asked for, else the kernel overlay's
/// defaults (neither) when layerfs runs as root (also root in a user namespace, where the
/// kernel itself keeps device nodes of the mount unusable), and nosuid,nodev otherwise:
/// a plain user mounts through fusermount3, which forces both (and warns about `suid`/`dev`
/// as unsafe options).
fn suid_dev(opts: &Options, root: bool) -> (bool, bool) {
    (opts.nosuid.unwrap_or(!root), opts.nodev.unwrap_or(!root))
}

/// Mount and serve. `ready` (daemon mode) receives one 0 byte once the mount is live, or an
/// error message; returns the process exit code.
pub fn mount_and_serve(opts: &Options, ready: Option<OwnedFd>) -> i32 {
    let mut ready = ready.map(std::fs::File::from);
    let mut fail = |msg: String| -> i32 {
        match ready.as_mut() {
            Some(f) => {
                let _ = f.write_all(msg.as_bytes());
            }
            None => eprintln!("layerfs: {msg}"),
        }
        1
    };
    sys::set_umask(0);
    let ov = match Overlay::new(opts) {
        Ok(ov) => Arc::new(ov),
        Err(e) => return fail(format!("{e}")),
    };
    let ttl = Duration::from_secs_f64(opts.timeout.unwrap_or(DEFAULT_TTL).max(0.0));
    let fs = Fs {
        ov: ov.clone(),
        ttl,
        acl: !opts.noacl,
        passthrough: opts.passthrough != crate::options::Passthrough::Off
            && !opts.writeback
            && !opts.noopen
            && passthrough_permitted(),
        no_opendir: false,
        noopen: opts.noopen,
    };
    if opts.noopen {
        log::info!("noopen: regular files are opened without the daemon; no FUSE passthrough");
        if opts.passthrough == crate::options::Passthrough::All {
            log::warn!("passthrough=all has no effect with noopen");
        }
    }
    sys::block_signals();
    let config = fuse_config(opts, ov.cfg.read_only);
    let session = match Session::new(fs, &opts.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "mount {}: {}",
                opts.mountpoint.display(),
                crate::options::io_msg(&e)
            ))
        }
    };
    let notifier = session.notifier();
    let _ = ov.attr_invalidator.set(Box::new(move |ino, data| {
        // Attributes only (offset -1) take no page-cache locks; a directory's pages (its
        // cached listing) are never locked across a request, so dropping them is safe
        // inside one too.
        let off = if data { 0 } else { -1 };
        if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), off, 0) {
            log::debug!("invalidate cached attributes/data of {ino}: {e}");
        }
    }));
    // The session runs in fuser's background thread, which does not own the mount: fuser
    // unmounts by path when a session it owns ends, and a copy of our mount in another mount
    // namespace keeps the session alive past an external umount, so by then the path may
    // hold a newer mount. On a signal we unmount only a mount at our path with our device
    // (unique while our session lives).
    let bg = match session.spawn() {
        Ok(bg) => bg,
        Err(e) => return fail(format!("start the FUSE session: {e}")),
    };
    let mnt = opts.mountpoint.clone();
    let our_dev = std::fs::metadata(&mnt).ok().map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.dev()
    });
    if let Some(dev) = our_dev {
        raise_readahead(dev);
    }
    let ov_sig = ov.clone();
    let mnt_sig = mnt.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let sig = sys::wait_signal();
            if sig == libc::SIGUSR1 {
                dump_counters(&ov_sig);
                continue;
            }
            log::info!("signal {sig}: unmounting {}", mnt_sig.display());
            if our_dev.is_some() && !mounted_here(&mnt_sig, our_dev) {
                // gone from here (copies elsewhere keep the session): nothing to unmount
                std::process::exit(0);
            }
            unmount_path(&mnt_sig);
            // The session ends when the kernel ends the connection. A copy of the mount in
            // another mount namespace (made by anyone who unshared one meanwhile) keeps it
            // open: do not outlive a termination signal because of that.
            std::thread::sleep(Duration::from_secs(5));
            log::warn!("the mount still has users (another mount namespace?): exiting");
            std::process::exit(0);
        })
        .ok();
    if let Some(mut f) = ready.take() {
        let _ = f.write_all(&[0]);
        drop(f);
        if LOG_FILE.lock().is_none() && sys::syslog_available() {
            sys::openlog(c"layerfs");
            LOG_SYSLOG.store(true, Ordering::Relaxed);
        }
        sys::redirect_stdio_to_null();
    }
    while !bg.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The session ends when the kernel drops the connection: the mount is gone everywhere.
    // Never unmount the path then: it may hold a newer mount, possibly with the same
    // (reused) device number. (A session that ended on a protocol error leaves a dead
    // mount, as a crash would.)
    std::mem::forget(bg);
    0
}

/// The kernel gives a FUSE mount a readahead window of 128 KiB (and the INIT reply can only
/// lower it), so a sequential reader's data comes in 128 KiB READ requests. Where the daemon
/// may write its mount's `/sys/class/bdi/MAJ:MIN/read_ahead_kb` (a daemon whose uid is
/// real root: as root, or in a user namespace that maps root to itself, as `unshare -Ur`
/// run by root does), widen it to the largest request the kernel will send
/// (`fs.fuse.max_pages_limit` pages, 1 MiB by default): an eighth of the requests for the
/// same data. Elsewhere (a user's rootless mount) sysfs refuses and the default stays.
fn raise_readahead(dev: u64) {
    let pages: u64 = std::fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(256);
    let want_kb = pages * (sys::page_size() as u64) / 1024;
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        sys::major(dev),
        sys::minor(dev)
    );
    let cur: Option<u64> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    if cur.is_some_and(|c| c >= want_kb) {
        return;
    }
    match std::fs::write(&path, format!("{want_kb}\n")) {
        Ok(()) => log::debug!("{path}: {want_kb}"),
        Err(e) => log::debug!("{path}: {e}: readahead stays at {cur:?} KiB"),
    }
}

/// FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace (the kernel checks it
/// when a backing file is registered). Where that is missing, say so once, while stderr still
/// reaches the caller, and do file I/O through the daemon.
fn passthrough_permitted() -> bool {
    let why = if sys::geteuid() != 0 {
        "not running as root"
    } else if !sys::in_initial_user_namespace() {
        "running in a user namespace"
    } else {
        return true;
    };
    log::warn!("{why}: no FUSE passthrough, file I/O goes through the daemon");
    false
}

/// Whether `/proc/self/mountinfo` lists a mount on `mnt` with device `dev`.
fn mounted_here(mnt: &std::path::Path, dev: Option<u64>) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(mi) = std::fs::read("/proc/self/mountinfo") else {
        return true;
    };
    let want = mnt.as_os_str().as_bytes();
    mi.split(|&b| b == b'\n').any(|line| {
        let f: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        if f.len() < 5 || unescape_mountinfo(f[4]) != want {
            return false;
        }
        let d = std::str::from_utf8(f[2])
            .ok()
            .and_then(|s| s.split_once(':'))
            .and_then(|(a, b)| Some(sys::makedev(a.parse().ok()?, b.parse().ok()?)));
        d == dev
    })
}

/// `\ooo` escapes of mountinfo paths.
pub fn unescape_mountinfo(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        if f[i] == b'\\' && i + 3 < f.len() {
            if let Some(v) = std::str::from_utf8(&f[i + 1..i + 4])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(f[i]);
        i += 1;
    }
    out
}

/// Unmount our mountpoint: umount(2), else (unprivileged) `fusermount3 -u`, else detach.
fn unmount_path(mnt: &std::path::Path) {
    match sys::umount(mnt) {
        Ok(()) => return,
        Err(e) if !e.is(libc::EPERM) => log::warn!("unmount {}: {e}", mnt.display()),
        Err(_) => {
            for bin in ["fusermount3", "fusermount"] {
                let r = std::process::Command::new(bin)
                    .arg("-u")
                    .arg("-q")
                    .arg("--")
                    .arg(mnt)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
                if r.is_ok_and(|s| s.success()) {
                    return;
                }
            }
        }
    }
    log::warn!("unmount of {} failed; detaching", mnt.display());
    let _ = sys::umount_detach(mnt);
}

/// The counters line logged on SIGUSR1.
pub fn counters_line(ov: &Overlay) -> String {
    format!(
        "counters: inodes={} handles={} copy_ups={} copy_up_bytes={} whiteouts={} requests: {}",
        ov.inodes.len(),
        ov.handles.len(),
        ov.counters.copy_ups.load(Ordering::Relaxed),
        ov.counters.copy_up_bytes.load(Ordering::Relaxed),
        ov.counters.whiteouts.load(Ordering::Relaxed),
        ov.counters.requests.summary(),
    ) + &if ov.cfg.noopen {
        format!(" fds_by_inode={}", ov.ino_fds())
    } else {
        String::new()
    }
}

pub fn dump_counters(ov: &Overlay) {
    log::warn!("{}", counters_line(ov));
}

/// Run the mount: in the foreground, or forked into the background with the parent
/// exiting 0 only once the child reports the mount live.
pub fn run(opts: &Options) -> i32 {
    if opts.foreground {
        return mount_and_serve(opts, None);
    }
    let (r, w) = match sys::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("layerfs: pipe: {e}");
            return 1;
        }
    };
    match sys::fork() {
        Err(e) => {
            eprintln!("layerfs: fork: {e}");
            1
        }
        Ok(sys::Fork::Child) => {
            drop(r);
            sys::setsid();
            mount_and_serve(opts, Some(w))
        }
        Ok(sys::Fork::Parent(pid)) => {
            drop(w);
            let mut f = std::fs::File::from(r);
            let mut buf = Vec::new();
            let _ = f.read_to_end(&mut buf);
            if buf.first() == Some(&0) {
                return 0;
            }
            if buf.is_empty() {
                let code = sys::waitpid_nohang(pid);
                eprintln!("layerfs: daemon exited before the mount was ready (status {code:?})");
            } else {
                eprintln!("layerfs: {}", String::from_utf8_lossy(&buf));
            }
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suid_and_dev_default_like_the_kernel_overlay_for_root() {
        let mut o = Options::default();
        assert_eq!(suid_dev(&o, true), (false, false));
        assert_eq!(suid_dev(&o, false), (true, true));
        o.nosuid = Some(true);
        assert_eq!(suid_dev(&o, true), (true, false));
        o.nodev = Some(false);
        assert_eq!(suid_dev(&o, false), (true, false));
        let c = fuse_config(&o, false);
        assert!(c.mount_options.contains(&MountOption::NoSuid));
        assert!(c.mount_options.contains(&MountOption::Dev));
    }
}
