//! The caller contract: podman's exact argv shapes mount, the union is live when the
//! command returns, bad input mounts nothing, and the daemon exits on unmount or SIGTERM.

mod common;

use common::{is_mounted, layerfs, sh, Scratch};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_gone(mnt: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if common::daemon_pids(mnt).is_empty() && !is_mounted(mnt) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn podman_argv_shapes() {
    if !common::require_mount_privilege("podman_argv_shapes") {
        return;
    }
    let s = Scratch::new();
    let colon = s.path().join("with:colon");
    fs::create_dir(&colon).unwrap();
    fs::write(colon.join("c"), "colon layer").unwrap();
    fs::write(s.lower(0).join("a"), "a").unwrap();
    let esc = colon.to_str().unwrap().replace(':', "\\:");
    let base = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        esc,
        s.lower(0).display(),
        s.upper().display(),
        s.work().display()
    );
    let mnt = s.mnt();
    let shapes = [
        vec![
            "-o".to_string(),
            format!("{base},"),
            mnt.display().to_string(),
        ],
        vec![
            "-o".to_string(),
            format!("{base},,volatile"),
            mnt.display().to_string(),
        ],
        vec![
            "-o".to_string(),
            format!("{base},context=\"system_u:object_r:container_file_t:s0:c1,c2\""),
            mnt.display().to_string(),
        ],
        vec![
            "-o".to_string(),
            format!("lowerdir={esc}:{}", s.lower(0).display()),
            "-o".to_string(),
            format!(
                "upperdir={},workdir={}",
                s.upper().display(),
                s.work().display()
            ),
            mnt.display().to_string(),
        ],
    ];
    for args in shapes {
        let out = layerfs(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // live right away: no waiting
        assert_eq!(
            fs::read_to_string(mnt.join("c")).unwrap(),
            "colon layer",
            "{args:?}"
        );
        assert_eq!(fs::read_to_string(mnt.join("a")).unwrap(), "a");
        common::unmount(&mnt);
        assert!(wait_gone(&mnt), "daemon did not exit after umount");
    }
    // relative paths resolve against the caller's cwd
    let out = std::process::Command::new(common::LAYERFS)
        .current_dir(s.path())
        .args(["-o", "lowerdir=lower0,upperdir=upper,workdir=work", "mnt"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(mnt.join("a")).unwrap(), "a");
    common::unmount(&mnt);
    assert!(wait_gone(&mnt));
}

#[test]
fn bad_input_mounts_and_writes_nothing() {
    if !common::require_mount_privilege("bad_input_mounts_and_writes_nothing") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.path().join("file"), "").unwrap();
    let l = s.lower(0).display().to_string();
    let u = s.upper().display().to_string();
    let w = s.work().display().to_string();
    let m = s.mnt().display().to_string();
    let nested = s.upper().join("w").display().to_string();
    let file = s.path().join("file").display().to_string();
    let cases: Vec<(String, String, &str)> = vec![
        (format!("upperdir={u},workdir={w}"), m.clone(), "lowerdir"),
        (
            "lowerdir=/nonexistent/x".to_string(),
            m.clone(),
            "/nonexistent/x",
        ),
        (format!("lowerdir={file}"), m.clone(), "not a directory"),
        (format!("lowerdir={l},upperdir={u}"), m.clone(), "workdir"),
        (
            format!("lowerdir={l},upperdir={u},workdir={nested}"),
            m.clone(),
            "upperdir",
        ),
        (
            format!("lowerdir={l},upperdir={u},workdir={w}"),
            format!("{m}/missing"),
            "mountpoint",
        ),
        (
            format!("lowerdir={l},uidmapping=0:x:1"),
            m.clone(),
            "uidmapping",
        ),
        (
            format!("lowerdir={l},xattr_permissions=7"),
            m.clone(),
            "xattr_permissions",
        ),
    ];
    fs::create_dir(s.upper().join("w")).unwrap();
    let snapshot = || sh(&format!("find '{}' | sort", s.path().display())).stdout;
    let before = snapshot();
    for (opts, mnt, needle) in cases {
        let out = layerfs(&["-o", &opts, &mnt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts} {mnt}: should fail");
        assert!(
            err.contains(needle),
            "{opts}: message {err:?} should name {needle}"
        );
        assert_eq!(
            err.trim()
                .lines()
                .next()
                .map(|l| l.starts_with("layerfs: ")),
            Some(true),
            "{err}"
        );
        assert!(!is_mounted(&s.mnt()), "{opts}: something got mounted");
    }
    assert_eq!(before, snapshot(), "bad input wrote something");
}

#[test]
fn daemon_exits_on_sigterm_fusermount_and_lazy_umount() {
    if !common::require_mount_privilege("daemon_exits_on_sigterm_fusermount_and_lazy_umount") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("a"), "a").unwrap();
    let mnt = s.mnt();
    for how in ["sigterm", "fusermount3", "lazy"] {
        let m = s.mount(1, "");
        let pids = common::daemon_pids(&mnt);
        assert_eq!(pids.len(), 1, "{how}: expected one daemon, got {pids:?}");
        match how {
            "sigterm" => {
                sh(&format!("kill -TERM {}", pids[0]));
            }
            "fusermount3" => {
                let out = sh(&format!(
                    "fusermount3 -u '{}' || umount '{}'",
                    mnt.display(),
                    mnt.display()
                ));
                assert!(out.status.success());
            }
            _ => {
                sh(&format!("umount -l '{}'", mnt.display()));
            }
        }
        assert!(wait_gone(&mnt), "{how}: daemon or mount still there");
        std::mem::forget(m);
    }
    // lower directories may vanish right after the mount program returns (podman unmounts
    // them lazily): the daemon holds them open
    let m = s.mount(1, "");
    fs::rename(s.lower(0), s.path().join("moved-away")).unwrap();
    assert_eq!(fs::read_to_string(m.path("a")).unwrap(), "a");
}
