//! Real layerfs mounts: the fuse-overlayfs bugs listed in shared/reference/compat.md as
//! regression tests, and the core union rules, each also checked after a remount.

mod common;

use common::{sh, sh_ok, Scratch};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

fn is_char_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

#[test]
fn regression_rm_rf_then_mkdir_does_not_resurrect() {
    if !common::require_mount_privilege("regression_rm_rf_then_mkdir_does_not_resurrect") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(0).join("d/sub")).unwrap();
    fs::write(s.lower(0).join("d/inner"), "old").unwrap();
    fs::write(s.lower(0).join("d/sub/deep"), "old").unwrap();
    {
        let m = s.mount(1, "");
        let d = m.path("d");
        fs::remove_dir_all(&d).unwrap();
        fs::create_dir(&d).unwrap();
        assert_eq!(
            fs::read_dir(&d).unwrap().count(),
            0,
            "new dir must be empty"
        );
        assert!(
            fs::symlink_metadata(d.join("inner")).is_err(),
            "deleted lower entry reappeared"
        );
        assert!(fs::symlink_metadata(d.join("sub/deep")).is_err());
    }
    let m = s.mount(1, "");
    assert_eq!(
        fs::read_dir(m.path("d")).unwrap().count(),
        0,
        "resurrected after remount"
    );
    assert!(fs::symlink_metadata(m.path("d/inner")).is_err());
}

#[test]
fn regression_lower_hard_links_share_data_and_ino() {
    if !common::require_mount_privilege("regression_lower_hard_links_share_data_and_ino") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("b"), "one\n").unwrap();
    fs::hard_link(s.lower(0).join("b"), s.lower(0).join("b-hl")).unwrap();
    {
        let m = s.mount(1, "");
        let (b, hl) = (m.path("b"), m.path("b-hl"));
        let (mb, mh) = (fs::metadata(&b).unwrap(), fs::metadata(&hl).unwrap());
        assert_eq!(mb.ino(), mh.ino(), "hard links must share st_ino");
        assert_eq!(mb.nlink(), 2);
        sh_ok(&format!("echo two >> '{}'", b.display()));
        assert_eq!(
            fs::read_to_string(&hl).unwrap(),
            "one\ntwo\n",
            "write through b not visible via b-hl"
        );
        assert_eq!(fs::metadata(&hl).unwrap().nlink(), 2);
    }
    let m = s.mount(1, "");
    assert_eq!(
        fs::read_to_string(m.path("b")).unwrap(),
        "one\ntwo\n",
        "b lost data after remount"
    );
    assert_eq!(
        fs::read_to_string(m.path("b-hl")).unwrap(),
        "one\ntwo\n",
        "b-hl lost data after remount"
    );
    assert_eq!(
        fs::metadata(m.path("b")).unwrap().ino(),
        fs::metadata(m.path("b-hl")).unwrap().ino()
    );
    assert_eq!(
        fs::read_to_string(s.lower(0).join("b")).unwrap(),
        "one\n",
        "lower layer was modified"
    );
}

#[test]
fn regression_chmod_of_lower_fifo_and_device_keeps_type() {
    if !common::require_mount_privilege("regression_chmod_of_lower_fifo_and_device_keeps_type") {
        return;
    }
    let s = Scratch::new();
    let l = s.lower(0);
    sh_ok(&format!(
        "mkfifo '{0}/fifo' && mknod '{0}/null' c 1 3 && mkfifo '{0}/f2'",
        l.display()
    ));
    let m = s.mount(1, "");
    for (name, is_fifo) in [("fifo", true), ("null", false)] {
        let p = m.path(name);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("chmod {name}: {e}"));
        let md = fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        if is_fifo {
            assert!(md.file_type().is_fifo(), "{name} is no longer a fifo");
        } else {
            assert!(
                md.file_type().is_char_device(),
                "{name} is no longer a char device"
            );
            assert_eq!(
                md.rdev(),
                fs::symlink_metadata(l.join(name)).unwrap().rdev()
            );
        }
        let up = fs::symlink_metadata(s.upper().join(name)).unwrap();
        assert_eq!(
            up.file_type().is_fifo(),
            is_fifo,
            "upper copy of {name} has the wrong type"
        );
    }
}

#[test]
fn regression_unlink_and_trunc_copy_no_data() {
    if !common::require_mount_privilege("regression_unlink_and_trunc_copy_no_data") {
        return;
    }
    let s = Scratch::new();
    let l = s.lower(0);
    sh_ok(&format!(
        "head -c 64M /dev/urandom > '{0}/big' && head -c 64M /dev/urandom > '{0}/trunc'",
        l.display()
    ));
    let m = s.mount(1, "");
    fs::remove_file(m.path("big")).unwrap();
    assert!(
        is_char_whiteout(&s.upper().join("big")),
        "unlink must leave a whiteout, not a copy"
    );
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("trunc"))
        .unwrap();
    let up = fs::metadata(s.upper().join("trunc")).unwrap();
    assert_eq!(up.len(), 0);
    // (one block may hold the copy's xattrs: layerfs's origin and the kernel's)
    assert!(
        up.blocks() <= 8,
        "O_TRUNC copied data blocks: {}",
        up.blocks()
    );
}

#[test]
fn regression_sparse_chmod_keeps_holes() {
    if !common::require_mount_privilege("regression_sparse_chmod_keeps_holes") {
        return;
    }
    let s = Scratch::new();
    let f = s.lower(0).join("sparse");
    sh_ok(&format!(
        "truncate -s 1G '{0}' && printf data | dd of='{0}' bs=1 seek=512M conv=notrunc status=none",
        f.display()
    ));
    let m = s.mount(1, "");
    fs::set_permissions(m.path("sparse"), fs::Permissions::from_mode(0o600)).unwrap();
    let up = fs::metadata(s.upper().join("sparse")).unwrap();
    assert_eq!(up.len(), 1 << 30);
    assert!(
        up.blocks() < 1024,
        "copy-up filled holes: {} blocks",
        up.blocks()
    );
    let out = sh_ok(&format!(
        "dd if='{}' bs=1 skip=512M count=4 status=none",
        m.path("sparse").display()
    ));
    assert_eq!(out, "data");
}

#[test]
fn regression_rename_lower_and_merged_directory() {
    if !common::require_mount_privilege("regression_rename_lower_and_merged_directory") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(1).join("m/deep")).unwrap();
    fs::write(s.lower(1).join("m/deep/f"), "bottom").unwrap();
    fs::create_dir_all(s.lower(0).join("m")).unwrap();
    fs::write(s.lower(0).join("m/top"), "top").unwrap();
    fs::create_dir_all(s.lower(1).join("plain")).unwrap();
    fs::write(s.lower(1).join("plain/x"), "x").unwrap();
    fs::create_dir(s.lower(0).join("target")).unwrap();
    {
        let m = s.mount(2, "");
        fs::rename(m.path("m"), m.path("target/moved")).expect("rename of merged dir");
        fs::rename(m.path("plain"), m.path("plain2")).expect("rename of lower dir");
        assert_eq!(
            fs::read_to_string(m.path("target/moved/deep/f")).unwrap(),
            "bottom"
        );
        assert_eq!(
            fs::read_to_string(m.path("target/moved/top")).unwrap(),
            "top"
        );
        assert_eq!(fs::read_to_string(m.path("plain2/x")).unwrap(), "x");
        assert!(fs::symlink_metadata(m.path("m")).is_err());
        assert!(fs::symlink_metadata(m.path("plain")).is_err());
    }
    assert!(is_char_whiteout(&s.upper().join("m")));
    // The kernel overlay reads the same upper (redirect_dir=on) and shows the same tree.
    let kwork = s.path().join("kwork");
    fs::create_dir(&kwork).unwrap();
    let lowers = vec![s.lower(0), s.lower(1)];
    let k = common::mount_kernel_overlay(
        &lowers,
        Some(&s.upper()),
        Some(&kwork),
        &s.mnt(),
        "redirect_dir=on,index=off",
    );
    assert_eq!(
        fs::read_to_string(k.path("target/moved/deep/f")).unwrap(),
        "bottom"
    );
    assert_eq!(
        fs::read_to_string(k.path("target/moved/top")).unwrap(),
        "top"
    );
    assert_eq!(fs::read_to_string(k.path("plain2/x")).unwrap(), "x");
    assert!(fs::symlink_metadata(k.path("m")).is_err());
    drop(k);
    let m = s.mount(2, "");
    assert_eq!(
        fs::read_to_string(m.path("target/moved/deep/f")).unwrap(),
        "bottom"
    );
}

#[test]
fn regression_large_directory_lists_and_removes_completely() {
    if !common::require_mount_privilege("regression_large_directory_lists_and_removes_completely") {
        return;
    }
    let s = Scratch::new();
    let d0 = s.lower(0).join("big");
    let d1 = s.lower(1).join("big");
    fs::create_dir(&d0).unwrap();
    fs::create_dir(&d1).unwrap();
    for i in 0..100_000u32 {
        let d = if i % 4 == 0 { &d0 } else { &d1 };
        fs::File::create(d.join(format!("f{i}"))).unwrap();
    }
    let m = s.mount(2, "");
    let mut names: Vec<_> = fs::read_dir(m.path("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 100_000);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 100_000, "duplicates in readdir");
    let out = sh(&format!("rm -rf '{}'", m.path("big").display()));
    assert!(
        out.status.success(),
        "rm -rf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(fs::symlink_metadata(m.path("big")).is_err());
}

/// (d_ino, name) of every entry readdir(3) gives, `.` and `..` included (`ls -i` may
/// stat `..` instead of showing its d_ino).
fn raw_listing(dir: &Path) -> Vec<(u64, String)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    let d = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!d.is_null(), "opendir {}", dir.display());
    let mut out = Vec::new();
    loop {
        let e = unsafe { libc::readdir64(d) };
        if e.is_null() {
            break;
        }
        let e = unsafe { &*e };
        let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) };
        out.push((e.d_ino, name.to_string_lossy().into_owned()));
    }
    unsafe { libc::closedir(d) };
    out
}

fn dotdot_ino(dir: &Path) -> u64 {
    raw_listing(dir)
        .into_iter()
        .find(|(_, n)| n == "..")
        .expect("`..` listed")
        .0
}

/// The kernel caches every listing (directories are opened without OPENDIR): what it
/// cached must follow creates, removes and renames made through the mount, and a moved
/// directory's `..`.
#[test]
fn cached_listings_follow_changes_and_directory_moves() {
    if !common::require_mount_privilege("cached_listings_follow_changes_and_directory_moves") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(1).join("a/x")).unwrap();
    fs::write(s.lower(1).join("a/x/low"), "1").unwrap();
    fs::create_dir_all(s.lower(0).join("a/x")).unwrap();
    fs::write(s.lower(0).join("a/x/top"), "2").unwrap();
    fs::create_dir_all(s.lower(0).join("b")).unwrap();
    let m = s.mount(2, "");
    let names = |rel: &str| {
        let mut v: Vec<String> = raw_listing(&m.path(rel))
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v
    };
    let ino = |rel: &str| fs::symlink_metadata(m.path(rel)).unwrap().ino();
    for _ in 0..2 {
        assert_eq!(names("a/x"), ["low", "top"]);
        assert_eq!(dotdot_ino(&m.path("a/x")), ino("a"));
    }
    fs::write(m.path("a/x/new"), "3").unwrap();
    fs::remove_file(m.path("a/x/low")).unwrap();
    fs::rename(m.path("a/x/top"), m.path("a/x/top2")).unwrap();
    assert_eq!(names("a/x"), ["new", "top2"]);
    let x_ino = ino("a/x");
    fs::rename(m.path("a/x"), m.path("b/x")).unwrap();
    assert_eq!(ino("b/x"), x_ino);
    assert_eq!(
        dotdot_ino(&m.path("b/x")),
        ino("b"),
        "moved directory lists its old parent as `..`"
    );
    assert_eq!(names("b/x"), ["new", "top2"]);
    assert_eq!(names("a"), Vec::<String>::new());
    // Listed again from the cache, and after the move back.
    fs::rename(m.path("b/x"), m.path("a/y")).unwrap();
    assert_eq!(dotdot_ino(&m.path("a/y")), ino("a"));
    assert_eq!(dotdot_ino(&m.path("a/y")), ino("a"));
    assert_eq!(names("a/y"), ["new", "top2"]);
}

/// Concurrent streams of one merged directory share the daemon's snapshot: none lists a
/// name twice or misses one that exists throughout, while names are removed and
/// re-listed between and during the reads.
#[test]
fn concurrent_listings_of_a_changing_directory() {
    if !common::require_mount_privilege("concurrent_listings_of_a_changing_directory") {
        return;
    }
    let s = Scratch::new();
    for (l, range) in [(0, 0..1500u32), (1, 1000..3000u32)] {
        let d = s.lower(l).join("d");
        fs::create_dir_all(&d).unwrap();
        for i in range {
            fs::write(d.join(format!("f{i:05}")), "").unwrap();
        }
    }
    let m = s.mount(2, "");
    let dir = m.path("d");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let readers: Vec<_> = (0..2)
            .map(|_| {
                sc.spawn(|| {
                    let mut rounds = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 3 {
                        let mut v: Vec<String> = fs::read_dir(&dir)
                            .unwrap()
                            .map(|e| e.unwrap().file_name().into_string().unwrap())
                            .collect();
                        let n = v.len();
                        v.sort();
                        v.dedup();
                        assert_eq!(v.len(), n, "a name listed twice");
                        // f02000.. are never removed
                        for i in 2000..3000u32 {
                            assert!(
                                v.binary_search(&format!("f{i:05}")).is_ok(),
                                "f{i:05} missing"
                            );
                        }
                        rounds += 1;
                    }
                })
            })
            .collect();
        for i in (0..2000u32).step_by(10) {
            fs::remove_file(dir.join(format!("f{i:05}"))).unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
    });
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 3000 - 200);
}

#[test]
fn readdir_ino_matches_stat_and_is_stable() {
    if !common::require_mount_privilege("readdir_ino_matches_stat_and_is_stable") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(1).join("d")).unwrap();
    fs::write(s.lower(1).join("d/low"), "1").unwrap();
    fs::create_dir_all(s.lower(0).join("d")).unwrap();
    fs::write(s.lower(0).join("d/top"), "2").unwrap();
    let before;
    {
        let m = s.mount(2, "");
        sh_ok(&format!("echo new > '{}'", m.path("d/new").display()));
        fs::set_permissions(m.path("d/low"), fs::Permissions::from_mode(0o600)).unwrap();
        let check = |dir: &Path| {
            let mut v = Vec::new();
            for e in fs::read_dir(dir).unwrap() {
                let e = e.unwrap();
                use std::os::unix::fs::DirEntryExt;
                let st = fs::symlink_metadata(e.path()).unwrap();
                assert_eq!(e.ino(), st.ino(), "d_ino != st_ino for {:?}", e.file_name());
                v.push((e.file_name(), st.ino()));
            }
            v.sort();
            v
        };
        before = check(&m.path("d"));
        sh_ok("sync; echo 2 > /proc/sys/vm/drop_caches");
        assert_eq!(
            check(&m.path("d")),
            before,
            "st_ino changed after cache eviction"
        );
    }
    let m = s.mount(2, "");
    let mut after: Vec<_> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), fs::symlink_metadata(e.path()).unwrap().ino())
        })
        .collect();
    after.sort();
    assert_eq!(after, before, "st_ino changed across remount");
}

/// Whiteouts are hard links of one char 0/0 inode (as the kernel overlay makes them),
/// and one made after the previous whiteout's name got a new file is still a whiteout,
/// not a link of that file.
#[test]
fn whiteouts_share_one_inode_and_never_link_a_file() {
    if !common::require_mount_privilege("whiteouts_share_one_inode_and_never_link_a_file") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(0).join("d/sub")).unwrap();
    for n in ["a", "b", "c", "sub/x"] {
        fs::write(s.lower(0).join("d").join(n), n).unwrap();
    }
    {
        let m = s.mount(1, "");
        fs::remove_file(m.path("d/a")).unwrap();
        fs::remove_file(m.path("d/b")).unwrap();
        let (wa, wb) = (s.upper().join("d/a"), s.upper().join("d/b"));
        assert!(is_char_whiteout(&wa) && is_char_whiteout(&wb));
        assert_eq!(
            fs::symlink_metadata(&wa).unwrap().ino(),
            fs::symlink_metadata(&wb).unwrap().ino(),
            "whiteouts not shared"
        );
        // The names that held whiteouts get files; the next whiteouts stay whiteouts.
        fs::write(m.path("d/b"), "new b").unwrap();
        fs::write(m.path("d/a"), "new a").unwrap();
        fs::remove_file(m.path("d/c")).unwrap();
        fs::remove_dir_all(m.path("d/sub")).unwrap();
        for n in ["c", "sub"] {
            assert!(is_char_whiteout(&s.upper().join("d").join(n)), "{n}");
        }
        assert_eq!(fs::read_to_string(m.path("d/a")).unwrap(), "new a");
        assert_eq!(fs::read_to_string(m.path("d/b")).unwrap(), "new b");
        assert_eq!(fs::metadata(m.path("d/a")).unwrap().nlink(), 1);
        assert!(fs::symlink_metadata(m.path("d/c")).is_err());
    }
    let m = s.mount(1, "");
    let mut names: Vec<_> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(fs::read_to_string(m.path("d/a")).unwrap(), "new a");
}

#[test]
fn whiteouts_opaque_and_hidden_names() {
    if !common::require_mount_privilege("whiteouts_opaque_and_hidden_names") {
        return;
    }
    let s = Scratch::new();
    let (l0, l1) = (s.lower(0), s.lower(1));
    for d in ["a", "b", "c", "e"] {
        fs::create_dir_all(l1.join(d)).unwrap();
        fs::write(l1.join(d).join("below"), "x").unwrap();
        fs::create_dir_all(l0.join(d)).unwrap();
    }
    fs::write(l1.join("gone1"), "x").unwrap();
    fs::create_dir_all(l1.join("w")).unwrap();
    fs::write(l1.join("w/only"), "x").unwrap();
    fs::write(l1.join("gone2"), "x").unwrap();
    sh_ok(&format!(
        "mknod '{0}/gone1' c 0 0 && touch '{0}/.wh.gone2' && setfattr -n trusted.overlay.opaque -v y '{0}/a' && \
         setfattr -n user.overlay.opaque -v y '{0}/b' && setfattr -n user.fuseoverlayfs.opaque -v y '{0}/c' && touch '{0}/e/.wh..wh..opq'",
        l0.display()
    ));
    let m = s.mount(2, "");
    let root: Vec<String> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        !root
            .iter()
            .any(|n| n.starts_with(".wh.") || n == "gone1" || n == "gone2"),
        "{root:?}"
    );
    for d in ["a", "b", "c", "e"] {
        assert_eq!(
            fs::read_dir(m.path(d)).unwrap().count(),
            0,
            "{d} should be opaque"
        );
    }
    assert!(
        fs::File::create(m.path(".wh.x")).is_err(),
        ".wh. names must not be creatable"
    );
    // unlink of an upper-only file leaves nothing; of a lower one a whiteout
    fs::write(m.path("fresh"), "x").unwrap();
    fs::remove_file(m.path("fresh")).unwrap();
    assert!(fs::symlink_metadata(s.upper().join("fresh")).is_err());
    // rmdir is judged on the union view: whiteouts do not count
    fs::create_dir_all(m.path("r")).unwrap();
    fs::write(m.path("r/x"), "x").unwrap();
    assert_eq!(
        fs::remove_dir(m.path("r")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(m.path("r/x")).unwrap();
    fs::remove_dir(m.path("r")).unwrap();
    // a lower directory whose entries were all deleted through the mount is empty
    assert_eq!(
        fs::remove_dir(m.path("w")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_file(m.path("w/only")).unwrap();
    fs::remove_dir(m.path("w")).expect("rmdir of a union-empty lower dir");
    assert!(fs::symlink_metadata(m.path("w")).is_err());
    let below = m.path("c");
    assert_eq!(fs::read_dir(&below).unwrap().count(), 0);
    fs::remove_dir(&below).expect("opaque dir with hidden lower content is empty");
}

#[test]
fn read_only_mount_refuses_writes() {
    if !common::require_mount_privilege("read_only_mount_refuses_writes") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("f"), "x").unwrap();
    fs::write(s.lower(1).join("g"), "y").unwrap();
    let m = s.mount_ro(2, "");
    assert_eq!(fs::read_to_string(m.path("g")).unwrap(), "y");
    for r in [
        fs::write(m.path("new"), "x").map(drop),
        fs::remove_file(m.path("f")),
        fs::OpenOptions::new()
            .append(true)
            .open(m.path("f"))
            .map(drop),
    ] {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS));
    }
}

/// An fd opened read-only on a lower file before a copy-up reads the upper copy after it
/// (the kernel overlay >= 4.19): through the page cache, through the daemon once the
/// cached pages are dropped, by fstat, and through a mapping made after the copy-up.
/// That is layerfs's behaviour by default (`passthrough=upper`), with `passthrough=off` and
/// without passthrough (as in a user namespace); `passthrough=all`:
/// lower_passthrough_across_copy_up.
#[test]
fn fd_opened_before_copy_up_reads_the_copy() {
    if !common::require_mount_privilege("fd_opened_before_copy_up_reads_the_copy") {
        return;
    }
    for opts in ["", "passthrough=upper", "passthrough=off", "noopen"] {
        eprintln!("fd_opened_before_copy_up_reads_the_copy: {opts}");
        old_fd_reads_the_copy(opts);
    }
}

/// The daemon's count of FUSE requests of type `what` (SIGUSR1 counters in `log`).
fn request_count(pid: i32, log: &Path, what: &str) -> u64 {
    let before = fs::read_to_string(log)
        .unwrap_or_default()
        .matches("counters:")
        .count();
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let t = fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = t.lines().filter(|l| l.contains("counters:")).nth(before) {
            break l.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no counters: {t}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{what}=")))
        .map_or(0, |v| v.parse().unwrap())
}

/// `passthrough=all` (opt-in; as root): a read-only open of a lower file is passed
/// through to the lower file (its reads never reach the daemon). It keeps reading the
/// lower file after a copy-up (the kernel overlay before 4.19). While it is open the kernel
/// binds the inode to the lower file: a copy-up by path (truncate) still works, a new
/// read-only open reads the copy (through the daemon), an open for writing waits for it to
/// be closed, and gets ETXTBSY (never EIO) if it is not closed within 2 s. Once it is
/// closed, writes work and new opens are passed through to the copy.
#[test]
fn lower_passthrough_across_copy_up() {
    if !common::require_mount_privilege("lower_passthrough_across_copy_up") {
        return;
    }
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let s = Scratch::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(s.lower(0).join("f"), &data).unwrap();
    fs::write(s.lower(0).join("g"), "lower g\n").unwrap();
    let log = s.path().join("daemon.log");
    let m = s.mount(1, &format!("passthrough=all,log={}", log.display()));
    let pids = common::daemon_pids(&m.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let reads = || request_count(pids[0], &log, "read");
    let path = m.path("f");
    let old = fs::File::open(&path).unwrap();
    let mut buf = vec![0u8; data.len() + 10];
    assert_eq!(old.read_at(&mut buf, 0).unwrap(), data.len());
    assert!(buf[..data.len()] == data[..]);
    assert_eq!(
        reads(),
        0,
        "a read-only open of a lower file is passed through"
    );

    // Writing is refused while `old` is open, with ETXTBSY.
    for trunc in [false, true] {
        let e = fs::OpenOptions::new()
            .write(true)
            .truncate(trunc)
            .open(&path)
            .unwrap_err();
        assert_eq!(common::errno_of(&e), libc::ETXTBSY, "O_TRUNC {trunc}: {e}");
    }
    assert!(!s.upper().join("f").exists());
    // A copy-up by path works; a new open reads the copy, through the daemon.
    let cut = 100_000usize;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), cut as i64) }, 0);
    assert!(fs::read(s.upper().join("f")).unwrap() == data[..cut]);
    let r0 = reads();
    let new = fs::File::open(&path).unwrap();
    assert_eq!(new.read_at(&mut buf, 0).unwrap(), cut, "new fd");
    assert!(buf[..cut] == data[..cut]);
    assert!(reads() > r0, "the new open's reads go to the daemon");
    assert_eq!(new.metadata().unwrap().len(), cut as u64);
    // The old fd still reads the lower file, but fstat shows the file as it is now.
    assert_eq!(old.read_at(&mut buf, 0).unwrap(), data.len(), "old fd");
    assert!(buf[..data.len()] == data[..]);
    assert_eq!(
        old.metadata().unwrap().len(),
        cut as u64,
        "fstat of the old fd"
    );
    drop(new);
    drop(old);

    // All closed: writing works, and a new open is passed through to the copy.
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"+new")
        .unwrap();
    let mut want = data[..cut].to_vec();
    want.extend_from_slice(b"+new");
    assert!(fs::read(s.upper().join("f")).unwrap() == want);
    let r0 = reads();
    assert!(fs::read(&path).unwrap() == want);
    assert_eq!(reads(), r0, "an open of the copy is passed through");

    // An open for writing made while such an open is live waits for it to be closed.
    fs::write(s.lower(0).join("h"), "lower h\n").unwrap();
    let reader = fs::File::open(m.path("h")).unwrap();
    let hp = m.path("h");
    let writer = std::thread::spawn(move || {
        let mut f = fs::OpenOptions::new().append(true).open(&hp)?;
        f.write_all(b"+w\n")
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!writer.is_finished(), "the open for writing did not wait");
    drop(reader);
    writer.join().unwrap().unwrap();
    assert_eq!(fs::read_to_string(m.path("h")).unwrap(), "lower h\n+w\n");

    // The file removed while the open for writing waits: ENOENT once it gets its turn
    // (was EEXIST: the copy-up met the whiteout in its place).
    fs::write(s.lower(0).join("i"), "lower i\n").unwrap();
    let reader = fs::File::open(m.path("i")).unwrap();
    let ip = m.path("i");
    let writer = std::thread::spawn(move || fs::OpenOptions::new().append(true).open(&ip));
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::remove_file(m.path("i")).unwrap();
    drop(reader);
    let e = writer.join().unwrap().unwrap_err();
    assert_eq!(common::errno_of(&e), libc::ENOENT, "{e}");
    assert!(!m.path("i").exists());

    // Removed while still open on the lower file after a copy-up: fstat still works.
    let old = fs::File::open(m.path("g")).unwrap();
    let c = std::ffi::CString::new(m.path("g").as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::truncate(c.as_ptr(), 3) }, 0);
    fs::remove_file(m.path("g")).unwrap();
    let st = old.metadata().unwrap();
    assert_eq!((st.len(), st.nlink()), (3, 0));
    assert_eq!(old.read_at(&mut buf, 0).unwrap(), 8);
    drop(old);
    drop(m);
    assert_eq!(
        fs::read(s.lower(0).join("f")).unwrap(),
        data,
        "lower file changed"
    );
}

fn old_fd_reads_the_copy(opts: &str) {
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsRawFd;
    let s = Scratch::new();
    fs::write(s.lower(0).join("f"), "lower data\n").unwrap();
    for name in ["g", "h"] {
        fs::write(s.lower(0).join(name), "lower\n").unwrap();
    }
    fs::write(s.lower(0).join("other"), "other\n").unwrap();
    let m = s.mount(1, opts);
    let mut old = fs::File::open(m.path("f")).unwrap();
    let mut before = String::new();
    old.read_to_string(&mut before).unwrap();
    assert_eq!(before, "lower data\n");
    let want = "lower data\n+new\n";
    fs::OpenOptions::new()
        .append(true)
        .open(m.path("f"))
        .unwrap()
        .write_all(b"+new\n")
        .unwrap();
    assert_eq!(fs::read_to_string(s.upper().join("f")).unwrap(), want);
    let read_old = |old: &mut fs::File| {
        let mut got = String::new();
        old.rewind().unwrap();
        old.read_to_string(&mut got).unwrap();
        got
    };
    assert_eq!(read_old(&mut old), want, "old fd, page cache");
    assert_eq!(old.metadata().unwrap().len(), want.len() as u64, "fstat");
    // Drop the clean cached pages: the next reads go to the daemon through the old fd.
    let fd = old.as_raw_fd();
    assert_eq!(
        unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
    assert_eq!(read_old(&mut old), want, "old fd, read by the daemon");
    unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) };
    let len = want.len();
    let got = unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let v = std::slice::from_raw_parts(p as *const u8, len).to_vec();
        libc::munmap(p, len);
        v
    };
    assert_eq!(String::from_utf8_lossy(&got), want, "old fd, mmap");
    // The copy's only name removed before the old fd is used again: it still reads the
    // copy (as an unlinked open file), for unlink and for a rename over it.
    for (name, remove) in [("g", "rm"), ("h", "mv other")] {
        let path = m.path(name);
        let mut old = fs::File::open(&path).unwrap();
        sh_ok(&format!("echo new >> '{}'", path.display()));
        let cmd = match remove {
            "rm" => format!("rm '{}'", path.display()),
            _ => format!("mv '{}' '{}'", m.path("other").display(), path.display()),
        };
        sh_ok(&cmd);
        unsafe { libc::posix_fadvise(old.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(read_old(&mut old), "lower\nnew\n", "old fd after {remove}");
    }
}

/// A directory copied up because of a change below it becomes merged, and reports
/// st_nlink 1 (as the kernel overlay does) at once, not after the kernel's attribute
/// cache expires (found by the differential tests as an nlink change across a remount).
#[test]
fn directory_copy_up_updates_cached_nlink() {
    if !common::require_mount_privilege("directory_copy_up_updates_cached_nlink") {
        return;
    }
    let s = Scratch::new();
    fs::create_dir_all(s.lower(0).join("d/sub")).unwrap();
    fs::write(s.lower(0).join("d/f"), "x").unwrap();
    let m = s.mount(1, "");
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 3);
    sh_ok(&format!("echo y >> '{}'", m.path("d/f").display()));
    assert_eq!(
        fs::metadata(m.path("d")).unwrap().nlink(),
        1,
        "stale st_nlink"
    );
    drop(m);
    let m = s.mount(1, "");
    assert_eq!(fs::metadata(m.path("d")).unwrap().nlink(), 1);
}

/// fstat of an open file whose last name was removed works (st_nlink 0), as on the
/// kernel overlay: the kernel may ask without the file handle.
#[test]
fn fstat_of_unlinked_open_file() {
    if !common::require_mount_privilege("fstat_of_unlinked_open_file") {
        return;
    }
    for opts in ["", "noopen"] {
        let s = Scratch::new();
        fs::write(s.lower(0).join("lower"), "lower\n").unwrap();
        let m = s.mount(1, opts);
        fs::write(m.path("upper"), "up\n").unwrap();
        for (name, size) in [("upper", 3), ("lower", 6)] {
            let f = fs::File::open(m.path(name)).unwrap();
            fs::remove_file(m.path(name)).unwrap();
            let st = f.metadata().unwrap();
            assert_eq!((st.len(), st.nlink()), (size, 0), "{opts}: {name}");
        }
    }
}

/// A daemon whose mount was unmounted from outside must not unmount the mountpoint path
/// again on its way out: a new mount made there meanwhile (podman remounts at once) was
/// taken down (fuser takes the dead connection for a live mount; about 1 in 8 remounts
/// here before the fix).
#[test]
fn remount_at_once_survives_the_old_daemon_exit() {
    if !common::require_mount_privilege("remount_at_once_survives_the_old_daemon_exit") {
        return;
    }
    let s = Scratch::new();
    fs::write(s.lower(0).join("f"), "x").unwrap();
    let mut m = s.mount(1, "");
    for i in 0..30 {
        drop(m);
        m = s.mount(1, "");
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            common::is_mounted(&s.mnt()),
            "remount {i}: the new mount was taken down"
        );
    }
}

/// Drop the clean cached pages of `f`: its next reads reach the daemon.
fn drop_pages(f: &fs::File) {
    use std::os::fd::AsRawFd;
    assert_eq!(
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) },
        0
    );
}

/// `noopen`: the kernel opens regular files without asking the daemon (one OPEN, answered
/// ENOSYS, and no RELEASE at all for any number of opens); reads and writes come by inode.
/// Reading many small lower files and a large one (the mapped reply path); a lower file
/// opened O_RDWR is copied up at its first write, and another fd sees the data; O_TRUNC
/// truncates; an O_WRONLY open without a write changes nothing; a lower file unlinked
/// while open stays readable and writable through the fd (its copy is an orphan in the
/// workdir); a shared mapping's writes reach the upper; fsync; everything after a remount.
#[test]
fn noopen_opens_without_the_daemon() {
    if !common::require_mount_privilege("noopen_opens_without_the_daemon") {
        return;
    }
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let s = Scratch::new();
    let l = s.lower(0);
    let n = 300;
    fs::create_dir(l.join("small")).unwrap();
    for i in 0..n {
        fs::write(l.join(format!("small/f{i}")), format!("small {i}\n")).unwrap();
    }
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    fs::write(l.join("big"), &big).unwrap();
    for (name, text) in [
        ("rw", "lower rw data\n"),
        ("trunc", "to be truncated\n"),
        ("wronly", "keep me\n"),
        ("gone", "unlinked while open\n"),
        ("sync", "sync\n"),
    ] {
        fs::write(l.join(name), text).unwrap();
    }
    fs::write(l.join("map"), vec![b'a'; 10000]).unwrap();
    let log = s.path().join("daemon.log");
    let m = s.mount(1, &format!("noopen,log={}", log.display()));
    let pids = common::daemon_pids(&m.mnt);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let count = |what: &str| request_count(pids[0], &log, what);

    for i in 0..n {
        let got = fs::read_to_string(m.path(&format!("small/f{i}"))).unwrap();
        assert_eq!(got, format!("small {i}\n"));
    }
    assert!(fs::read(m.path("big")).unwrap() == big, "big lower file");
    assert_eq!(count("open"), 1, "one OPEN (answered ENOSYS) for {n} opens");
    assert!(
        count("read") >= n as u64,
        "reads come to the daemon by inode"
    );

    // O_RDWR of a lower file: no copy-up until the first write.
    let other = fs::File::open(m.path("rw")).unwrap();
    let rw = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("rw"))
        .unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(rw.read_at(&mut buf, 0).unwrap(), 14);
    assert!(!s.upper().join("rw").exists(), "copied up at open");
    rw.write_all_at(b"LOWER", 0).unwrap();
    assert_eq!(
        fs::read_to_string(s.upper().join("rw")).unwrap(),
        "LOWER rw data\n"
    );
    assert_eq!(fs::read_to_string(l.join("rw")).unwrap(), "lower rw data\n");
    drop_pages(&other);
    let k = other.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..k], b"LOWER rw data\n", "another fd reads the copy");

    // O_TRUNC truncates (a SETATTR: no atomic O_TRUNC without OPEN).
    let mut t = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("trunc"))
        .unwrap();
    assert_eq!(t.metadata().unwrap().len(), 0);
    assert_eq!(fs::read(m.path("trunc")).unwrap(), b"");
    t.write_all(b"new\n").unwrap();
    drop(t);
    assert_eq!(
        fs::read_to_string(s.upper().join("trunc")).unwrap(),
        "new\n"
    );

    // O_WRONLY without a write: the union is unchanged.
    drop(
        fs::OpenOptions::new()
            .write(true)
            .open(m.path("wronly"))
            .unwrap(),
    );
    assert_eq!(fs::read_to_string(m.path("wronly")).unwrap(), "keep me\n");

    // Unlinked while open: readable and writable through the fd.
    let g = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("gone"))
        .unwrap();
    fs::remove_file(m.path("gone")).unwrap();
    assert!(fs::symlink_metadata(m.path("gone")).is_err());
    drop_pages(&g);
    let k = g.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..k], b"unlinked while open\n", "read after unlink");
    g.write_all_at(b"UNLINKED", 0).unwrap();
    drop_pages(&g);
    let k = g.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf[..k], b"UNLINKED while open\n", "write after unlink");
    let st = g.metadata().unwrap();
    assert_eq!((st.len(), st.nlink()), (20, 0));
    assert_eq!(
        fs::read_to_string(l.join("gone")).unwrap(),
        "unlinked while open\n"
    );
    assert!(fs::symlink_metadata(m.path("gone")).is_err());
    drop(g);

    // A shared writable mapping of a lower file: its writes arrive as WRITEs.
    {
        use std::os::fd::AsRawFd;
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("map"))
            .unwrap();
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                10000,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            std::ptr::copy_nonoverlapping(b"MAPPED".as_ptr(), (p as *mut u8).add(5000), 6);
            assert_eq!(libc::msync(p, 10000, libc::MS_SYNC), 0);
            libc::munmap(p, 10000);
        }
    }
    let mut want = vec![b'a'; 10000];
    want[5000..5006].copy_from_slice(b"MAPPED");
    assert!(
        fs::read(s.upper().join("map")).unwrap() == want,
        "mapped write"
    );

    // fsync reaches the daemon (by inode) and works.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("sync"))
        .unwrap();
    f.write_all(b"more\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(count("fsync") >= 1);
    assert_eq!(
        fs::read_to_string(s.upper().join("sync")).unwrap(),
        "sync\nmore\n"
    );

    assert_eq!(count("open"), 1, "still one OPEN");
    assert_eq!(count("release"), 0, "no RELEASE");
    drop(m);
    let m = s.mount(1, "noopen");
    for (name, text) in [
        ("rw", "LOWER rw data\n"),
        ("trunc", "new\n"),
        ("wronly", "keep me\n"),
        ("sync", "sync\nmore\n"),
    ] {
        assert_eq!(fs::read_to_string(m.path(name)).unwrap(), text, "{name}");
    }
    assert!(fs::read(m.path("map")).unwrap() == want);
    assert!(!m.path("gone").exists() && !m.path("gone2").exists());
    assert!(
        !s.upper().join("wronly").exists(),
        "copied up without a write"
    );
}

/// `noopen` keeps a bounded number of files open whatever the number of inodes the kernel
/// holds (an LRU of fds by inode), and a file created through the mount (CREATE keeps a
/// real handle) reads and writes through either kind of open.
#[test]
fn noopen_fd_count_stays_bounded() {
    if !common::require_mount_privilege("noopen_fd_count_stays_bounded") {
        return;
    }
    use std::io::Write;
    let s = Scratch::new();
    let n = layerfs::ino_io::INO_FDS + 200;
    for i in 0..n {
        fs::write(s.lower(0).join(format!("f{i}")), format!("{i}\n")).unwrap();
    }
    let log = s.path().join("daemon.log");
    let m = s.mount(1, &format!("noopen,log={}", log.display()));
    let pid = common::daemon_pids(&m.mnt)[0];
    for i in 0..n {
        assert_eq!(
            fs::read_to_string(m.path(&format!("f{i}"))).unwrap(),
            format!("{i}\n")
        );
    }
    let cached = request_count(pid, &log, "fds_by_inode");
    assert!(
        cached as usize <= layerfs::ino_io::INO_FDS && cached > 0,
        "{cached} fds kept by inode"
    );
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count();
    assert!(
        fds < layerfs::ino_io::INO_FDS + 100,
        "{fds} fds open in the daemon"
    );

    let mut created = fs::File::create(m.path("new")).unwrap();
    created.write_all(b"created\n").unwrap();
    let mut again = fs::OpenOptions::new()
        .append(true)
        .open(m.path("new"))
        .unwrap();
    again.write_all(b"appended\n").unwrap();
    std::os::unix::fs::FileExt::write_all_at(&created, b"more\n", 17).unwrap();
    drop((created, again));
    assert_eq!(
        fs::read_to_string(m.path("new")).unwrap(),
        "created\nappended\nmore\n"
    );
    assert_eq!(
        fs::read_to_string(s.upper().join("new")).unwrap(),
        "created\nappended\nmore\n"
    );
}
