//! Hostile layers: symlinks pointing out of the layer, redirects that try to escape or go
//! through symlinks, `.wh.` names for `.`/`..`, huge xattrs. The daemon must never read or
//! write outside its layers (a canary outside stays unread and untouched) and never panic.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::MetadataExt;

#[test]
fn hostile_layer_never_escapes() {
    if !common::require_mount_privilege("hostile_layer_never_escapes") {
        return;
    }
    let s = Scratch::new();
    let canary_dir = s.path().join("canary");
    fs::create_dir(&canary_dir).unwrap();
    fs::write(canary_dir.join("secret"), "secret").unwrap();
    fs::create_dir(canary_dir.join("sub")).unwrap();
    fs::write(canary_dir.join("sub/inner"), "inner").unwrap();
    // atime older than mtime: any read (relatime) moves it
    sh_ok(&format!(
        "touch -a -d 2001-01-01 '{0}' '{0}/secret' '{0}/sub' '{0}/sub/inner'",
        canary_dir.display()
    ));
    let before = sh_ok(&format!(
        "cd '{}' && stat -c '%n %X %Y %Z %s %a %h' . secret sub sub/inner",
        canary_dir.display()
    ));

    let l0 = s.lower(0);
    let l1 = s.lower(1);
    let c = canary_dir.display();
    sh_ok(&format!(
        r#"set -e
cd '{l0}'
ln -s '{c}' abs-escape
ln -s ../../canary rel-escape
ln -s /proc/self/root proc-escape
mkdir -p redir-abs redir-dots redir-sym redir-rel
setfattr -n trusted.overlay.redirect -v '/../../canary' redir-dots
setfattr -n trusted.overlay.redirect -v '/abs-escape' redir-sym
setfattr -n trusted.overlay.redirect -v '/sub/../../canary' redir-abs
setfattr -n trusted.overlay.redirect -v '../canary' redir-rel
touch .wh... .wh.. '.wh.' '.wh.a/b' 2>/dev/null || true
mkdir d
setfattr -n trusted.overlay.opaque -v '/../../canary' d
setfattr -n user.big -v "$(head -c 3500 /dev/zero | tr '\0' x)" d
mkdir -p x
setfattr -n trusted.overlay.redirect -v "$(printf '/%.0s' $(seq 1 2000))canary" x
cd '{l1}'
mkdir -p abs-escape/in sub
echo lower1 > abs-escape/in/f
ln -s '{c}' sub/link
"#,
        l0 = l0.display(),
        l1 = l1.display(),
    ));
    {
        let m = s.mount(2, "");
        let mp = m.path("");
        // Walk and touch everything without following symlinks from the caller's side.
        let script = format!(
            r#"cd '{mp}'
ls -laR . >/dev/null 2>&1
find . -xdev >/dev/null 2>&1
for d in redir-abs redir-dots redir-sym redir-rel d x; do ls -la $d >/dev/null 2>&1; mv $d $d-moved 2>/dev/null; rmdir $d-moved 2>/dev/null; done
getfattr -d -m- -h * >/dev/null 2>&1
find . -xdev -type f -exec chmod 600 {{}} + 2>/dev/null
find . -xdev -type l -exec chown -h 1:1 {{}} + 2>/dev/null
find . -xdev -type l -exec mv {{}} {{}}.moved \; 2>/dev/null
rm -rf ./* 2>/dev/null
true"#,
            mp = mp.display()
        );
        let out = sh(&script);
        assert!(out.status.success());
        // the daemon survived
        assert!(common::is_mounted(&s.mnt()), "daemon died on hostile input");
        fs::write(m.path("alive"), "yes").unwrap();
        assert_eq!(fs::read_to_string(m.path("alive")).unwrap(), "yes");
    }
    let after = sh_ok(&format!(
        "cd '{}' && stat -c '%n %X %Y %Z %s %a %h' . secret sub sub/inner",
        canary_dir.display()
    ));
    assert_eq!(
        before, after,
        "the canary outside the layers was read or changed"
    );
    // symlinks in layers were never followed into the upper either
    let up = sh_ok(&format!("find '{}' -type f", s.upper().display()));
    assert!(!up.contains("secret") && !up.contains("inner"), "{up}");
    assert_eq!(
        fs::metadata(canary_dir.join("secret")).unwrap().nlink(),
        1,
        "canary got hard-linked"
    );
}
