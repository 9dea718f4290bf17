//! A full upper (a small tmpfs): writes and copy-ups fail with ENOSPC, nothing half-made is
//! left in the upper or the staging area, and the mount works again once space is freed.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::io::Write;

#[test]
fn enospc_on_upper_is_clean_and_recoverable() {
    if !common::require_mount_privilege("enospc_on_upper_is_clean_and_recoverable") {
        return;
    }
    let s = Scratch::new();
    let small = s.path().join("small");
    fs::create_dir(&small).unwrap();
    sh_ok(&format!(
        "mount -t tmpfs -o size=4m tmpfs '{}'",
        small.display()
    ));
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            common::unmount(&self.0);
        }
    }
    let _g = Umount(small.clone());
    let (upper, work) = (small.join("upper"), small.join("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    sh_ok(&format!(
        "head -c 3M /dev/urandom > '{}/big'",
        s.lower(0).display()
    ));
    sh_ok(&format!(
        "head -c 2M /dev/urandom > '{}/big2'",
        s.lower(0).display()
    ));
    let lowers = vec![s.lower(0)];
    let m = common::mount_layerfs(&lowers, Some(&upper), Some(&work), &s.mnt(), "");
    // fill the upper
    let mut f = fs::File::create(m.path("filler")).unwrap();
    let chunk = vec![7u8; 64 << 10];
    let err = loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.sync_all()) {
            break e;
        }
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    drop(f);
    // copy-up of a lower file now fails cleanly
    let e = sh(&format!("chmod 600 '{}'", m.path("big").display()));
    assert!(!e.status.success(), "copy-up into a full upper must fail");
    assert!(
        String::from_utf8_lossy(&e.stderr).contains("No space left"),
        "{}",
        String::from_utf8_lossy(&e.stderr)
    );
    assert!(
        fs::symlink_metadata(upper.join("big")).is_err(),
        "partial copy-up left in upper"
    );
    assert_eq!(
        fs::read_dir(work.join("work")).unwrap().count(),
        0,
        "staging leftovers"
    );
    assert_eq!(
        fs::metadata(m.path("big")).unwrap().len(),
        3 << 20,
        "lower still visible"
    );
    // free space: everything works again
    fs::remove_file(m.path("filler")).unwrap();
    sh_ok(&format!(
        "chmod 600 '{0}' && echo more >> '{0}'",
        m.path("big").display()
    ));
    assert_eq!(fs::metadata(m.path("big")).unwrap().len(), (3 << 20) + 5);
    fs::write(m.path("after"), "ok").unwrap();
    assert_eq!(fs::read_to_string(m.path("after")).unwrap(), "ok");
}
