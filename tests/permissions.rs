//! Permissions through the mount, compared with the kernel overlay on the same layers:
//! another user (uid 65533, via `setpriv`) gets exactly the answers the kernel overlay
//! gives (reading a root 0600 file, listing a 0700 directory, writing a root directory,
//! sticky directories, chmod/chown/xattrs of others' files); setuid/setgid bits are
//! cleared on write and truncate by a non-owner as the kernel does; a mount made by a plain
//! user through fusermount3 is closed to others unless `allow_other`/`allow_root` (which
//! need `user_allow_other` in /etc/fuse.conf) and never lets its user do more than the user
//! may on the layers.

mod common;
#[path = "common/load.rs"]
mod load;

use common::{sh, sh_ok, Scratch};
use load::FgMount;
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
    other_user_like_kernel("");
}

/// The same with `noopen`: the kernel opens files without asking the daemon, so every
/// permission check at open is the kernel's own (`default_permissions`, always on).
#[test]
fn other_user_gets_what_the_kernel_overlay_gives_noopen() {
    if !common::require_mount_privilege("other_user_gets_what_the_kernel_overlay_gives_noopen") {
        return;
    }
    other_user_like_kernel("noopen");
}

fn other_user_like_kernel(opts: &str) {
    // two identical layer sets, one per filesystem
    let sl = Scratch::new();
    let sk = Scratch::new();
    make_layers(&sl);
    make_layers(&sk);
    let ml = sl.mount(1, opts);
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
        "{opts}: {} probes as uid {USER}, {denied} refused, all as on the kernel overlay",
        PROBES.len()
    );
}

/// Who runs a step of [`privileges_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    /// uid/gid 65533, no supplementary group
    User,
    /// uid/gid 65533 with supplementary group [`GROUP`]
    UserInGroup,
    Root,
}

/// A supplementary group of the test user in [`By::UserInGroup`] steps.
const GROUP: u32 = 65530;

/// Files for the set-id and capability steps: (name, owner:group, mode). `cap_*` files
/// also get a `security.capability` (cap_net_raw+ep, v2 format).
const KILL_FILES: &[(&str, &str, &str)] = &[
    // set-group-id without group-execute, in the writer's group: kept
    ("sgid_nox_grp", "0:65533", "2766"),
    // ... in the writer's supplementary group: kept
    ("sgid_nox_supp", "0:65530", "2766"),
    // ... outside the writer's groups: dropped
    ("sgid_nox_other", "0:0", "2766"),
    // set-group-id with group-execute: dropped, in the group or not
    ("sgid_x_grp", "0:65533", "2776"),
    ("sgid_x_other", "0:0", "2777"),
    // truncate(2) and open(O_TRUNC) by a non-owner
    ("sgid_trunc_other", "0:0", "2766"),
    ("sgid_trunc_grp", "0:65533", "2766"),
    ("suid_otrunc", "0:0", "6777"),
    ("suid_otrunc_grp", "0:65533", "6766"),
    // written by root (CAP_FSETID): kept
    ("suid_root_write", "0:0", "6777"),
    // chown by root: set-user-id dropped; set-group-id only with group-execute
    ("suid_chown", "0:0", "6745"),
    ("sgid_x_chown", "0:0", "2775"),
    // chown(f, -1, -1) by root: the kernel sends a SETATTR without change
    ("suid_chown_same", "0:0", "6745"),
    ("sgid_x_chown_same", "0:0", "2775"),
    // chgrp by the owner outside the old group: both dropped (the daemon's own chown,
    // as root, would keep set-group-id)
    ("owned_chgrp", "65533:0", "6766"),
    // file capabilities: dropped by a write, whoever writes, and by truncate and chown
    ("cap_user_write", "0:0", "0666"),
    ("cap_root_write", "0:0", "0755"),
    ("cap_truncate", "0:0", "0666"),
    ("cap_chown", "0:0", "0755"),
    // only read: kept
    ("cap_read", "0:0", "0644"),
];

/// The steps on [`KILL_FILES`] (and the set-user-id files of [`make_layers`]): who, the
/// command before the file's path, the file.
const KILL_STEPS: &[(By, &str, &str)] = &[
    (By::User, "echo x >> ", "suid"),
    (By::User, "truncate -s 1 ", "suid_trunc"),
    (By::User, "echo x >> ", "suid_owner"),
    (By::User, "echo x >> ", "suid_grp_noexec"),
    (By::User, "echo x >> ", "sgid_nox_grp"),
    (By::UserInGroup, "echo x >> ", "sgid_nox_supp"),
    (By::User, "echo x >> ", "sgid_nox_other"),
    (By::User, "echo x >> ", "sgid_x_grp"),
    (By::User, "echo x >> ", "sgid_x_other"),
    (By::User, "truncate -s 1 ", "sgid_trunc_other"),
    (By::User, "truncate -s 1 ", "sgid_trunc_grp"),
    (By::User, ": > ", "suid_otrunc"),
    (By::User, ": > ", "suid_otrunc_grp"),
    (By::Root, "echo x >> ", "suid_root_write"),
    (By::Root, "chown 0:0 ", "suid_chown"),
    (By::Root, "chgrp 0 ", "sgid_x_chown"),
    (By::Root, CHOWN_SAME, "suid_chown_same"),
    (By::Root, CHOWN_SAME, "sgid_x_chown_same"),
    (By::User, "chgrp 65533 ", "owned_chgrp"),
    (By::User, "echo x >> ", "cap_user_write"),
    (By::Root, "echo x >> ", "cap_root_write"),
    (By::User, "truncate -s 2 ", "cap_truncate"),
    (By::Root, "chown 0:0 ", "cap_chown"),
    (By::User, "cat ", "cap_read"),
];

/// chown(path, -1, -1): no owner given, so nothing to change but the set-id bits.
const CHOWN_SAME: &str = "perl -e 'chown(-1, -1, $ARGV[0]) == 1 or die $!' ";

const CAP_NET_RAW_EP: &str = "0x0100000200200000000000000000000000000000";

fn make_kill_files(s: &Scratch) {
    let l0 = s.lower(0);
    for (name, owner, mode) in KILL_FILES {
        let p = l0.join(name);
        fs::write(&p, "s\n").unwrap();
        sh_ok(&format!(
            "chown {owner} '{p}' && chmod {mode} '{p}'",
            p = p.display()
        ));
        if name.starts_with("cap_") {
            sh_ok(&format!(
                "setfattr -n security.capability -v {CAP_NET_RAW_EP} '{}'",
                p.display()
            ));
        }
    }
}

fn run_by(by: By, script: &str, mnt: &Path) -> (i32, String) {
    match by {
        By::User => as_user(script, mnt),
        By::UserInGroup => {
            let out = sh(&format!(
                "setpriv --reuid {USER} --regid {USER} --groups {GROUP} bash -c {}",
                quote(script)
            ));
            let err = String::from_utf8_lossy(&out.stderr).replace(&*mnt.to_string_lossy(), "MNT");
            (out.status.code().unwrap_or(-1), err)
        }
        By::Root => {
            let out = sh(script);
            let err = String::from_utf8_lossy(&out.stderr).replace(&*mnt.to_string_lossy(), "MNT");
            (out.status.code().unwrap_or(-1), err)
        }
    }
}

/// `name mode uid:gid size cap=...` of each file, through the mount (so the kernel's
/// view after the steps, not only the upper's).
fn privileges(d: &Path, names: &[&str]) -> String {
    let mut out = String::new();
    for n in names {
        let p = d.join(n);
        let st = sh_ok(&format!("stat -c '%n %a %u:%g %s' '{}'", p.display()));
        let cap = sh(&format!(
            "getfattr --only-values -e hex -n security.capability '{}' 2>/dev/null | od -An -tx1 | tr -d ' \\n'",
            p.display()
        ));
        out.push_str(&format!(
            "{} cap={}\n",
            st.trim().replace(&*d.to_string_lossy(), ""),
            String::from_utf8_lossy(&cap.stdout).trim()
        ));
    }
    out
}

/// Run `steps` on layerfs (extra mount options `opts`; `writeback=1` turns FUSE
/// passthrough off) and on the kernel overlay of the same layers; returns the
/// [`privileges`] of the files (layerfs, kernel, layerfs after a remount) and the
/// daemon's log (with a SIGUSR1 counters line).
fn privileges_after(steps: &[(By, &str, &str)], opts: &str) -> (String, String, String, String) {
    let sl = Scratch::new();
    let sk = Scratch::new();
    for s in [&sl, &sk] {
        make_layers(s);
        make_kill_files(s);
    }
    let mut lopts = common::layer_opts(&[sl.lower(0)], Some(&sl.upper()), Some(&sl.work()));
    if !opts.is_empty() {
        lopts.push(',');
        lopts.push_str(opts);
    }
    let log = sl.path().join("daemon.log");
    let ml = FgMount::start(&lopts, &sl.mnt(), &log, "info");
    let mk = common::mount_kernel_overlay(
        &[sk.lower(0)],
        Some(&sk.upper()),
        Some(&sk.work()),
        &sk.mnt(),
        "",
    );
    let mut names: Vec<&str> = steps.iter().map(|(_, _, f)| *f).collect();
    names.dedup();
    let mut rows = Vec::new();
    for m in [&ml.mnt, &mk.mnt] {
        let d = m.to_string_lossy();
        for (by, op, f) in steps {
            let (c, e) = run_by(*by, &format!("{op}{d}/{f}"), m);
            assert_eq!(c, 0, "{op}{f} by {by:?}: {e}");
        }
        rows.push(privileges(m, &names));
    }
    unsafe { libc::kill(ml.pid(), libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ml.log_text().contains("counters:") && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log_text = ml.log_text();
    ml.stop();
    let ml = sl.mount(1, opts);
    let again = privileges(&ml.mnt, &names);
    (rows.remove(0), rows.remove(0), again, log_text)
}

fn kill_like_kernel(opts: &str, passthrough: bool) {
    let (l, k, again, log) = privileges_after(KILL_STEPS, opts);
    assert_eq!(l, k, "after the steps (layerfs, then kernel)");
    assert_eq!(again, l, "after a remount");
    // the kernel does drop them: the comparison is meaningful
    for want in [
        "/suid 777 ",
        "/sgid_nox_grp 2766 ",
        "/sgid_nox_supp 2766 ",
        "/sgid_nox_other 766 ",
        "/suid_root_write 6777 ",
        "/suid_chown 2745 ",
        "/sgid_x_chown 775 ",
        "/suid_chown_same 2745 ",
        "/sgid_x_chown_same 775 ",
        "/owned_chgrp 766 ",
        "/cap_root_write 755 0:0 4 cap=\n",
        "/cap_read 644 0:0 2 cap=0100000200200000000000000000000000000000\n",
    ] {
        assert!(k.contains(want), "kernel: no {want:?} in\n{k}");
    }
    // the passthrough setting really was in effect: passthrough writes never reach the
    // daemon
    assert_eq!(
        log.contains("FUSE passthrough enabled"),
        passthrough,
        "daemon log does not match the passthrough setting:\n{log}"
    );
    let counters = log.lines().find(|l| l.contains("counters:")).unwrap_or("");
    assert_eq!(
        !counters.contains(" write="),
        passthrough,
        "WRITE requests do not match the passthrough setting: {counters}"
    );
}

/// Set-id bits and file capabilities after writes, truncates, O_TRUNC opens and chowns by
/// a non-owner (in the file's group or not, through a supplementary group), the owner and
/// root, as the kernel overlay leaves them (the VFS rules: `setattr_should_drop_suidgid`,
/// `chown_common`, `cap_inode_need_killpriv`), with FUSE passthrough (as root, the
/// default: the writes bypass the daemon, which drops the bits on the kernel's
/// `file_remove_privs` SETATTR) ...
#[test]
fn setuid_setgid_cleared_on_write_by_non_owner_like_kernel() {
    if !common::require_mount_privilege("setuid_setgid_cleared_on_write_by_non_owner_like_kernel") {
        return;
    }
    kill_like_kernel("", true);
}

/// ... and without (`writeback=1`: the writes reach the daemon with
/// FUSE_WRITE_KILL_SUIDGID).
#[test]
fn setuid_setgid_cleared_without_passthrough_like_kernel() {
    if !common::require_mount_privilege("setuid_setgid_cleared_without_passthrough_like_kernel") {
        return;
    }
    kill_like_kernel("writeback=1", false);
}

/// ... and with `noopen` (no passthrough; O_TRUNC opens arrive as a SETATTR, writes as
/// WRITEs by inode that copy the file up first).
#[test]
fn setuid_setgid_cleared_noopen_like_kernel() {
    if !common::require_mount_privilege("setuid_setgid_cleared_noopen_like_kernel") {
        return;
    }
    kill_like_kernel("noopen", false);
}

/// A setgid file without group execute (06766) written by a non-owner outside its group:
/// the kernel overlay clears both bits (setattr_should_drop_sgid). FUSE's own fallback
/// (without FUSE_HANDLE_KILLPRIV_V2) only drops setgid when group execute is set; layerfs
/// takes the killing over.
#[test]
fn setgid_without_group_exec_cleared_like_kernel() {
    if !common::require_mount_privilege("setgid_without_group_exec_cleared_like_kernel") {
        return;
    }
    let (l, k, _, _) = privileges_after(&[(By::User, "echo x >> ", "suid_grp_noexec")], "");
    assert_eq!(l, k, "modes after writes (layerfs, then kernel)");
    assert!(k.contains("/suid_grp_noexec 766 "), "{k}");
}

/// End to end, what set-user-id is for: a set-user-id-root copy of `id` runs as root
/// for the test user; once the user appended a byte to it (a write by a non-owner), it
/// runs as the user, right away (exec acts on the mode the kernel has cached), with and
/// without FUSE passthrough.
#[test]
fn setuid_binary_runs_as_its_user_after_a_write() {
    if !common::require_mount_privilege("setuid_binary_runs_as_its_user_after_a_write") {
        return;
    }
    for opts in ["", "writeback=1", "noopen"] {
        let s = Scratch::new();
        fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let bin = s.lower(0).join("suid_id");
        fs::copy("/usr/bin/id", &bin).unwrap();
        sh_ok(&format!(
            "chown 0:0 '{0}' && chmod 4777 '{0}'",
            bin.display()
        ));
        let m = s.mount(1, opts);
        let f = m.path("suid_id").to_string_lossy().into_owned();
        let euid = |m: &common::Mount| {
            let out = sh(&format!(
                "setpriv --reuid {USER} --regid {USER} --clear-groups '{f}' -u"
            ));
            assert!(out.status.success(), "{opts}: {:?}", m.mnt);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(
            euid(&m),
            "0",
            "{opts}: set-user-id does not work on the mount"
        );
        let (c, e) = as_user(&format!("printf '\\0' >> '{f}'"), &m.mnt);
        assert_eq!(c, 0, "{opts}: {e}");
        assert_eq!(euid(&m), USER.to_string(), "{opts}: still set-user-id root");
    }
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
    // The two tests that call this run in parallel threads; each may grant the test user
    // /dev/fuse and take it back at its end, which would cut the other off mid-test
    // (seen: its allow_other mount refused with EACCES instead of the clear error).
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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

/// In a user namespace (layerfs and the kernel overlay both mounted by its root, ids
/// 0-65535 mapped to themselves): nobody holds CAP_FSETID there, the daemon included, so
/// the upper's filesystem also drops set-user-id on the daemon's own truncates and
/// writes; the union must show what the kernel overlay shows, right after each step.
#[test]
fn setid_dropped_in_a_user_namespace_like_kernel() {
    if !common::require_mount_privilege("setid_dropped_in_a_user_namespace_like_kernel") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let b = s.path().display().to_string();
    let inner = format!(
        r#"set -e
B={b}
trap 'umount $B/lf/m 2>/dev/null; umount $B/ko/m 2>/dev/null' EXIT
{layerfs} -o lowerdir=$B/lf/l,upperdir=$B/lf/u,workdir=$B/lf/w $B/lf/m 2>/dev/null
mount -t overlay overlay -o lowerdir=$B/ko/l,upperdir=$B/ko/u,workdir=$B/ko/w,userxattr $B/ko/m
for t in lf ko; do
  M=$B/$t/m
  setpriv --reuid {USER} --regid {USER} --clear-groups bash -c "echo x >> $M/suid; echo x >> $M/sgid_nox; : > $M/otr; truncate -s 1 $M/tr; chgrp {USER} $M/own"
  echo x >> $M/root_suid
  : > $M/root_otr
  echo "$(cd $M && stat -c '%n %a %u:%g %s' suid sgid_nox otr tr own root_suid root_otr | tr '\n' ' ')"
done
"#,
        layerfs = common::LAYERFS,
    );
    fs::write(s.path().join("inner.sh"), inner).unwrap();
    let setup = format!(
        r#"set -e
B={b}
for t in lf ko; do
  mkdir -p $B/$t/l $B/$t/u $B/$t/w $B/$t/m
  cd $B/$t/l
  for f in suid otr tr root_suid root_otr; do echo s > $f; chmod 6777 $f; done
  echo s > sgid_nox; chmod 2766 sgid_nox
  echo s > own; chown {USER}:0 own; chmod 6766 own
done
"#
    );
    sh_ok(&setup);
    // the namespace's process waits until its id maps are written from outside
    let out = sh(&format!(
        r#"B={b}
unshare -U -m --propagation private bash -c "while [ ! -e $B/go ]; do sleep 0.05; done; exec bash $B/inner.sh" &
UP=$!
sleep 0.3
echo "0 0 65536" > /proc/$UP/uid_map && echo "0 0 65536" > /proc/$UP/gid_map && touch $B/go
wait $UP"#
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0], lines[1], "layerfs, then the kernel overlay");
    assert!(lines[1].contains("otr 777 "), "{text}");
    assert!(lines[1].contains("root_otr 777 "), "{text}");
}
