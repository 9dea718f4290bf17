//! Crash safety: the daemon is killed with SIGKILL at random points while it copies up a
//! large file and renames directories; after a remount every object is in its old or its
//! new state, never partial, and the staging area is empty again.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn checksum(p: &Path) -> String {
    sh_ok(&format!("md5sum < '{}'", p.display()))
}

/// A cheap deterministic PRNG for kill delays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn sigkill_during_copy_up_and_rename_leaves_old_or_new() {
    if !common::require_mount_privilege("sigkill_during_copy_up_and_rename_leaves_old_or_new") {
        return;
    }
    let iterations: usize = std::env::var("LAYERFS_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let s = Scratch::new();
    let l0 = s.lower(0);
    sh_ok(&format!(
        "head -c 48M /dev/urandom > '{}/big'",
        l0.display()
    ));
    for d in 0..5 {
        fs::create_dir_all(l0.join(format!("dir{d}/sub"))).unwrap();
        fs::write(l0.join(format!("dir{d}/sub/f")), format!("content {d}")).unwrap();
    }
    let lower_sum = checksum(&l0.join("big"));
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut killed_mid_op = 0;
    for it in 0..iterations {
        let m = s.mount(1, "");
        let mnt = s.mnt();
        let pid = *common::daemon_pids(&mnt).first().expect("daemon pid");
        // Work: chmod (full copy-up of 48 MiB), append, directory renames.
        let work = format!(
            "chmod 0600 '{m}/big'; echo tail >> '{m}/big'; for d in 0 1 2 3 4; do mv '{m}/dir'$d '{m}/moved'$d 2>/dev/null || mv '{m}/moved'$d '{m}/dir'$d; done",
            m = mnt.display()
        );
        let mut child = std::process::Command::new("bash")
            .arg("-c")
            .arg(&work)
            .spawn()
            .unwrap();
        let delay = next(&mut seed) % 40;
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            killed_mid_op += 1;
        }
        sh(&format!("kill -9 {pid}"));
        let _ = child.wait();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        sh(&format!("umount -l '{}'", mnt.display()));
        drop(m);

        // Remount and check the invariants.
        let m = s.mount(1, "");
        let big = m.path("big");
        let up = s.upper().join("big");
        let md = fs::metadata(&big).unwrap();
        if up.exists() {
            // Copied up: complete data, possibly with the appended tail.
            let len = fs::metadata(&up).unwrap().len();
            let extra = len.checked_sub(48 << 20).unwrap_or_else(|| {
                panic!("iteration {it}: partial copy-up in upper ({len} bytes)")
            });
            assert_eq!(extra % 5, 0, "iteration {it}: torn append ({len} bytes)");
            let tail = sh_ok(&format!("tail -c +{} '{}'", (48 << 20) + 1, big.display()));
            assert_eq!(
                tail,
                "tail\n".repeat((extra / 5) as usize),
                "iteration {it}: appended data"
            );
            let sum = sh_ok(&format!(
                "head -c {} '{}' | md5sum",
                48 << 20,
                big.display()
            ));
            assert_eq!(
                sum, lower_sum,
                "iteration {it}: copied-up data differs from lower"
            );
        } else {
            assert_eq!(checksum(&big), lower_sum);
            assert_ne!(
                md.permissions().mode() & 0o777,
                0o600,
                "mode changed without copy-up"
            );
        }
        for d in 0..5 {
            let a = m.path(&format!("dir{d}/sub/f"));
            let b = m.path(&format!("moved{d}/sub/f"));
            let (ea, eb) = (a.exists(), b.exists());
            assert!(
                ea ^ eb,
                "iteration {it}: dir{d} is in both or neither place"
            );
            let f = if ea { a } else { b };
            assert_eq!(fs::read_to_string(f).unwrap(), format!("content {d}"));
        }
        let leftovers: Vec<_> = fs::read_dir(s.work().join("work")).unwrap().collect();
        assert!(
            leftovers.is_empty(),
            "iteration {it}: staging leftovers after remount: {leftovers:?}"
        );
        assert_eq!(
            fs::read_to_string(s.lower(0).join("dir0/sub/f")).unwrap(),
            "content 0"
        );
        drop(m);
        // Start each iteration from a clean upper so copy-up is exercised again.
        if it % 3 == 2 {
            sh_ok(&format!(
                "rm -rf '{0}'/* '{1}'/*",
                s.upper().display(),
                s.work().display()
            ));
        }
    }
    eprintln!("crash test: {iterations} kills, {killed_mid_op} while the operations were running");
    assert!(killed_mid_op > 0, "no kill landed during an operation");
}
