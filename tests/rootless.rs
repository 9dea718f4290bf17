//! layerfs as root inside a user namespace (`unshare -Urm`), as rootless podman runs it:
//! the union works, and metadata falls back to the unprivileged formats (user.* xattrs).

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

fn userns_available() -> bool {
    sh("unshare -Urm true").status.success()
}

#[test]
fn rootless_union_in_user_namespace() {
    if !common::require_mount_privilege("rootless_union_in_user_namespace") {
        return;
    }
    if !userns_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must allow unshare -Urm"
        );
        eprintln!("SKIP rootless_union_in_user_namespace: unshare -Urm not permitted");
        return;
    }
    let s = Scratch::new();
    fs::set_permissions(s.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let l0 = s.lower(0);
    fs::create_dir_all(l0.join("d/sub")).unwrap();
    fs::write(l0.join("d/sub/x"), "x").unwrap();
    fs::write(l0.join("f"), "lower\n").unwrap();
    fs::create_dir_all(l0.join("ren/inner")).unwrap();
    fs::write(l0.join("ren/inner/y"), "y").unwrap();
    sh_ok(&format!(
        "mkfifo '{0}/fifo' && ln -s f '{0}/sym'",
        l0.display()
    ));
    let script = format!(
        r#"set -e
L={bin}
$L -o lowerdir={l0},upperdir={u},workdir={w} {m}
cd {m}
echo more >> f
rm -rf d && mkdir d
test -z "$(ls -A d)"
mv ren ren2
test "$(cat ren2/inner/y)" = y
test ! -e ren
# copy-up of special files and symlinks: user.* xattrs (the origin) are refused on them
chmod 600 fifo
chown -h 0:0 sym
test "$(stat -c %a:%F fifo)" = "600:fifo"
test "$(readlink sym)" = f
cd /
umount {m}
$L -o lowerdir={l0},upperdir={u},workdir={w} {m}
test -z "$(ls -A {m}/d)"
test "$(cat {m}/f)" = "lower
more"
test "$(cat {m}/ren2/inner/y)" = y
test "$(stat -c %a:%F {m}/fifo)" = "600:fifo"
test "$(readlink {m}/sym)" = f
umount {m}
"#,
        bin = common::LAYERFS,
        l0 = l0.display(),
        u = s.upper().display(),
        w = s.work().display(),
        m = s.mnt().display()
    );
    let out = sh(&format!(
        "unshare -Urm bash -c '{}'",
        script.replace('\'', "'\\''")
    ));
    assert!(
        out.status.success(),
        "rootless scenario failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Each fallback is said once per mount (two mounts above), before going to the
    // background, so the caller's stderr has it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    for msg in [
        "trusted.* xattrs not writable",
        "running in a user namespace: no FUSE passthrough",
    ] {
        assert_eq!(stderr.matches(msg).count(), 2, "{msg:?} in {stderr}");
    }
    // Unprivileged formats: no trusted.* xattrs could be written inside the namespace.
    let opaque = sh(&format!(
        "getfattr -n user.overlay.opaque --only-values {}",
        s.upper().join("d").display()
    ));
    assert_eq!(
        String::from_utf8_lossy(&opaque.stdout),
        "y",
        "opaque dir must carry user.overlay.opaque=y"
    );
    let fo = sh(&format!(
        "getfattr -n user.fuseoverlayfs.opaque --only-values {}",
        s.upper().join("d").display()
    ));
    assert_eq!(String::from_utf8_lossy(&fo.stdout), "y");
    let redirect = sh(&format!(
        "getfattr -n user.overlay.redirect --only-values {}",
        s.upper().join("ren2").display()
    ));
    assert_eq!(String::from_utf8_lossy(&redirect.stdout), "/ren");
    let trusted = sh(&format!(
        "getfattr -d -m trusted. {}",
        s.upper().join("d").display()
    ));
    assert!(String::from_utf8_lossy(&trusted.stdout).trim().is_empty());
    // whiteouts: char 0/0 works in a user namespace (kernel >= 5.8)
    let wh = fs::symlink_metadata(s.upper().join("ren")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
}
