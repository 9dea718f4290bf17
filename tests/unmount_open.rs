//! Unmounting while files are open for reading and writing through the mount:
//! `fusermount3 -u` (refused while busy, the mount keeps working), `fusermount3 -u -z` and
//! `umount -l` (detached; open files keep working until closed). In every case the daemon
//! exits 0 once the last file is closed, the upper holds every write that completed, a
//! copy-up running at unmount time is complete or absent (never partial), and the staging
//! area is empty after the next mount.

mod common;
#[path = "common/load.rs"]
mod load;

use common::{sh, Scratch};
use load::{wait_daemon_exit, FgMount};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const REC: usize = 64;

fn record(i: u64) -> Vec<u8> {
    let mut r = format!("record {i:012}").into_bytes();
    r.resize(REC - 1, b'.');
    r.push(b'\n');
    r
}

/// Append records to `f` until `stop`; returns how many writes completed.
fn writer(
    mut f: fs::File,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            f.write_all(&record(i)).expect("write through the mount");
            i += 1;
            done.store(i, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
    })
}

fn check_records(data: &[u8], n: u64, what: &str) {
    assert_eq!(
        data.len() as u64,
        n * REC as u64,
        "{what}: {n} completed writes"
    );
    for i in 0..n {
        let r = &data[i as usize * REC..(i as usize + 1) * REC];
        assert_eq!(r, record(i).as_slice(), "{what}: record {i}");
    }
}

fn unmount_with_open_files(how: &str) {
    let name = format!("unmount_with_open_files {how}");
    if !common::require_mount_privilege(&name) {
        return;
    }
    let s = Scratch::new();
    let l0 = s.lower(0);
    sh(&format!(
        "head -c 32M /dev/urandom > '{}/big'",
        l0.display()
    ));
    let lower_log: Vec<u8> = b"lower prefix\n".repeat(100);
    fs::write(l0.join("log"), &lower_log).unwrap();
    fs::write(l0.join("readme"), "read me\n".repeat(1000)).unwrap();
    let opts = common::layer_opts(std::slice::from_ref(&l0), Some(&s.upper()), Some(&s.work()));
    let mut m = FgMount::start(&opts, &s.mnt(), &s.path().join("daemon.log"), "warn");
    let mnt = s.mnt();

    let stop = Arc::new(AtomicBool::new(false));
    let (d1, d2) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // A new upper file and a lower file copied up at open, both appended to.
    let f1 = fs::File::create(mnt.join("new")).unwrap();
    let mut f2 = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("log"))
        .unwrap();
    f2.seek(SeekFrom::End(0)).unwrap();
    let w1 = writer(f1, stop.clone(), d1.clone());
    let w2 = writer(f2, stop.clone(), d2.clone());
    let mut reader = fs::File::open(mnt.join("readme")).unwrap();
    // A copy-up of 32 MiB in flight at unmount time.
    let mut chmod = std::process::Command::new("chmod")
        .arg("600")
        .arg(mnt.join("big"))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let copy_up_running = chmod.try_wait().unwrap().is_none();

    let out = match how {
        "fusermount3 -u" => sh(&format!("fusermount3 -u '{}'", mnt.display())),
        "fusermount3 -u -z" => sh(&format!("fusermount3 -u -z '{}'", mnt.display())),
        "umount -l" => sh(&format!("umount -l '{}'", mnt.display())),
        _ => unreachable!(),
    };
    let busy_refused = how == "fusermount3 -u";
    if busy_refused {
        assert!(
            !out.status.success(),
            "fusermount3 -u succeeded on a busy mount"
        );
        assert!(common::is_mounted(&mnt), "the busy mount went away");
        fs::write(mnt.join("still"), "works").unwrap();
    } else {
        assert!(
            out.status.success(),
            "{how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!common::is_mounted(&mnt), "{how}: still in the mount table");
    }
    // Open files keep working either way.
    std::thread::sleep(Duration::from_millis(200));
    let mut buf = String::new();
    reader.read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "read me\n".repeat(1000));
    let st = chmod.wait().unwrap();
    assert!(
        st.success(),
        "{how}: chmod (copy-up) across the unmount: {st}"
    );
    stop.store(true, Ordering::Relaxed);
    w1.join().unwrap();
    w2.join().unwrap();
    drop(reader);
    let (n1, n2) = (d1.load(Ordering::Relaxed), d2.load(Ordering::Relaxed));
    assert!(n1 > 0 && n2 > 0);
    if busy_refused {
        let out = sh(&format!("fusermount3 -u '{}'", mnt.display()));
        assert!(
            out.status.success(),
            "fusermount3 -u once idle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The daemon exits cleanly once the last reference is gone.
    if let Some(st) = wait_daemon_exit(&mut m.child, &mnt) {
        assert!(st.success(), "{how}: daemon exit {st}: {}", m.log_text());
    }
    assert!(!m.log_text().contains("panicked"), "{}", m.log_text());
    drop(m);

    // Everything that completed is in the upper.
    check_records(
        &fs::read(s.upper().join("new")).unwrap(),
        n1,
        "new upper file",
    );
    let log = fs::read(s.upper().join("log")).unwrap();
    assert_eq!(&log[..lower_log.len()], &lower_log[..], "copied-up prefix");
    check_records(&log[lower_log.len()..], n2, "copied-up file");
    let big_up = fs::read(s.upper().join("big")).unwrap();
    assert!(
        big_up == fs::read(l0.join("big")).unwrap(),
        "{how}: partial copy-up of big"
    );
    // Staging is empty after the next mount, and the union shows the same data.
    let m = s.mount(1, "");
    let staging: Vec<_> = fs::read_dir(s.work().join("work")).unwrap().collect();
    assert!(
        staging.is_empty(),
        "{how}: staging after remount: {staging:?}"
    );
    check_records(
        &fs::read(m.path("new")).unwrap(),
        n1,
        "new file after remount",
    );
    drop(m);
    eprintln!(
        "{how}: {n1} + {n2} writes completed across the unmount, all present; \
         copy-up still running at unmount: {copy_up_running}"
    );
}

#[test]
fn fusermount_u_while_files_open() {
    unmount_with_open_files("fusermount3 -u");
}

#[test]
fn fusermount_u_lazy_while_files_open() {
    unmount_with_open_files("fusermount3 -u -z");
}

#[test]
fn umount_lazy_while_files_open() {
    unmount_with_open_files("umount -l");
}

/// Regression: SIGTERM unmounts and the daemon exits 0, also when the mount was copied into
/// another mount namespace meanwhile (anyone running `unshare -m` copies every mount): the
/// daemon used to keep serving the copy forever, ignoring the signal.
#[test]
fn sigterm_exits_even_if_the_mount_lives_on_elsewhere() {
    if !common::require_mount_privilege("sigterm_exits_even_if_the_mount_lives_on_elsewhere") {
        return;
    }
    let s = Scratch::new();
    let opts = common::layer_opts(&[s.lower(0)], Some(&s.upper()), Some(&s.work()));
    let mut m = FgMount::start(&opts, &s.mnt(), &s.path().join("daemon.log"), "warn");
    // a mount namespace that holds a copy of the mount
    let mut holder = std::process::Command::new("unshare")
        .args(["-m", "sleep", "120"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while load::mount_copies_elsewhere(&s.mnt()).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no copy of the mount appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(m.pid(), libc::SIGTERM) };
    let st = load::wait_timeout(&mut m.child, Duration::from_secs(30));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(st.success(), "daemon exit {st}: {}", m.log_text());
    assert!(!common::is_mounted(&s.mnt()));
}
