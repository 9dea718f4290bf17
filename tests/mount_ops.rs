//! Every operation of the union through a real mount, on lower-layer objects (so each one
//! also exercises copy-up), with results checked after a remount where data is involved.

mod common;
#[path = "common/load.rs"]
mod load;

use common::{sh, sh_ok, Scratch};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

fn setup() -> Option<Scratch> {
    let s = Scratch::new();
    let l = s.lower(0);
    fs::write(l.join("file"), "lower data\n").unwrap();
    fs::write(l.join("other"), "other\n").unwrap();
    fs::create_dir_all(l.join("dir/sub")).unwrap();
    fs::write(l.join("dir/sub/x"), "x").unwrap();
    fs::create_dir_all(l.join("dir2")).unwrap();
    fs::write(l.join("dir2/y"), "y").unwrap();
    std::os::unix::fs::symlink("file", l.join("link")).unwrap();
    Some(s)
}

#[test]
fn posix_acls_through_the_mount() {
    if !common::require_mount_privilege("posix_acls_through_the_mount") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let f = m.path("file");
    sh_ok(&format!("setfacl -m u:1234:r '{}'", f.display()));
    let acl = sh_ok(&format!("getfacl -n '{}'", f.display()));
    assert!(acl.contains("user:1234:r--"), "{acl}");
    sh_ok(&format!(
        "setfacl -d -m u:1234:rwx '{}'",
        m.path("dir").display()
    ));
    fs::write(m.path("dir/new"), "n").unwrap();
    let inherited = sh_ok(&format!("getfacl -n '{}'", m.path("dir/new").display()));
    assert!(
        inherited.contains("user:1234:"),
        "default ACL not inherited: {inherited}"
    );
    drop(m);
    let m = s.mount(1, "");
    let acl = sh_ok(&format!("getfacl -n '{}'", m.path("file").display()));
    assert!(
        acl.contains("user:1234:r--"),
        "ACL lost after remount: {acl}"
    );
}

#[test]
fn mmap_write_of_lower_file_persists() {
    if !common::require_mount_privilege("mmap_write_of_lower_file_persists") {
        return;
    }
    let s = setup().unwrap();
    {
        let m = s.mount(1, "");
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.path("file"))
            .unwrap();
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                5,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED, "mmap: {}", last_errno());
            let b = std::slice::from_raw_parts_mut(p as *mut u8, 5);
            assert_eq!(b, b"lower");
            b.copy_from_slice(b"MMAPD");
            assert_eq!(libc::msync(p, 5, libc::MS_SYNC), 0);
            libc::munmap(p, 5);
        }
        drop(f);
        assert_eq!(fs::read_to_string(m.path("file")).unwrap(), "MMAPD data\n");
    }
    let m = s.mount(1, "");
    assert_eq!(fs::read_to_string(m.path("file")).unwrap(), "MMAPD data\n");
    assert_eq!(
        fs::read_to_string(s.lower(0).join("file")).unwrap(),
        "lower data\n"
    );
}

#[test]
fn flock_and_fcntl_locks() {
    if !common::require_mount_privilege("flock_and_fcntl_locks") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let a = fs::File::open(m.path("file")).unwrap();
    let b = fs::File::open(m.path("file")).unwrap();
    unsafe {
        assert_eq!(libc::flock(a.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB), 0);
        assert_eq!(
            libc::flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB),
            -1
        );
        assert_eq!(last_errno(), libc::EWOULDBLOCK);
        libc::flock(a.as_raw_fd(), libc::LOCK_UN);
    }
    // fcntl record lock held by a child process conflicts with ours
    let out = sh(&format!(
        "flock -x '{0}' -c 'true' && python3 -c \"
import fcntl,os,time,sys
f=open('{0}','r+')
fcntl.lockf(f, fcntl.LOCK_EX|fcntl.LOCK_NB, 4, 0)
pid=os.fork()
if pid==0:
    g=open('{0}','r+')
    try:
        fcntl.lockf(g, fcntl.LOCK_EX|fcntl.LOCK_NB, 4, 0); os._exit(1)
    except OSError: os._exit(0)
_,st=os.waitpid(pid,0); sys.exit(os.waitstatus_to_exitcode(st))\"",
        m.path("other").display()
    ));
    assert!(
        out.status.success(),
        "fcntl lock not exclusive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fallocate_and_seek_data_hole() {
    if !common::require_mount_privilege("fallocate_and_seek_data_hole") {
        return;
    }
    let s = setup().unwrap();
    sh_ok(&format!(
        "truncate -s 8M '{0}/sparse' && printf abc | dd of='{0}/sparse' bs=1 seek=4194304 conv=notrunc status=none",
        s.lower(0).display()
    ));
    let m = s.mount(1, "");
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("sparse"))
        .unwrap();
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert_eq!(data, 4 << 20, "SEEK_DATA");
    let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
    assert!(hole > data && hole < 8 << 20, "SEEK_HOLE {hole}");
    assert_eq!(
        unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) },
        0,
        "fallocate: {}",
        last_errno()
    );
    assert!(fs::metadata(m.path("sparse")).unwrap().blocks() >= (1 << 20) / 512);
    f.seek(SeekFrom::Start(4 << 20)).unwrap();
    let mut buf = [0u8; 3];
    std::io::Read::read_exact(&mut f, &mut buf).unwrap();
    assert_eq!(&buf, b"abc");
}

#[test]
fn utimens_now_omit_and_symlink_times() {
    if !common::require_mount_privilege("utimens_now_omit_and_symlink_times") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let f = c(&m.path("file"));
    let ts = [
        libc::timespec {
            tv_sec: 1_000_000,
            tv_nsec: 5,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    ];
    let before = fs::metadata(m.path("file")).unwrap();
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, f.as_ptr(), ts.as_ptr(), 0) },
        0
    );
    let md = fs::metadata(m.path("file")).unwrap();
    assert_eq!((md.atime(), md.atime_nsec()), (1_000_000, 5));
    assert_eq!(md.mtime(), before.mtime(), "UTIME_OMIT changed mtime");
    let ts = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
    ];
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, f.as_ptr(), ts.as_ptr(), 0) },
        0
    );
    let md2 = fs::metadata(m.path("file")).unwrap();
    assert_eq!(md2.atime(), 1_000_000);
    assert!(md2.mtime() >= before.mtime());
    let l = c(&m.path("link"));
    let ts = [
        libc::timespec {
            tv_sec: 2_000_000,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: 3_000_000,
            tv_nsec: 0,
        },
    ];
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                l.as_ptr(),
                ts.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0,
        "symlink utimens: {}",
        last_errno()
    );
    let lm = fs::symlink_metadata(m.path("link")).unwrap();
    assert_eq!((lm.atime(), lm.mtime()), (2_000_000, 3_000_000));
    assert_eq!(
        fs::metadata(m.path("file")).unwrap().mtime(),
        md2.mtime(),
        "target changed"
    );
}

#[test]
fn create_flags_mknod_and_names() {
    if !common::require_mount_privilege("create_flags_mknod_and_names") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let e = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.path("file"));
    assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EEXIST));
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.path("file"))
        .unwrap();
    a.write_all(b"appended\n").unwrap();
    assert_eq!(
        fs::read_to_string(m.path("file")).unwrap(),
        "lower data\nappended\n"
    );
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.path("other"))
        .unwrap();
    assert_eq!(fs::metadata(m.path("other")).unwrap().len(), 0);
    sh_ok(&format!(
        "mkfifo '{0}/fifo' && mknod '{0}/null' c 1 3",
        m.path("").display()
    ));
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(m.path("null"))
        .unwrap()
        .file_type()
        .is_char_device());
    let sock = std::os::unix::net::UnixListener::bind(m.path("sock")).unwrap();
    assert!(fs::symlink_metadata(m.path("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    drop(sock);
    // names are bytes: non-UTF-8, 255 bytes, spaces, newlines, leading dashes
    let names: Vec<Vec<u8>> = vec![
        b"\xff\xfe-bytes".to_vec(),
        vec![b'n'; 255],
        b"with space".to_vec(),
        b"new\nline".to_vec(),
        b"-leading".to_vec(),
    ];
    for n in &names {
        let p = m.path("").join(OsStr::from_bytes(n));
        fs::write(&p, n).unwrap();
    }
    let long = m.path("").join(OsStr::from_bytes(&[b'n'; 256]));
    assert_eq!(
        fs::write(&long, "x").unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    drop(m);
    let m = s.mount(1, "");
    let listed: Vec<Vec<u8>> = fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    for n in &names {
        assert!(
            listed.contains(n),
            "{:?} missing after remount",
            String::from_utf8_lossy(n)
        );
        assert_eq!(&fs::read(m.path("").join(OsStr::from_bytes(n))).unwrap(), n);
    }
}

#[test]
fn rename_flags_on_files_and_directories() {
    if !common::require_mount_privilege("rename_flags_on_files_and_directories") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let r = |a: &str, b: &str, f: u32| unsafe {
        if libc::renameat2(
            libc::AT_FDCWD,
            c(&m.path(a)).as_ptr(),
            libc::AT_FDCWD,
            c(&m.path(b)).as_ptr(),
            f,
        ) == 0
        {
            0
        } else {
            last_errno()
        }
    };
    assert_eq!(r("file", "other", libc::RENAME_NOREPLACE), libc::EEXIST);
    assert_eq!(r("file", "other", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read_to_string(m.path("file")).unwrap(), "other\n");
    assert_eq!(fs::read_to_string(m.path("other")).unwrap(), "lower data\n");
    assert_eq!(r("dir", "dir2", libc::RENAME_EXCHANGE), 0);
    assert_eq!(fs::read_to_string(m.path("dir/y")).unwrap(), "y");
    assert_eq!(fs::read_to_string(m.path("dir2/sub/x")).unwrap(), "x");
    assert_eq!(r("dir", "nonexistent", libc::RENAME_EXCHANGE), libc::ENOENT);
    assert_eq!(r("dir2", "dir", 0), libc::ENOTEMPTY);
    assert_eq!(r("file", "dir", 0), libc::EISDIR);
    assert_eq!(r("dir", "file", 0), libc::ENOTDIR);
    assert_eq!(r("dir2", "dir3", libc::RENAME_NOREPLACE), 0);
    drop(m);
    let m = s.mount(1, "");
    assert_eq!(fs::read_to_string(m.path("dir3/sub/x")).unwrap(), "x");
    assert_eq!(fs::read_to_string(m.path("dir/y")).unwrap(), "y");
    assert!(fs::symlink_metadata(m.path("dir2")).is_err());
}

#[test]
fn xattrs_private_names_hidden_and_refused_and_statfs() {
    if !common::require_mount_privilege("xattrs_private_names_hidden_and_refused_and_statfs") {
        return;
    }
    let s = setup().unwrap();
    sh_ok(&format!(
        "setfattr -n user.keep -v kept '{0}/file' && setfattr -n trusted.overlay.opaque -v y '{0}/dir2' && setfattr -n user.fuseoverlayfs.x -v 1 '{0}/file'",
        s.lower(0).display()
    ));
    let m = s.mount(1, "");
    let f = m.path("file");
    let list = sh_ok(&format!("getfattr -d -m- '{}'", f.display()));
    assert!(
        list.contains("user.keep=\"kept\"") && !list.contains("fuseoverlayfs"),
        "{list}"
    );
    let d = sh_ok(&format!("getfattr -d -m- '{}'", m.path("dir2").display()));
    assert!(!d.contains("overlay"), "{d}");
    for bad in [
        "trusted.overlay.opaque",
        "user.overlay.redirect",
        "user.fuseoverlayfs.opaque",
    ] {
        let o = sh(&format!("setfattr -n {bad} -v y '{}'", f.display()));
        assert!(!o.status.success(), "setting {bad} must be refused");
    }
    sh_ok(&format!(
        "setfattr -n user.new -v 1 '{}' && setfattr -x user.keep '{}'",
        f.display(),
        f.display()
    ));
    let list = sh_ok(&format!("getfattr -d -m- '{}'", f.display()));
    assert!(
        list.contains("user.new") && !list.contains("user.keep"),
        "{list}"
    );
    assert_eq!(
        sh_ok(&format!(
            "getfattr -n user.keep --only-values '{}/file'",
            s.lower(0).display()
        )),
        "kept",
        "lower layer changed"
    );
    let st = nix_statfs(&m.path(""));
    let up = nix_statfs(&s.upper());
    assert_eq!(st, up, "statfs must report the upper filesystem");
}

fn nix_statfs(p: &Path) -> (u64, u64) {
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c(p).as_ptr(), &mut s) }, 0);
    (s.f_blocks, s.f_bsize)
}

#[test]
fn chown_and_chmod_copy_up_with_parents() {
    if !common::require_mount_privilege("chown_and_chmod_copy_up_with_parents") {
        return;
    }
    let s = setup().unwrap();
    sh_ok(&format!(
        "chmod 0750 '{0}/dir/sub' && chown 7:8 '{0}/dir/sub' && setfattr -n user.p -v parent '{0}/dir/sub' && touch -d 2001-02-03 '{0}/dir/sub'",
        s.lower(0).display()
    ));
    let m = s.mount(1, "");
    std::os::unix::fs::chown(m.path("dir/sub/x"), Some(1000), Some(1001)).unwrap();
    let md = fs::metadata(m.path("dir/sub/x")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
    let up = s.upper().join("dir/sub");
    let pm = fs::metadata(&up).unwrap();
    assert_eq!(
        (pm.mode() & 0o7777, pm.uid(), pm.gid()),
        (0o750, 7, 8),
        "parent metadata not copied"
    );
    assert_eq!(
        pm.mtime(),
        fs::metadata(s.lower(0).join("dir/sub")).unwrap().mtime(),
        "parent mtime"
    );
    assert_eq!(
        sh_ok(&format!(
            "getfattr -n user.p --only-values '{}'",
            up.display()
        )),
        "parent"
    );
}

/// Everything readable from `f` at `off`, through `pread` in 1 MiB steps.
fn read_all_at(f: &fs::File, mut off: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read_at(&mut buf, off).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
}

/// Drop the kernel's cached pages of `f`, so the next read reaches the daemon.
fn drop_page_cache(f: &fs::File) {
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// Reads of a large lower file (the daemon answers them from a mapping of it) return its
/// data, short at the end and nothing past it; after a write through another descriptor
/// (the copy-up) a descriptor opened on the lower file reads the copy; a read-only mount
/// reads it the same way.
#[test]
fn large_lower_file_reads_and_copy_up() {
    use std::os::unix::fs::FileExt;
    if !common::require_mount_privilege("large_lower_file_reads_and_copy_up") {
        return;
    }
    let s = setup().unwrap();
    fs::write(s.lower(0).join("huge"), vec![7u8; 48 << 20]).unwrap();
    let len = (3 << 20) + 123;
    let data: Vec<u8> = (0..len as u32).map(|i| (i % 251) as u8).collect();
    fs::write(s.lower(0).join("big"), &data).unwrap();
    {
        let m = s.mount(1, "");
        let p = m.path("big");
        let r = fs::File::open(&p).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        r.read_exact_at(&mut buf, 1 << 20).unwrap();
        assert!(buf == data[1 << 20..2 << 20]);
        drop_page_cache(&r);
        let n = r.read_at(&mut buf, len - 23).unwrap();
        assert_eq!(&buf[..n], &data[len as usize - 23..]);
        assert_eq!(r.read_at(&mut buf, len + 5).unwrap(), 0);
        assert!(read_all_at(&r, 0) == data);
        let w = fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.write_all_at(b"NEW DATA", 2 << 20).unwrap();
        drop(w);
        let mut expect = data.clone();
        expect[2 << 20..(2 << 20) + 8].copy_from_slice(b"NEW DATA");
        // A sequential reader's pages do not pile up in the daemon's RSS while its file
        // is open (the mapping is unmapped behind the reader).
        let pid = common::daemon_pids(&m.mnt)[0];
        let huge = fs::File::open(m.path("huge")).unwrap();
        let before = load::rss_kib(pid);
        assert_eq!(read_all_at(&huge, 0).len(), 48 << 20);
        let grown = load::rss_kib(pid).saturating_sub(before);
        assert!(
            grown < 24 << 10,
            "daemon RSS grew by {grown} KiB reading 48 MiB"
        );
        drop(huge);
        drop_page_cache(&r);
        assert!(read_all_at(&r, 0) == expect, "stale read after copy-up");
        drop(r);
        assert!(fs::read(&p).unwrap() == expect);
    }
    assert!(fs::read(s.lower(0).join("big")).unwrap() == data);
    fs::write(s.lower(0).join("big2"), &data[..(2 << 20) + 7]).unwrap();
    let m = s.mount_ro(1, "");
    let r = fs::File::open(m.path("big2")).unwrap();
    assert!(read_all_at(&r, 0) == data[..(2 << 20) + 7]);
    drop_page_cache(&r);
    assert!(read_all_at(&r, 1 << 20) == data[1 << 20..(2 << 20) + 7]);
}

/// As real root the daemon widens its mount's readahead window to the largest FUSE request
/// (`fs.fuse.max_pages_limit` pages), so sequential reads arrive in 1 MiB READs, not 128 KiB.
#[test]
fn readahead_window_widened_as_root() {
    if !common::require_mount_privilege("readahead_window_widened_as_root") {
        return;
    }
    let s = setup().unwrap();
    let m = s.mount(1, "");
    let dev = fs::metadata(m.path("")).unwrap().dev();
    let (maj, min) = (libc::major(dev), libc::minor(dev));
    let ra = fs::read_to_string(format!("/sys/class/bdi/{maj}:{min}/read_ahead_kb")).unwrap();
    let pages: u64 = fs::read_to_string("/proc/sys/fs/fuse/max_pages_limit")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(256);
    let page_kb = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64 / 1024;
    assert!(
        ra.trim().parse::<u64>().unwrap() >= pages * page_kb,
        "read_ahead_kb {ra}"
    );
}
