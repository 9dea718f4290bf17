//! ID mapping through a real mount: uidmapping/gidmapping (podman's leading-colon form),
//! unmapped ids shown as overflow and refused on chown, creates stored as mapped host ids,
//! xattr_permissions=2 keeping owner/mode in user.containers.override_stat, squash_to_root.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};

#[test]
fn uid_gid_mapping_and_override_stat() {
    if !common::require_mount_privilege("uid_gid_mapping_and_override_stat") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("f"), "x").unwrap();
    chown(s.lower(0).join("f"), Some(1005), Some(1006)).unwrap();
    {
        let m = s.mount(1, "uidmapping=:0:1000:100,gidmapping=0:1000:100");
        let md = fs::metadata(m.path("f")).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (5, 6),
            "host 1005:1006 shows as container 5:6"
        );
        let root = fs::metadata(m.path("")).unwrap();
        assert_eq!(root.uid(), 65534, "unmapped owner shows as the overflow id");
        chown(m.path("f"), Some(7), Some(8)).unwrap();
        let up = fs::metadata(s.upper().join("f")).unwrap();
        assert_eq!((up.uid(), up.gid()), (1007, 1008), "chown stores host ids");
        let e = chown(m.path("f"), Some(500), None).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "unmapped id must be refused"
        );
        fs::write(m.path("new"), "n").unwrap();
        let nu = fs::metadata(s.upper().join("new")).unwrap();
        assert_eq!(
            (nu.uid(), nu.gid()),
            (1000, 1000),
            "root's create stored as host 1000"
        );
        assert_eq!(fs::metadata(m.path("new")).unwrap().uid(), 0);
    }
    sh_ok(&format!(
        "rm -rf '{0}'/* '{1}'/*",
        s.upper().display(),
        s.work().display()
    ));
    {
        let m = s.mount(1, "xattr_permissions=2");
        chown(m.path("f"), Some(33), Some(44)).unwrap();
        fs::set_permissions(m.path("f"), fs::Permissions::from_mode(0o640)).unwrap();
        let md = fs::metadata(m.path("f")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (33, 44, 0o640));
        let up = fs::metadata(s.upper().join("f")).unwrap();
        assert_eq!((up.uid(), up.gid()), (1005, 1006), "real owner unchanged");
        let v = sh(&format!(
            "getfattr -n user.containers.override_stat --only-values '{}'",
            s.upper().join("f").display()
        ));
        assert_eq!(String::from_utf8_lossy(&v.stdout), "33:44:640:file");
        let l = sh_ok(&format!("getfattr -d -m- '{}'", m.path("f").display()));
        assert!(
            !l.contains("override"),
            "override xattr must stay private: {l}"
        );
    }
    let m = s.mount(1, "xattr_permissions=2");
    let md = fs::metadata(m.path("f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777),
        (33, 44, 0o640),
        "after remount"
    );
    drop(m);
    let m = s.mount_ro(1, "squash_to_root");
    let md = fs::metadata(m.path("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}
