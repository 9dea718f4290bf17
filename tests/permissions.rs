//! Permissions through the mount, compared with the kernel overlay on the same layers:
//! another user (uid 65533, via `setpriv`) gets exactly the answers the kernel overlay
//! gives (reading a root 0600 file, listing a 0700 directory, writing a root directory,
//! sticky directories, chmod/chown/xattrs of others' files); setuid/setgid bits are
//! cleared on write and truncate by a non-owner as the kernel does; a mount made by a plain
//! user through fusermount3 is closed to others unless `allow_other`/`allow_root` (which
//! need `user_allow_other` in /etc/fuse.conf) and never lets its user do more than the user
//! may on the layers.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

const USER: u32 = 65533;
/// fusermount3 needs a passwd entry: the plain-user mount runs as `nobody`.
const NOBODY: u32 = 65534;

/// Run `script` as uid/gid 65533 with no supplementary groups; (exit code, stderr with the
/// mount path replaced by MNT).
fn as_user(script: &str, mnt: &Path) -> (i32, String) {
    as_uid(USER, script, mnt)
}

fn as_uid(uid: u32, script: &str, mnt: &Path) -> (i32, String) {
    let out = sh(&format!(
        "setpriv --reuid {uid} --regid {uid} --clear-groups bash -c {}",
        quote(script)
    ));
    let err = String::from_utf8_lossy(&out.stderr).replace(&*mnt.to_string_lossy(), "MNT");
    (out.status.code().unwrap_or(-1), err)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The layers: objects of root with various modes, and some of the user.
fn make_layers(s: &Scratch) {
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l0 = s.lower(0);
    sh_ok(&format!(
        r#"set -e
cd '{l0}'
echo secret > secret; chmod 600 secret
echo pub > pub; chmod 644 pub
echo ww > worldw; chmod 666 worldw
mkdir rootdir; echo in > rootdir/f; chmod 700 rootdir
mkdir rodir; echo ro > rodir/f; chmod 755 rodir
mkdir rodir/userdir; chown {USER}:{USER} rodir/userdir
mkdir tmpdir; chmod 1777 tmpdir; echo r > tmpdir/rootfile; chmod 666 tmpdir/rootfile
echo u > tmpdir/userfile; chown {USER}:{USER} tmpdir/userfile
echo s > suid; chmod 6777 suid
echo s > suid_grp_noexec; chmod 6766 suid_grp_noexec
echo s > suid_trunc; chmod 6777 suid_trunc
echo s > suid_owner; chown {USER}:{USER} suid_owner; chmod 6777 suid_owner
setfattr -n user.note -v hello pub
"#,
        l0 = l0.display()
    ));
}

const PROBES: &[&str] = &[
    "cat $M/secret",
    "cat $M/pub",
    "echo x >> $M/pub",
    "echo x >> $M/secret",
    "ls $M/rootdir",
    "cat $M/rootdir/f",
    "touch $M/rodir/new",
    "mkdir $M/rodir/newdir",
    "rm $M/rodir/f",
    "mv $M/rodir/f $M/tmpdir/stolen",
    "touch $M/rodir/userdir/mine",
    "touch $M/rodir/new2",
    "touch $M/tmpdir/new",
    "rm $M/tmpdir/rootfile",
    "mv $M/tmpdir/rootfile $M/tmpdir/renamed",
    "echo y >> $M/tmpdir/rootfile",
    "rm $M/tmpdir/userfile",
    "echo x >> $M/worldw",
    "chmod 777 $M/pub",
    "chown {USER} $M/worldw",
    "touch -d 2001-01-01 $M/worldw",
    "touch -d 2001-01-01 $M/pub",
    "ln $M/secret $M/tmpdir/hardlink",
    "setfattr -n user.x -v 1 $M/pub",
    "getfattr -n user.note $M/pub",
    "getfattr -n user.note $M/secret",
    "truncate -s 0 $M/pub",
    "cat $M/tmpdir/new",
];

#[test]
fn other_user_gets_what_the_kernel_overlay_gives() {
    if !common::require_mount_privilege("other_user_gets_what_the_kernel_overlay_gives") {
        return;
    }
    // two identical layer sets, one per filesystem
    let sl = Scratch::new();
    let sk = Scratch::new();
    make_layers(&sl);
    make_layers(&sk);
    let ml = sl.mount(1, "");
    let mk = common::mount_kernel_overlay(
        &[sk.lower(0)],
        Some(&sk.upper()),
        Some(&sk.work()),
        &sk.mnt(),
        "",
    );
    let mut diffs = Vec::new();
    let mut denied = 0;
    for p in PROBES {
        let p = p.replace("{USER}", &USER.to_string());
        let (cl, el) = as_user(&p.replace("$M", &ml.mnt.to_string_lossy()), &ml.mnt);
        let (ck, ek) = as_user(&p.replace("$M", &mk.mnt.to_string_lossy()), &mk.mnt);
        if cl != ck || el != ek {
            diffs.push(format!(
                "{p}\n  layerfs: {cl} {}\n  kernel:  {ck} {}",
                el.trim(),
                ek.trim()
            ));
        }
        if ck != 0 {
            denied += 1;
        }
    }
    // the resulting trees (as root) match too
    let tree = |m: &Path| {
        sh_ok(&format!(
            "cd '{}' && find . -printf '%p %M %u %g %s\\n' | sort",
            m.display()
        ))
    };
    let (tl, tk) = (tree(&ml.mnt), tree(&mk.mnt));
    assert!(
        diffs.is_empty(),
        "{} of {} probes differ from the kernel overlay:\n{}",
        diffs.len(),
        PROBES.len(),
        diffs.join("\n")
    );
    assert_eq!(tl, tk, "trees after the probes");
    assert!(denied >= 10, "only {denied} probes were refused");
    eprintln!(
        "{} probes as uid {USER}, {denied} refused, all as on the kernel overlay",
        PROBES.len()
    );
}

/// Write or truncate each file as uid 65533 on layerfs and on the kernel overlay; returns
/// the `name mode size` lines (layerfs, kernel), and layerfs's lines after a remount.
fn modes_after_non_owner_writes(files: &[(&str, &str)]) -> (String, String, String) {
    let sl = Scratch::new();
    let sk = Scratch::new();
    make_layers(&sl);
    make_layers(&sk);
    let ml = sl.mount(1, "");
    let mk = common::mount_kernel_overlay(
        &[sk.lower(0)],
        Some(&sk.upper()),
        Some(&sk.work()),
        &sk.mnt(),
        "",
    );
    let names: Vec<&str> = files.iter().map(|(_, f)| *f).collect();
    let stat = |d: &Path| {
        sh_ok(&format!(
            "cd '{}' && stat -c '%n %a %s' {}",
            d.display(),
            names.join(" ")
        ))
    };
    let mut rows = Vec::new();
    for m in [&ml.mnt, &mk.mnt] {
        let d = m.to_string_lossy();
        for (op, f) in files {
            let (c, e) = as_user(&format!("{op}{d}/{f}"), m);
            assert_eq!(c, 0, "{op}{f} as uid {USER}: {e}");
        }
        rows.push(stat(m));
    }
    drop(ml);
    let ml = sl.mount(1, "");
    let again = stat(&ml.mnt);
    (rows.remove(0), rows.remove(0), again)
}

#[test]
fn setuid_setgid_cleared_on_write_by_non_owner_like_kernel() {
    if !common::require_mount_privilege("setuid_setgid_cleared_on_write_by_non_owner_like_kernel") {
        return;
    }
    let (l, k, again) = modes_after_non_owner_writes(&[
        ("echo x >> ", "suid"),
        ("truncate -s 1 ", "suid_trunc"),
        ("echo x >> ", "suid_owner"),
    ]);
    assert_eq!(l, k, "modes after writes (layerfs, then kernel)");
    // the kernel does clear them: the comparison is meaningful
    assert!(k.contains("suid 777 "), "{k}");
    assert_eq!(again, l, "after a remount");
}

/// A setgid file without group execute (06766) written by a non-owner outside its group:
/// the kernel overlay clears both bits (setattr_should_drop_sgid), layerfs only setuid.
/// FUSE without FUSE_HANDLE_KILLPRIV_V2 only drops setgid when group execute is set, so
/// layerfs would have to take over killing the bits (KILLPRIV_V2: WRITE/SETATTR/OPEN
/// kill flags).
#[test]
fn setgid_without_group_exec_cleared_like_kernel() {
    if !common::require_mount_privilege("setgid_without_group_exec_cleared_like_kernel") {
        return;
    }
    let (l, k, _) = modes_after_non_owner_writes(&[("echo x >> ", "suid_grp_noexec")]);
    assert_eq!(l, k, "modes after writes (layerfs, then kernel)");
}

/// A plain user's mount (through fusermount3): only that user may use it unless
/// allow_other/allow_root, which fusermount3 allows only with `user_allow_other` in
/// /etc/fuse.conf (else: a clear error, nothing mounted). On the layers the user gets no
/// more than the user has: a root 0600 file stays unreadable, a root directory unwritable
/// (also after a copy-up of that directory made by the user's own write below it).
#[test]
fn plain_user_mount_is_private_and_grants_nothing_more() {
    if !common::require_mount_privilege("plain_user_mount_is_private_and_grants_nothing_more") {
        return;
    }
    plain_user_mount(false);
}

/// A plain user's daemon cannot chown. Regression: a copy-up it made belonged to the
/// user, so a root directory copied up because the user wrote below it (in a subdirectory
/// the user owns) became the user's, who could then create, delete and chmod in it, and a
/// root 0666 file written by the user became the user's to chmod. Such copy-ups are now
/// refused (EPERM), as the kernel refuses copy-ups that cannot keep the owner.
#[test]
fn plain_user_copy_up_keeps_the_owner() {
    if !common::require_mount_privilege("plain_user_copy_up_keeps_the_owner") {
        return;
    }
    plain_user_mount(true);
}

fn plain_user_mount(after_copy_up: bool) {
    // fuser opens /dev/fuse itself before it falls back to fusermount3; where the device is
    // root-only (containers), give the test user access for the duration of the test.
    struct FuseAcl(bool);
    impl Drop for FuseAcl {
        fn drop(&mut self) {
            if self.0 {
                let _ = sh(&format!("setfacl -x u:{NOBODY} /dev/fuse"));
            }
        }
    }
    let can_open = |_: ()| as_nobody("exec 3<>/dev/fuse", Path::new("/")).0 == 0;
    let _acl = if can_open(()) {
        FuseAcl(false)
    } else {
        sh_ok(&format!("setfacl -m u:{NOBODY}:rw /dev/fuse"));
        FuseAcl(true)
    };
    assert!(can_open(()), "uid {NOBODY} cannot open /dev/fuse");
    let s = Scratch::new();
    make_layers(&s);
    // the layers' user-owned objects belong to this user here
    sh_ok(&format!(
        "cd '{}' && chown {NOBODY}:{NOBODY} rodir/userdir tmpdir/userfile suid_owner",
        s.lower(0).display()
    ));
    for d in [s.upper(), s.work(), s.mnt()] {
        sh_ok(&format!("chown {NOBODY}:{NOBODY} '{}'", d.display()));
    }
    let opts = common::layer_opts(&[s.lower(0)], Some(&s.upper()), Some(&s.work()));
    let mnt = s.mnt();
    let m = mnt.to_string_lossy().into_owned();
    let (c, e) = as_nobody(&format!("{} -o {opts} {m}", common::LAYERFS), &mnt);
    assert_eq!(c, 0, "mount as uid {NOBODY}: {e}");
    assert!(common::is_mounted(&mnt));
    let guard = common::Mount {
        mnt: mnt.clone(),
        kernel: false,
    };
    // others (root included) are refused without allow_other/allow_root
    let out = sh(&format!("ls '{m}'"));
    assert!(
        !out.status.success(),
        "root could list a private user mount"
    );
    // the user: the same as on the layers themselves
    // Some(allowed), or None where refusing or allowing are both right
    let checks: &[(&str, Option<bool>)] = if after_copy_up {
        &[
            // needs a copy-up of root's rodir: refused, or done keeping root the owner
            ("touch $M/rodir/userdir/mine", None),
            ("touch $M/rodir/new", Some(false)),
            ("mkdir $M/rodir/d", Some(false)),
            ("rm $M/rodir/f", Some(false)),
            ("chmod 777 $M/rodir", Some(false)),
            ("echo x >> $M/worldw", None),
            // worldw is root's 0666 file: its mode is not the user's to change
            ("chmod 600 $M/worldw", Some(false)),
        ]
    } else {
        &[
            ("cat $M/pub", Some(true)),
            ("cat $M/secret", Some(false)),
            ("ls $M/rootdir", Some(false)),
            ("cat $M/rootdir/f", Some(false)),
            ("touch $M/rodir/new", Some(false)),
            ("echo x >> $M/rodir/f", Some(false)),
            ("rm $M/rodir/f", Some(false)),
            ("mv $M/rodir/f $M/stolen", Some(false)),
            ("chmod 777 $M/rodir", Some(false)),
            ("chmod 777 $M/secret", Some(false)),
            ("chown nobody $M/pub", Some(false)),
            ("rm $M/tmpdir/rootfile", Some(false)),
            ("ln $M/secret $M/tmpdir/hardlink", Some(false)),
            // the union root shows the upper root (the user's), as on the kernel overlay
            ("touch $M/mine", Some(true)),
        ]
    };
    let mut wrong = Vec::new();
    for (cmd, ok) in checks {
        let (c, e) = as_nobody(&cmd.replace("$M", &m), &mnt);
        if ok.is_some_and(|ok| (c == 0) != ok) {
            wrong.push(format!("{cmd}: exit {c} {}", e.trim()));
        }
    }
    let shown = sh_ok(&format!(
        "setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups stat -c '%u %a' '{m}/rodir'"
    ));
    assert!(
        wrong.is_empty(),
        "the user's mount grants other rights than the layers:\n{}\n(rodir shown as {shown})",
        wrong.join("\n")
    );
    assert_eq!(
        shown.trim(),
        "0 755",
        "owner/mode of rodir after its copy-up"
    );
    let (c, e) = as_nobody(&format!("fusermount3 -u {m}"), &mnt);
    assert_eq!(c, 0, "fusermount3 -u as the user: {e}");
    drop(guard);
    // allow_other / allow_root need user_allow_other in /etc/fuse.conf
    let conf = fs::read_to_string("/etc/fuse.conf").unwrap_or_default();
    let allowed = conf
        .lines()
        .any(|l| l.trim_start().starts_with("user_allow_other"));
    for opt in ["allow_other", "allow_root"] {
        let (c, e) = as_nobody(&format!("{} -o {opts},{opt} {m}", common::LAYERFS), &mnt);
        if allowed {
            assert_eq!(c, 0, "{opt}: {e}");
            let out = sh(&format!("ls '{m}'"));
            assert!(out.status.success(), "{opt}: root could not list the mount");
            common::unmount(&mnt);
        } else {
            assert_ne!(c, 0, "{opt} without user_allow_other mounted");
            assert!(
                e.contains("allow_other") || e.contains(opt),
                "{opt}: unclear error: {e}"
            );
            assert!(!common::is_mounted(&mnt), "{opt}: something is mounted");
        }
    }
}

fn as_nobody(script: &str, mnt: &Path) -> (i32, String) {
    as_uid(NOBODY, script, mnt)
}
