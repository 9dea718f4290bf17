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
        passthrough: !opts.writeback,
    };
    sys::block_signals();
    let config = fuse_config(opts, ov.cfg.read_only);
    let mut session = match Session::new(fs, &opts.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => return fail(format!("mount {}: {e}", opts.mountpoint.display())),
    };
    let notifier = session.notifier();
    let _ = ov.attr_invalidator.set(Box::new(move |ino| {
        // Only the attributes (offset -1): no page-cache locks, safe inside a request.
        if let Err(e) = notifier.inval_inode(fuser::INodeNo(ino), -1, 0) {
            log::debug!("invalidate attributes of {ino}: {e}");
        }
    }));
    let mut unmounter = session.unmount_callable();
    let mnt = opts.mountpoint.clone();
    let ov_sig = ov.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let sig = sys::wait_signal();
            if sig == libc::SIGUSR1 {
                dump_counters(&ov_sig);
                continue;
            }
            log::info!("signal {sig}: unmounting {}", mnt.display());
            if let Err(e) = unmounter.unmount() {
                log::warn!("unmount failed ({e}); detaching");
                let _ = sys::umount_detach(&mnt);
            }
            break;
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
    match session.run() {
        Ok(()) => 0,
        Err(e) => {
            log::error!("session ended with error: {e}");
            0
        }
    }
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
    )
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
