//! ID mapping through a real mount: uidmapping/gidmapping (podman's leading-colon form),
//! unmapped ids shown as overflow and refused on chown, creates stored as mapped host ids,
//! xattr_permissions=2 keeping owner/mode in user.containers.override_stat, squash_to_root,
//! and podman's keep-id mapping compared with fuse-overlayfs on the same layers.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;

const FUSE_OVERLAYFS: &str = "/usr/bin/fuse-overlayfs";

#[test]
fn uid_gid_mapping_and_override_stat() {
    if !common::require_mount_privilege("uid_gid_mapping_and_override_stat") {
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(s.lower(0).join("f"), "x").unwrap();
    chown(s.lower(0).join("f"), Some(5), Some(6)).unwrap();
    fs::write(s.lower(0).join("g"), "x").unwrap();
    chown(s.lower(0).join("g"), Some(1005), Some(1006)).unwrap();
    fs::create_dir(s.lower(0).join("pub")).unwrap();
    fs::set_permissions(s.lower(0).join("pub"), fs::Permissions::from_mode(0o777)).unwrap();
    {
        // A triple is container(stored):host(shown):size, as containers/storage means it.
        let m = s.mount(1, "uidmapping=:0:1000:100,gidmapping=0:1000:100");
        let md = fs::metadata(m.path("f")).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (1005, 1006),
            "stored 5:6 shows as 1005:1006"
        );
        let md = fs::metadata(m.path("g")).unwrap();
        assert_eq!(
            (md.uid(), md.gid()),
            (65534, 65534),
            "a stored id no triple covers shows as the overflow id"
        );
        let root = fs::metadata(m.path("")).unwrap();
        assert_eq!(
            (root.uid(), root.gid()),
            (1000, 1000),
            "stored root shows as 1000"
        );
        chown(m.path("f"), Some(1007), Some(1008)).unwrap();
        let up = fs::metadata(s.upper().join("f")).unwrap();
        assert_eq!((up.uid(), up.gid()), (7, 8), "chown stores the stored ids");
        assert_eq!(fs::metadata(m.path("f")).unwrap().uid(), 1007);
        let e = chown(m.path("f"), Some(7), None).unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EINVAL),
            "a shown id no triple covers must be refused"
        );
        let e = fs::write(m.path("byroot"), "n").unwrap_err();
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EOVERFLOW),
            "real root is not mapped: its create cannot be stored"
        );
        assert!(!s.upper().join("byroot").exists(), "nothing half-made left");
        sh_ok(&format!(
            "setpriv --reuid 1003 --regid 1004 --clear-groups touch '{}'",
            m.path("pub/new").display()
        ));
        let nu = fs::metadata(s.upper().join("pub/new")).unwrap();
        assert_eq!(
            (nu.uid(), nu.gid()),
            (3, 4),
            "a create by shown 1003:1004 is stored as 3:4"
        );
        let nm = fs::metadata(m.path("pub/new")).unwrap();
        assert_eq!((nm.uid(), nm.gid()), (1003, 1004));
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
        assert_eq!((up.uid(), up.gid()), (5, 6), "real owner unchanged");
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
    {
        // The override holds stored ids: the mapping applies to it as to the inode's owner.
        let m = s.mount(
            1,
            "uidmapping=0:1000:100,gidmapping=0:1000:100,xattr_permissions=2",
        );
        let md = fs::metadata(m.path("f")).unwrap();
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (1033, 1044, 0o640)
        );
        chown(m.path("f"), Some(1050), Some(1051)).unwrap();
        let v = sh(&format!(
            "getfattr -n user.containers.override_stat --only-values '{}'",
            s.upper().join("f").display()
        ));
        assert_eq!(String::from_utf8_lossy(&v.stdout), "50:51:640:file");
        let e = chown(m.path("f"), Some(50), None).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    }
    let m = s.mount_ro(1, "squash_to_root");
    let md = fs::metadata(m.path("f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0));
}

/// Owners and modes of the given entries, one `name uid:gid mode type` line each.
fn stat_lines(dir: &Path, names: &str) -> String {
    sh_ok(&format!(
        "cd '{}' && stat -c '%n %u:%g %a %F' {names}",
        dir.display()
    ))
}

/// podman's `--userns=keep-id` mapping (compat.md's shape: a leading colon, several triples)
/// on layerfs and on fuse-overlayfs over the same lower layer: every owner shown through
/// both mounts is the same, and chown/create through both store the same ids in the uppers.
#[test]
fn keep_id_mapping_matches_fuse_overlayfs() {
    if !common::require_mount_privilege("keep_id_mapping_matches_fuse_overlayfs") {
        return;
    }
    if !Path::new(FUSE_OVERLAYFS).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install fuse-overlayfs"
        );
        eprintln!("SKIP keep_id_mapping_matches_fuse_overlayfs: no {FUSE_OVERLAYFS}");
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l = s.lower(0);
    sh_ok(&format!(
        "cd '{}' && mkdir dir pub && chmod 777 pub && mkfifo fifo && ln -s f0 sym && \
         for id in 0 1 999 1000 1001 1002 65536 65537 70000; do touch f$id; chown $id:$id f$id; done && \
         touch mixed && chown 5:1001 mixed && chown 1001:1001 dir && chown -h 1001:0 sym",
        l.display()
    ));
    let map = ":0:1:1001:1001:0:1:1002:1002:64535";
    let opts = format!("uidmapping={map},gidmapping={map}");
    let (u2, w2, m2) = (
        s.path().join("u2"),
        s.path().join("w2"),
        s.path().join("m2"),
    );
    for d in [&u2, &w2, &m2] {
        fs::create_dir(d).unwrap();
    }
    let ours = s.mount(1, &opts);
    let out = std::process::Command::new(FUSE_OVERLAYFS)
        .arg("-o")
        .arg(format!(
            "{},{opts},allow_other",
            common::layer_opts(std::slice::from_ref(&l), Some(&u2), Some(&w2))
        ))
        .arg(&m2)
        .output()
        .unwrap();
    assert!(out.status.success(), "fuse-overlayfs: {out:?}");
    let theirs = common::Mount {
        mnt: m2.clone(),
        kernel: false,
    };
    let all = ". *";
    let shown = stat_lines(&ours.mnt, all);
    assert_eq!(shown, stat_lines(&theirs.mnt, all), "owners shown");
    // Spot checks of the direction (stored -> shown).
    for want in [
        "f0 1:1 ",
        "f1000 1001:1001 ",
        "f1001 0:0 ",
        "f1002 1002:1002 ",
        "f65536 65536:65536 ",
        "f65537 65534:65534 ",
        "mixed 6:0 ",
        "sym 0:1 ",
    ] {
        assert!(shown.contains(want), "missing {want:?} in\n{shown}");
    }
    let ops = "chown 0:0 f1 && chown 1:1 f0 && chown -h 1:0 sym && \
               mkdir newdir && touch newfile && ln -s x newsym && \
               setpriv --reuid 1 --regid 1 --clear-groups touch pub/byone && \
               setpriv --reuid 1002 --regid 0 --clear-groups mkdir pub/by1002 && \
               setpriv --reuid 0 --regid 1001 --clear-groups mkfifo pub/fifo";
    for m in [&ours.mnt, &theirs.mnt] {
        sh_ok(&format!("cd '{}' && {ops}", m.display()));
    }
    let all = ". * pub/*";
    assert_eq!(
        stat_lines(&ours.mnt, all),
        stat_lines(&theirs.mnt, all),
        "owners shown after chown/create"
    );
    let stored = "f0 f1 sym newdir newfile newsym pub pub/*";
    let ours_up = stat_lines(&s.upper(), stored);
    assert_eq!(ours_up, stat_lines(&u2, stored), "ids stored in the uppers");
    for want in [
        "f0 0:0 ",
        "f1 1001:1001 ",
        "newfile 1001:1001 ",
        "pub/byone 0:0 ",
        "pub/by1002 1002:1001 ",
        "pub/fifo 1001:1000 ",
    ] {
        assert!(ours_up.contains(want), "missing {want:?} in\n{ours_up}");
    }
    // Unmapped shown ids: layerfs refuses (EINVAL, like the kernel's idmapped mounts) where
    // fuse-overlayfs stores its overflow id.
    let e = chown(ours.path("f0"), Some(70000), None).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    // fuse-overlayfs 1.10 fails chown of a lower FIFO with EIO (compat.md); layerfs only.
    sh_ok(&format!("chown 1002:0 '{}'", ours.path("fifo").display()));
    let up = fs::symlink_metadata(s.upper().join("fifo")).unwrap();
    assert_eq!((up.uid(), up.gid()), (1002, 1001));
}

/// The kernel asks for attributes with the open file's handle after a write invalidated
/// them (e.g. lseek(SEEK_END)); that answer must show mapped owners and the override_stat
/// owner/mode too, or the kernel caches the stored ones and stat shows them afterwards.
#[test]
fn attributes_by_open_handle_are_mapped() {
    if !common::require_mount_privilege("attributes_by_open_handle_are_mapped") {
        return;
    }
    use std::io::{Seek, SeekFrom, Write};
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    for n in ["f", "g"] {
        fs::write(s.lower(0).join(n), "x").unwrap();
        chown(s.lower(0).join(n), Some(5), Some(6)).unwrap();
    }
    sh_ok(&format!(
        "setfattr -n user.containers.override_stat -v 33:44:0640:file '{}'",
        s.lower(0).join("g").display()
    ));
    // (Whether the write is passed through or not, it invalidates the cached size, so
    // the lseek asks the daemon, with the handle; that answer is what is checked.)
    let m = s.mount(
        1,
        "uidmapping=0:1000:100,gidmapping=0:1000:100,xattr_permissions=2",
    );
    for (n, want) in [("f", (1005, 1006, 0o644)), ("g", (1033, 1044, 0o640))] {
        let before = fs::metadata(m.path(n)).unwrap();
        assert_eq!(
            (before.uid(), before.gid()),
            (want.0, want.1),
            "{n} before the write"
        );
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path(n))
            .unwrap();
        f.write_all(b"more").unwrap();
        assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), 4, "{n} size by SEEK_END");
        let by_fd = f.metadata().unwrap();
        drop(f);
        let md = fs::metadata(m.path(n)).unwrap();
        for (what, md) in [("fstat", &by_fd), ("stat", &md)] {
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777, md.len()),
                (want.0, want.1, want.2, 4),
                "{n}: {what} after write + lseek(SEEK_END)"
            );
        }
    }
}
