//! layerfs mounted by a real non-root user through fusermount3, as `mount_program` runs for
//! a rootless user outside podman's namespace: a test user is created (and removed again),
//! /dev/fuse is granted to it with an ACL (restored exactly afterwards), and the union's
//! basic operations, whiteouts, opaque directories and a directory rename are checked through
//! the mount and in the upper, with the unprivileged fallbacks each said once in the log.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const USER: &str = "layerfs-nonroot-test";
/// The lock scripts/podman-e2e holds while it changes /dev/fuse's ACL.
const LOCK: &str = "/run/lock/layerfs-podman-e2e.lock";

/// The test user, created if missing and then removed on drop.
struct TestUser {
    uid: u32,
    gid: u32,
    created: bool,
}

impl TestUser {
    fn get() -> TestUser {
        let mut created = false;
        if !sh(&format!("id -u {USER}")).status.success() {
            sh_ok(&format!(
                "useradd -M -r -d /nonexistent -s /usr/sbin/nologin {USER}"
            ));
            created = true;
        }
        let id = |f: &str| -> u32 { sh_ok(&format!("id {f} {USER}")).trim().parse().unwrap() };
        TestUser {
            uid: id("-u"),
            gid: id("-g"),
            created,
        }
    }
    fn run(&self, script: &str) -> std::process::Output {
        std::process::Command::new("setpriv")
            .args([
                &format!("--reuid={}", self.uid),
                &format!("--regid={}", self.gid),
                "--clear-groups",
                "--",
                "bash",
                "-c",
                script,
            ])
            .env("HOME", "/")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run setpriv")
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if self.created {
            let _ = sh(&format!("userdel {USER}"));
        }
    }
}

/// /dev/fuse readable and writable by `uid` through an ACL entry; the saved ACL (and mode)
/// is put back on drop, with `setfacl -b` first so no empty mask entry stays behind.
struct FuseAcl {
    saved: PathBuf,
    mode: u32,
    _lock: fs::File,
}

impl FuseAcl {
    fn grant(uid: u32, dir: &Path) -> FuseAcl {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .or_else(|_| fs::File::create("/tmp/layerfs-podman-e2e.lock"))
            .unwrap();
        // SAFETY: flock on an fd this struct owns; released when the file is closed.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let saved = dir.join("fuse.acl");
        let mode = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
        sh_ok(&format!("getfacl -p /dev/fuse > '{}'", saved.display()));
        sh_ok(&format!("setfacl -m u:{uid}:rw /dev/fuse"));
        FuseAcl {
            saved,
            mode,
            _lock: lock,
        }
    }
}

impl Drop for FuseAcl {
    fn drop(&mut self) {
        let out = sh(&format!(
            "setfacl -b /dev/fuse && setfacl --restore='{}' && chmod {:o} /dev/fuse",
            self.saved.display(),
            self.mode
        ));
        if !out.status.success() {
            eprintln!(
                "could not restore the /dev/fuse ACL: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn xattr(p: &Path, name: &str) -> String {
    let o = sh(&format!(
        "getfattr --absolute-names -n {name} --only-values '{}'",
        p.display()
    ));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn non_root_user_mount_through_fusermount3() {
    if !common::require_mount_privilege("non_root_user_mount_through_fusermount3") {
        return;
    }
    for tool in ["fusermount3", "setfacl", "useradd", "setpriv"] {
        if !sh(&format!("command -v {tool}")).status.success() {
            assert!(std::env::var_os("CI").is_none(), "CI must install {tool}");
            eprintln!("SKIP non_root_user_mount_through_fusermount3: no {tool}");
            return;
        }
    }
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (l0, l1) = (s.lower(0), s.lower(1));
    sh_ok(&format!(
        "cd '{l1}' && mkdir -p d/sub opq/sub ren/inner && echo a > d/a && echo c > d/sub/c && \
         echo o1 > opq/o1 && echo o3 > opq/sub/o3 && echo y > ren/inner/y && echo lower > f && \
         echo gone > gone && mkfifo fifo && ln -s f sym && chmod -R a+rX . && \
         cd '{l0}' && mkdir -p d && echo b > d/b && chmod -R a+rX .",
        l1 = l1.display(),
        l0 = l0.display()
    ));
    let user = TestUser::get();
    // A layerfs binary the user can reach whatever the permissions of the target dir.
    let bin = s.path().join("layerfs");
    fs::copy(common::LAYERFS, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    // The user's own layers, as a rootless user's are.
    sh_ok(&format!(
        "chown -R {}:{} '{}' '{}' '{}' '{}' '{}'",
        user.uid,
        user.gid,
        l0.display(),
        l1.display(),
        s.upper().display(),
        s.work().display(),
        s.mnt().display()
    ));
    let _acl = FuseAcl::grant(user.uid, s.path());
    let opts = common::layer_opts(&[l0.clone(), l1.clone()], Some(&s.upper()), Some(&s.work()));
    let (m, log1, log2) = (s.mnt(), s.path().join("log1"), s.path().join("log2"));
    for l in [&log1, &log2] {
        fs::write(l, "").unwrap();
        std::os::unix::fs::chown(l, Some(user.uid), Some(user.gid)).unwrap();
    }
    // Mount in the foreground (its log is the stderr file), wait until live, work, unmount
    // with fusermount3 -u and wait for the daemon to exit.
    let session = |log: &Path, work: &str| {
        format!(
            r#"set -e
{bin} -f -o {opts} {m} </dev/null >/dev/null 2>{log} &
pid=$!
# on any failure: unmount, so the daemon exits and nothing is left behind
trap 'cd /; fusermount3 -u -z {m} 2>/dev/null || true' EXIT
for i in $(seq 100); do grep -q " {m} " /proc/self/mountinfo && break; sleep 0.1; done
grep " {m} " /proc/self/mountinfo | grep -q " fuse.layerfs "
cd {m}
{work}
cd /
fusermount3 -u {m}
wait $pid
"#,
            bin = bin.display(),
            m = m.display(),
            log = log.display(),
        )
    };
    let work1 = r#"
test "$(cat f)" = lower
test "$(ls d | tr '\n' ' ')" = "a b sub "
echo more >> f
rm gone
rm d/a
rm -rf opq && mkdir opq && test -z "$(ls -A opq)" && echo new > opq/new
mv ren ren2 && test "$(cat ren2/inner/y)" = y && test ! -e ren
ln f f-hl && test "$(stat -c %h f)" = 2
chmod 600 fifo && test -p fifo
mkfifo newfifo && ln -s f newsym
for i in 1 2 3; do cat f > /dev/null; done
test "$(stat -c %u:%g f)" = "$(id -u):$(id -g)"
"#;
    let out = user.run(&session(&log1, work1));
    let log = fs::read_to_string(&log1).unwrap();
    assert!(
        out.status.success(),
        "session 1 failed:\nstderr: {}\nlayerfs log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    // In the upper: the unprivileged formats, owned by the user.
    let up = s.upper();
    let gone = fs::symlink_metadata(up.join("gone"));
    let dot_wh = up.join(".wh.gone").exists();
    match gone {
        Ok(md) => assert!(md.file_type().is_char_device() && md.rdev() == 0),
        Err(_) => assert!(dot_wh, "no whiteout for 'gone' in the upper"),
    }
    assert_eq!(
        log.matches(".wh.NAME").count(),
        usize::from(dot_wh),
        "the .wh. whiteout fallback is said once exactly when used:\n{log}"
    );
    assert_eq!(xattr(&up.join("opq"), "user.overlay.opaque"), "y");
    assert_eq!(xattr(&up.join("ren2"), "user.overlay.redirect"), "/ren");
    let trusted = sh_ok(&format!(
        "getfattr --absolute-names -R -d -m '^trusted\\.' '{}'",
        up.display()
    ));
    assert!(trusted.trim().is_empty(), "trusted.* written: {trusted}");
    assert_eq!(fs::metadata(up.join("f")).unwrap().uid(), user.uid);
    for (msg, what) in [
        ("trusted.* xattrs not writable", "the user.* xattr fallback"),
        (
            "not running as root: no FUSE passthrough",
            "the passthrough fallback",
        ),
    ] {
        assert_eq!(log.matches(msg).count(), 1, "{what} said once:\n{log}");
    }
    assert!(!log.contains("panicked"), "{log}");
    // After a remount, as the same user: everything kept.
    let work2 = r#"
test "$(cat f)" = "lower
more"
test ! -e gone
test "$(ls d | tr '\n' ' ')" = "b sub "
test "$(ls -A opq)" = new
test ! -e opq/sub
test "$(cat ren2/inner/y)" = y && test ! -e ren
test "$(stat -c %i f)" = "$(stat -c %i f-hl)"
test "$(stat -c %a fifo)" = 600 && test -p fifo && test -p newfifo
test "$(readlink newsym)" = f && test "$(readlink sym)" = f
test -z "$(ls -A | grep '^\.wh\.')"
"#;
    let out = user.run(&session(&log2, work2));
    assert!(
        out.status.success(),
        "session 2 failed:\nstderr: {}\nlayerfs log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&log2).unwrap()
    );
    assert!(!common::is_mounted(&m));
}
