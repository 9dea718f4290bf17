//! Mounting and the daemon's life: go to the background and report success only once the
//! mount is live, serve requests, and unmount cleanly on SIGTERM/SIGINT or an external
//! `umount`/`fusermount3 -u`.

use crate::fuse::Fs;
use crate::options::Options;
use crate::overlay::Overlay;
use crate::sys;
use fuser::{Config, MountOption, Session, SessionACL};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

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
    if opts.nosuid {
        mo.push(MountOption::NoSuid);
    }
    if opts.nodev {
        mo.push(MountOption::NoDev);
    }
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
        passthrough: !opts.writeback && passthrough_permitted(),
    };
    sys::block_signals();
    let config = fuse_config(opts, ov.cfg.read_only);
    let mut session = match Session::new(fs, &opts.mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            return fail(format!(
                "mount {}: {}",
                opts.mountpoint.display(),
                crate::options::io_msg(&e)
            ))
        }
    };
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

pub fn dump_counters(ov: &Overlay) {
    log::warn!(
        "counters: inodes={} handles={} copy_ups={} copy_up_bytes={} whiteouts={}",
        ov.inodes.len(),
        ov.handles.len(),
        ov.counters.copy_ups.load(Ordering::Relaxed),
        ov.counters.copy_up_bytes.load(Ordering::Relaxed),
        ov.counters.whiteouts.load(Ordering::Relaxed),
    );
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
