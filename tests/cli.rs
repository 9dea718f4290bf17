//! The command line as callers use it, against the real binary: `--version`/`--help`; every
//! bad input fails with its exact one-line message, a non-zero exit, nothing mounted and
//! nothing written; podman's exact argv shapes mount and the union is live as soon as the
//! command returns; the daemon's life (SIGTERM, `fusermount3 -u`, `umount -l`, `-f` with
//! SIGINT, layers held open); and the workdir preparation.
//!
//! Waits poll with generous bounds and never assert on durations: the machine is shared.

mod common;

use common::{is_mounted, layerfs, Scratch};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Bound for anything we wait for (mount appearing/disappearing, a process exiting).
const WAIT: Duration = Duration::from_secs(30);

/// The second stderr line after a command-line (parse) error.
const HINT: &str = "Try 'layerfs --help' for more information.";

fn poll(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn d(p: &Path) -> String {
    p.display().to_string()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Run the binary in `cwd` (for relative paths), with a timeout so a hang fails the test.
fn layerfs_in(cwd: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(common::LAYERFS)
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn layerfs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("layerfs {args:?} (in {}) did not exit", cwd.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Every file under `root` (not following symlinks) with type, mode, owner, size, link
/// target, mtime and ctime: any write, create or delete changes the snapshot.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(p: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let md = fs::symlink_metadata(p).unwrap();
        let ft = md.file_type();
        let target = if ft.is_symlink() {
            d(&fs::read_link(p).unwrap())
        } else {
            String::new()
        };
        out.insert(
            p.to_path_buf(),
            format!(
                "{:o} {}:{} size={} nlink={} mtime={}.{} ctime={}.{} {target}",
                md.mode(),
                md.uid(),
                md.gid(),
                md.size(),
                md.nlink(),
                md.mtime(),
                md.mtime_nsec(),
                md.ctime(),
                md.ctime_nsec()
            ),
        );
        if ft.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, &mut out);
    out
}

/// Mount points at or below `root` (from /proc/self/mountinfo).
fn mounts_under(root: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = d(root);
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| m.replace("\\040", " ").replace("\\134", "\\"))
        .filter(|m| m.starts_with(&root))
        .collect()
}

/// Processes (other than this one) with an argument that contains `needle`.
fn procs_mentioning(needle: &[u8]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut v = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if pid != me && cmd.windows(needle.len()).any(|w| w == needle) {
            v.push(pid);
        }
    }
    v
}

fn pid_alive(pid: i32) -> bool {
    // A zombie has an empty cmdline; count only live processes.
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Make this test process the reaper of orphaned descendants, so a daemonized layerfs
/// becomes our child once its parent exits and we can read its exit status.
fn become_subreaper() {
    // SAFETY: plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// How a process ended.
#[derive(Debug, PartialEq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
    /// Not our child (could not be reaped) but gone.
    Gone,
}

/// Wait (bounded) for `pid` to end; None if it is still running at the deadline.
fn wait_pid(pid: i32) -> Option<Ended> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut st = 0;
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid {
            return Some(if libc::WIFEXITED(st) {
                Ended::Exited(libc::WEXITSTATUS(st))
            } else {
                Ended::Signaled(libc::WTERMSIG(st))
            });
        }
        if r < 0 && !pid_alive(pid) {
            return Some(Ended::Gone);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Layers with distinguishable content: `a` in both lowers (lower0 wins), `b` only in
/// lower1, `u` only in upper, `dir/` merged from both lowers.
fn populate(s: &Scratch) {
    fs::write(s.lower(0).join("a"), "a from lower0").unwrap();
    fs::create_dir_all(s.lower(0).join("dir")).unwrap();
    fs::write(s.lower(0).join("dir/x"), "x").unwrap();
    fs::write(s.lower(1).join("a"), "a from lower1").unwrap();
    fs::write(s.lower(1).join("b"), "b from lower1").unwrap();
    fs::create_dir_all(s.lower(1).join("dir")).unwrap();
    fs::write(s.lower(1).join("dir/y"), "y").unwrap();
    fs::write(s.upper().join("u"), "u from upper").unwrap();
}

/// The union of [`populate`]d layers is visible at `mnt` (no waiting, no retries).
fn assert_union(mnt: &Path, with_upper: bool, ctx: &str) {
    let read = |n: &str| {
        fs::read_to_string(mnt.join(n)).unwrap_or_else(|e| panic!("{ctx}: read {n}: {e}"))
    };
    assert_eq!(read("a"), "a from lower0", "{ctx}");
    assert_eq!(read("b"), "b from lower1", "{ctx}");
    assert_eq!(read("dir/x"), "x", "{ctx}");
    assert_eq!(read("dir/y"), "y", "{ctx}");
    let mut names: Vec<String> = fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let want: &[&str] = if with_upper {
        &["a", "b", "dir", "u"]
    } else {
        &["a", "b", "dir"]
    };
    assert_eq!(names, want, "{ctx}");
    if with_upper {
        assert_eq!(read("u"), "u from upper", "{ctx}");
    }
}

/// Run a mount command that must succeed, daemonize, and leave the union live at `mnt`.
fn mount_ok(out: &Output, mnt: &Path, ctx: &str) -> common::Mount {
    assert!(
        out.status.success(),
        "{ctx}: layerfs failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        is_mounted(mnt),
        "{ctx}: exit 0 but {} is not mounted",
        mnt.display()
    );
    common::Mount {
        mnt: mnt.to_path_buf(),
        kernel: false,
    }
}

/// Unmount and wait until the daemon serving `mnt` has exited.
fn unmount_and_wait(m: common::Mount) {
    let mnt = m.mnt.clone();
    drop(m);
    assert!(
        poll(|| common::daemon_pids(&mnt).is_empty()),
        "daemon for {} did not exit after unmount",
        mnt.display()
    );
}

/// Standard `-o` value for lowers 0 and 1 plus upper/work.
fn rw_opts(s: &Scratch) -> String {
    format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        d(&s.lower(0)),
        d(&s.lower(1)),
        d(&s.upper()),
        d(&s.work())
    )
}

// ---------------------------------------------------------------------------------------
// --version / --help

#[test]
fn version_first_line_and_exit_0() {
    let want = format!("layerfs: version {}", env!("CARGO_PKG_VERSION"));
    for args in [
        &["--version"][..],
        &["-V"],
        // wins over errors and a mount request elsewhere on the line
        &[
            "-o",
            "lowerdir=/nonexistent,fsync=7",
            "/nonexistent",
            "--version",
        ],
        &["--bogus", "--version"],
    ] {
        let out = layerfs(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().next(), Some(want.as_str()), "{args:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn help_lists_every_fuse_overlayfs_option() {
    // Every option of compat.md's "fuse-overlayfs mount options" list, plus the flags.
    const OPTIONS: &[&str] = &[
        "lowerdir",
        "upperdir",
        "workdir",
        "uidmapping",
        "gidmapping",
        "squash_to_root",
        "squash_to_uid",
        "squash_to_gid",
        "static_nlink",
        "noacl",
        "fsync",
        "volatile",
        "threaded",
        "timeout",
        "writeback",
        "fast_ino",
        "noxattrs",
        "plugins",
        "xattr_permissions",
        "ino32_t",
        "xino",
        "redirect_dir",
        "context",
        "allow_other",
        "allow_root",
        "default_permissions",
        "suid",
        "nosuid",
        "dev",
        "nodev",
        "exec",
        "noexec",
        "atime",
        "noatime",
        "ro",
        "debug",
        "-f",
        "-d",
        "-o",
        "--version",
        "--help",
    ];
    for flag in ["--help", "-h"] {
        let out = layerfs(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(out.stderr.is_empty(), "{flag}: {}", text(&out.stderr));
        let help = text(&out.stdout);
        assert!(help.starts_with("usage: layerfs"), "{help}");
        // Whole words only: "dev" must appear as an option, not inside "nodev".
        let words: Vec<&str> = help
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .collect();
        for o in OPTIONS {
            assert!(
                words.contains(o),
                "{flag}: help does not mention '{o}':\n{help}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Bad input: exact message, non-zero exit, nothing mounted, nothing written

struct BadCase {
    args: Vec<OsString>,
    /// The expected stderr, line by line (without the trailing newline).
    stderr: Vec<String>,
}

/// A validation error: one line.
fn bad(args: Vec<OsString>, msg: String) -> BadCase {
    BadCase {
        args,
        stderr: vec![format!("layerfs: {msg}")],
    }
}

/// A command-line error: the message and the `--help` hint.
fn bad_argv(args: Vec<OsString>, msg: String) -> BadCase {
    BadCase {
        args,
        stderr: vec![format!("layerfs: {msg}"), HINT.to_string()],
    }
}

fn o_mnt(opts: String, mnt: &Path) -> Vec<OsString> {
    vec!["-o".into(), opts.into(), mnt.as_os_str().to_owned()]
}

/// Run every case under `root` (the scratch area, including any tmpfs mounted in it) and
/// check message, exit code, no mount, no daemon, and an unchanged tree.
fn run_bad_cases(root: &Path, cases: Vec<BadCase>, cwd: Option<&Path>) {
    let mounts_before = mounts_under(root);
    let before = snapshot(root);
    let mut failures = Vec::new();
    for c in &cases {
        let out = match cwd {
            Some(dir) => {
                let a: Vec<&str> = c.args.iter().map(|a| a.to_str().unwrap()).collect();
                layerfs_in(dir, &a)
            }
            None => layerfs(&c.args),
        };
        let stderr = text(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        if out.status.success() || out.status.code().is_none() {
            failures.push(format!(
                "{:?}: want a non-zero exit, got {} (stderr {stderr:?})",
                c.args, out.status
            ));
        }
        if lines != c.stderr {
            failures.push(format!(
                "{:?}:\n   want stderr {:?}\n    got stderr {:?}",
                c.args, c.stderr, lines
            ));
        }
        if !out.stdout.is_empty() {
            failures.push(format!("{:?}: stdout {:?}", c.args, text(&out.stdout)));
        }
        let mounts = mounts_under(root);
        if mounts != mounts_before {
            failures.push(format!("{:?}: mounted something: {mounts:?}", c.args));
        }
        let procs = procs_mentioning(root.as_os_str().as_bytes());
        if !procs.is_empty() {
            failures.push(format!("{:?}: left processes {procs:?}", c.args));
        }
        if snapshot(root) != before {
            failures.push(format!("{:?}: wrote something", c.args));
        }
    }
    let after = snapshot(root);
    for (p, was) in &before {
        match after.get(p) {
            Some(now) if now == was => {}
            Some(now) => failures.push(format!("changed: {} {was} -> {now}", p.display())),
            None => failures.push(format!("removed: {}", p.display())),
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        failures.push(format!("created: {}", p.display()));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn bad_lowerdir() {
    let s = Scratch::new();
    populate(&s);
    let (l0, u, w, m) = (s.lower(0), s.upper(), s.work(), s.mnt());
    let file = s.path().join("file");
    fs::write(&file, "f").unwrap();
    let missing = s.path().join("nonexistent");
    let cases = vec![
        // no lowerdir at all
        bad(
            o_mnt(format!("upperdir={},workdir={}", d(&u), d(&w)), &m),
            "lowerdir: missing (lowerdir= is required)".into(),
        ),
        bad(
            vec![m.as_os_str().to_owned()],
            "lowerdir: missing (lowerdir= is required)".into(),
        ),
        bad_argv(
            o_mnt("lowerdir=".into(), &m),
            "lowerdir: missing value (lowerdir=...)".into(),
        ),
        bad_argv(
            o_mnt("lowerdir=:".into(), &m),
            "lowerdir: no directory in ':'".into(),
        ),
        // a lower that does not exist, as the only one and as the second one
        bad(
            o_mnt(format!("lowerdir={}", d(&missing)), &m),
            format!("lowerdir: {}: No such file or directory", d(&missing)),
        ),
        bad(
            o_mnt(
                format!(
                    "lowerdir={}:{},upperdir={},workdir={}",
                    d(&l0),
                    d(&missing),
                    d(&u),
                    d(&w)
                ),
                &m,
            ),
            format!("lowerdir: {}: No such file or directory", d(&missing)),
        ),
        // a lower that is a regular file, or a path through one
        bad(
            o_mnt(format!("lowerdir={}:{}", d(&l0), d(&file)), &m),
            format!("lowerdir: {}: not a directory", d(&file)),
        ),
        bad(
            o_mnt(format!("lowerdir={}/x", d(&file)), &m),
            format!("lowerdir: {}/x: Not a directory", d(&file)),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

#[test]
fn bad_relative_lowerdir_names_the_absolute_path() {
    let s = Scratch::new();
    populate(&s);
    let cases = vec![bad(
        os(&[
            "-o",
            "lowerdir=lower0:nope,upperdir=upper,workdir=work",
            "mnt",
        ]),
        format!(
            "lowerdir: {}: No such file or directory",
            d(&s.path().join("nope"))
        ),
    )];
    run_bad_cases(s.path(), cases, Some(s.path()));
}

#[test]
fn bad_upperdir_workdir() {
    let s = Scratch::new();
    populate(&s);
    let (l0, u, w, m) = (s.lower(0), s.upper(), s.work(), s.mnt());
    let file = s.path().join("file");
    fs::write(&file, "f").unwrap();
    let missing = s.path().join("nonexistent");
    let l = d(&l0);
    let cases = vec![
        bad(
            o_mnt(format!("lowerdir={l},upperdir={}", d(&u)), &m),
            "upperdir given without workdir".into(),
        ),
        bad(
            o_mnt(format!("lowerdir={l},workdir={}", d(&w)), &m),
            "workdir given without upperdir".into(),
        ),
        bad(
            o_mnt(
                format!("lowerdir={l},upperdir={},workdir={}", d(&missing), d(&w)),
                &m,
            ),
            format!("upperdir: {}: No such file or directory", d(&missing)),
        ),
        bad(
            o_mnt(
                format!("lowerdir={l},upperdir={},workdir={}", d(&file), d(&w)),
                &m,
            ),
            format!("upperdir: {}: not a directory", d(&file)),
        ),
        bad(
            o_mnt(
                format!("lowerdir={l},upperdir={},workdir={}", d(&u), d(&missing)),
                &m,
            ),
            format!("workdir: {}: No such file or directory", d(&missing)),
        ),
        bad(
            o_mnt(
                format!("lowerdir={l},upperdir={},workdir={}", d(&u), d(&file)),
                &m,
            ),
            format!("workdir: {}: not a directory", d(&file)),
        ),
        bad_argv(
            o_mnt(format!("lowerdir={l},upperdir=,workdir={}", d(&w)), &m),
            "upperdir: missing value (upperdir=...)".into(),
        ),
        bad_argv(
            o_mnt(format!("lowerdir={l},upperdir={},workdir", d(&u)), &m),
            "workdir: missing value (workdir=...)".into(),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

#[test]
fn bad_nesting_of_upper_work_and_lowers() {
    let s = Scratch::new();
    populate(&s);
    let (l0, l1, u, w, m) = (s.lower(0), s.lower(1), s.upper(), s.work(), s.mnt());
    for sub in [
        u.join("w"),
        w.join("u"),
        l0.join("inner"),
        w.join("l"),
        u.join("l"),
    ] {
        fs::create_dir(sub).unwrap();
    }
    let opts = |lowers: &[&Path], upper: &Path, work: &Path| {
        let lowers: Vec<String> = lowers.iter().map(|p| d(p)).collect();
        o_mnt(
            format!(
                "lowerdir={},upperdir={},workdir={}",
                lowers.join(":"),
                d(upper),
                d(work)
            ),
            &m,
        )
    };
    let nested = |u: &Path, w: &Path| {
        format!(
            "upperdir {} and workdir {} must not be nested inside each other",
            d(u),
            d(w)
        )
    };
    let cases = vec![
        // workdir inside upperdir, upperdir inside workdir, the same directory
        bad(opts(&[&l0], &u, &u.join("w")), nested(&u, &u.join("w"))),
        bad(opts(&[&l0], &w.join("u"), &w), nested(&w.join("u"), &w)),
        bad(opts(&[&l0], &u, &u), nested(&u, &u)),
        // upper inside a lower (the second one too), upper equal to a lower
        bad(
            opts(&[&l0, &l1], &l0.join("inner"), &w),
            format!(
                "upperdir {} is inside lowerdir {}",
                d(&l0.join("inner")),
                d(&l0)
            ),
        ),
        bad(
            opts(&[&l1, &l0], &l0.join("inner"), &w),
            format!(
                "upperdir {} is inside lowerdir {}",
                d(&l0.join("inner")),
                d(&l0)
            ),
        ),
        bad(
            opts(&[&l0, &u], &u, &w),
            format!("upperdir {} is inside lowerdir {}", d(&u), d(&u)),
        ),
        // workdir inside a lower
        bad(
            opts(&[&l1, &l0], &u, &l0.join("inner")),
            format!(
                "workdir {} is inside lowerdir {}",
                d(&l0.join("inner")),
                d(&l0)
            ),
        ),
        // a lower inside the upper or the workdir
        bad(
            opts(&[&l0, &u.join("l")], &u, &w),
            format!("lowerdir {} is inside upperdir {}", d(&u.join("l")), d(&u)),
        ),
        bad(
            opts(&[&w.join("l")], &u, &w),
            format!("lowerdir {} is inside workdir {}", d(&w.join("l")), d(&w)),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

/// A tmpfs mounted at `dir`, unmounted (lazily, if busy) on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "layerfs-test-tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -t tmpfs: {}",
            text(&out.stderr)
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let out = Command::new("umount").arg(&self.0).output().unwrap();
            if !out.status.success() {
                let _ = Command::new("umount").arg("-l").arg(&self.0).output();
            }
        }
    }
}

#[test]
fn bad_workdir_on_another_filesystem() {
    if !common::require_mount_privilege("bad_workdir_on_another_filesystem") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let tmpfs = Tmpfs::mount(&s.path().join("tmpfs"));
    let (tw, tu) = (tmpfs.0.join("work"), tmpfs.0.join("upper"));
    fs::create_dir(&tw).unwrap();
    fs::create_dir(&tu).unwrap();
    let (l0, u, w, m) = (s.lower(0), s.upper(), s.work(), s.mnt());
    let cases = vec![
        bad(
            o_mnt(
                format!("lowerdir={},upperdir={},workdir={}", d(&l0), d(&u), d(&tw)),
                &m,
            ),
            format!(
                "workdir {} is on a different filesystem than upperdir {}",
                d(&tw),
                d(&u)
            ),
        ),
        bad(
            o_mnt(
                format!("lowerdir={},upperdir={},workdir={}", d(&l0), d(&tu), d(&w)),
                &m,
            ),
            format!(
                "workdir {} is on a different filesystem than upperdir {}",
                d(&w),
                d(&tu)
            ),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
    // Control: upper and work both on the tmpfs (lower elsewhere) is fine.
    let out = layerfs(&o_mnt(
        format!("lowerdir={},upperdir={},workdir={}", d(&l0), d(&tu), d(&tw)),
        &m,
    ));
    let mnt = mount_ok(&out, &m, "upper+work on tmpfs");
    fs::write(m.join("new"), "n").unwrap();
    assert_eq!(fs::read_to_string(tu.join("new")).unwrap(), "n");
    unmount_and_wait(mnt);
}

#[test]
fn bad_mountpoint() {
    let s = Scratch::new();
    populate(&s);
    let file = s.path().join("file");
    fs::write(&file, "f").unwrap();
    let missing = s.path().join("nonexistent");
    let opts = rw_opts(&s);
    let cases = vec![
        bad_argv(
            os(&["-o", &opts]),
            "missing mountpoint (usage: layerfs -o lowerdir=DIR[:DIR...] MOUNTPOINT)".into(),
        ),
        bad_argv(os(&["-o", &opts, ""]), "mountpoint: empty argument".into()),
        bad(
            o_mnt(opts.clone(), &missing),
            format!("mountpoint {}: No such file or directory", d(&missing)),
        ),
        bad(
            o_mnt(opts.clone(), &file),
            format!("mountpoint {}: not a directory", d(&file)),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

#[test]
fn bad_option_values() {
    let s = Scratch::new();
    populate(&s);
    let base = rw_opts(&s);
    let m = s.mnt();
    let case = |opt: &str, msg: &str| bad_argv(o_mnt(format!("{base},{opt}"), &m), msg.into());
    let cases = vec![
        // id mappings: non-numeric, not triples, size 0, out of range, empty
        case(
            "uidmapping=0:x:1",
            "uidmapping: invalid value '0:x:1' ('x' is not a number)",
        ),
        case(
            "uidmapping=0:1:2:3",
            "uidmapping: invalid value '0:1:2:3' (expected container:host:size triples, got 4 numbers)",
        ),
        case(
            "gidmapping=:0:1",
            "gidmapping: invalid value ':0:1' (expected container:host:size triples, got 2 numbers)",
        ),
        case(
            "gidmapping=0:1:-1",
            "gidmapping: invalid value '0:1:-1' ('-1' is not a number)",
        ),
        case("uidmapping=0:1:0", "uidmapping: mapping 0:1:0 has size 0"),
        case(
            "uidmapping=4294967295:0:2",
            "uidmapping: mapping 4294967295:0:2 goes beyond id 4294967295",
        ),
        case("uidmapping=", "uidmapping: missing value (uidmapping=...)"),
        // xattr_permissions
        case(
            "xattr_permissions=3",
            "xattr_permissions: invalid value '3' (expected 0, 1 or 2)",
        ),
        case(
            "xattr_permissions=yes",
            "xattr_permissions: invalid value 'yes' (expected 0, 1 or 2)",
        ),
        case(
            "xattr_permissions",
            "xattr_permissions: missing value (xattr_permissions=...)",
        ),
        // timeout
        case(
            "timeout=abc",
            "timeout: invalid value 'abc' (expected a number of seconds, e.g. 1.5)",
        ),
        case(
            "timeout=-1",
            "timeout: invalid value '-1' (expected a number of seconds, e.g. 1.5)",
        ),
        case(
            "timeout=inf",
            "timeout: invalid value 'inf' (expected a number of seconds, e.g. 1.5)",
        ),
        case(
            "timeout=NaN",
            "timeout: invalid value 'NaN' (expected a number of seconds, e.g. 1.5)",
        ),
        case("timeout=", "timeout: missing value (timeout=...)"),
        // a few other valued options
        case("fsync=2", "fsync: invalid value '2' (expected 0 or 1)"),
        case(
            "squash_to_uid=abc",
            "squash_to_uid: invalid value 'abc' (expected a non-negative integer)",
        ),
        case(
            "threaded=many",
            "threaded: invalid value 'many' (expected a non-negative integer)",
        ),
        case(
            "xino=maybe",
            "xino: invalid value 'maybe' (expected off, auto or on)",
        ),
        case(
            "redirect_dir=false",
            "redirect_dir: invalid value 'false' (expected off, on, follow or nofollow)",
        ),
        case(
            "context=\"a,b",
            "unterminated quote in option 'context=a,b'",
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

#[test]
fn bad_command_line() {
    let s = Scratch::new();
    populate(&s);
    let opts = rw_opts(&s);
    let m = d(&s.mnt());
    let extra = d(&s.path().join("extra"));
    let cases = vec![
        bad_argv(
            os(&["-x", "-o", &opts, &m]),
            "unknown command-line option '-x'".into(),
        ),
        bad_argv(
            os(&["-o", &opts, "--frobnicate", &m]),
            "unknown command-line option '--frobnicate'".into(),
        ),
        bad_argv(
            os(&["-o", &opts, &m, "-q"]),
            "unknown command-line option '-q'".into(),
        ),
        bad_argv(
            os(&["-o", &opts, &m, &extra]),
            format!("unexpected extra argument '{extra}' (only one mountpoint is allowed)"),
        ),
        bad_argv(
            os(&["-o", &opts, &m, "--", "x"]),
            "unexpected extra argument 'x' (only one mountpoint is allowed)".into(),
        ),
        bad_argv(os(&[&m, "-o"]), "option '-o' requires an argument".into()),
        bad_argv(
            vec![],
            "missing mountpoint (usage: layerfs -o lowerdir=DIR[:DIR...] MOUNTPOINT)".into(),
        ),
    ];
    run_bad_cases(s.path(), cases, None);
}

// ---------------------------------------------------------------------------------------
// podman's argv shapes: mount, and the union is live when the command returns

/// Mount with `-o OPTS MNT`, check the union right away, write through it, unmount.
fn podman_shape(name: &str, opts: &str) {
    if !common::require_mount_privilege(name) {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let opts = opts
        .replace("{L0}", &d(&s.lower(0)))
        .replace("{L1}", &d(&s.lower(1)))
        .replace("{U}", &d(&s.upper()))
        .replace("{W}", &d(&s.work()));
    let m = s.mnt();
    let out = layerfs(&o_mnt(opts.clone(), &m));
    let mnt = mount_ok(&out, &m, &opts);
    assert_union(&m, true, &opts);
    fs::write(m.join("written"), "through the mount").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper().join("written")).unwrap(),
        "through the mount"
    );
    unmount_and_wait(mnt);
}

#[test]
fn podman_trailing_comma() {
    podman_shape(
        "podman_trailing_comma",
        "lowerdir={L0}:{L1},upperdir={U},workdir={W},",
    );
}

#[test]
fn podman_empty_option_then_volatile() {
    podman_shape(
        "podman_empty_option_then_volatile",
        "lowerdir={L0}:{L1},upperdir={U},workdir={W},,volatile",
    );
}

#[test]
fn podman_selinux_context_with_comma() {
    podman_shape(
        "podman_selinux_context_with_comma",
        "lowerdir={L0}:{L1},upperdir={U},workdir={W},context=\"system_u:object_r:container_file_t:s0:c1,c2\"",
    );
}

#[test]
fn podman_private_and_mappings() {
    podman_shape(
        "podman_private_and_mappings",
        "lowerdir={L0}:{L1},upperdir={U},workdir={W},private,uidmapping=:0:0:4294967295,gidmapping=:0:0:4294967295,",
    );
}

#[test]
fn escaped_colon_in_lowerdir() {
    if !common::require_mount_privilege("escaped_colon_in_lowerdir") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let colon = s.path().join("vol:with:colons");
    fs::create_dir(&colon).unwrap();
    fs::write(colon.join("c"), "from the colon layer").unwrap();
    fs::write(colon.join("a"), "a from the colon layer").unwrap();
    let esc = d(&colon).replace(':', "\\:");
    let m = s.mnt();
    let opts = format!(
        "lowerdir={esc}:{}:{},upperdir={},workdir={},private",
        d(&s.lower(0)),
        d(&s.lower(1)),
        d(&s.upper()),
        d(&s.work())
    );
    let out = layerfs(&o_mnt(opts, &m));
    let mnt = mount_ok(&out, &m, "escaped colon");
    assert_eq!(
        fs::read_to_string(m.join("c")).unwrap(),
        "from the colon layer"
    );
    assert_eq!(
        fs::read_to_string(m.join("a")).unwrap(),
        "a from the colon layer"
    );
    assert_eq!(fs::read_to_string(m.join("b")).unwrap(), "b from lower1");
    unmount_and_wait(mnt);
}

#[test]
fn lowerdir_only_is_read_only() {
    if !common::require_mount_privilege("lowerdir_only_is_read_only") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let m = s.mnt();
    let before = snapshot(s.path());
    let out = layerfs(&o_mnt(
        format!("lowerdir={}:{}", d(&s.lower(0)), d(&s.lower(1))),
        &m,
    ));
    let mnt = mount_ok(&out, &m, "lowerdir only");
    assert_union(&m, false, "lowerdir only");
    let erofs = |what: &str, r: std::io::Result<()>| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs("create", fs::write(m.join("new"), "x"));
    erofs(
        "open existing for writing",
        fs::OpenOptions::new()
            .write(true)
            .open(m.join("a"))
            .map(drop),
    );
    erofs("mkdir", fs::create_dir(m.join("newdir")));
    erofs("unlink", fs::remove_file(m.join("b")));
    erofs("rmdir", fs::remove_dir_all(m.join("dir")));
    erofs("rename", fs::rename(m.join("a"), m.join("a2")));
    erofs(
        "chmod",
        fs::set_permissions(
            m.join("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
    );
    erofs("symlink", std::os::unix::fs::symlink("a", m.join("link")));
    assert_union(&m, false, "lowerdir only, after refused writes");
    unmount_and_wait(mnt);
    // Nothing written anywhere (the mount point itself only gets atime changes).
    let after = snapshot(s.path());
    assert_eq!(before, after, "a read-only mount wrote to the layers");
}

#[test]
fn relative_paths_resolve_against_callers_cwd() {
    if !common::require_mount_privilege("relative_paths_resolve_against_callers_cwd") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    // A mount point name unique to this test (its cmdline is relative, so daemon_pids on
    // the absolute path would not find it).
    let uniq = format!("mnt-{}", s.path().file_name().unwrap().to_string_lossy());
    let m = s.path().join(&uniq);
    fs::create_dir(&m).unwrap();
    let sub = s.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let forms = [
        (
            s.path().to_path_buf(),
            "lowerdir=lower0:./lower1,upperdir=upper,workdir=./work".to_string(),
            uniq.clone(),
        ),
        (
            sub.clone(),
            "lowerdir=../lower0:../lower1,upperdir=../upper,workdir=../work".to_string(),
            format!("../{uniq}"),
        ),
    ];
    for (cwd, opts, mnt_arg) in forms {
        let out = layerfs_in(&cwd, &["-o", &opts, &mnt_arg]);
        let ctx = format!("in {}: -o {opts} {mnt_arg}", cwd.display());
        let mnt = mount_ok(&out, &m, &ctx);
        assert_union(&m, true, &ctx);
        drop(mnt);
        assert!(
            poll(|| procs_mentioning(uniq.as_bytes()).is_empty()),
            "{ctx}: daemon did not exit after unmount"
        );
    }
}

#[test]
fn unknown_option_warns_and_mounts() {
    if !common::require_mount_privilege("unknown_option_warns_and_mounts") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let m = s.mnt();
    let out = layerfs(&o_mnt(
        format!("{},frobnicate=1,another_unknown", rw_opts(&s)),
        &m,
    ));
    let mnt = mount_ok(&out, &m, "unknown options");
    let stderr = text(&out.stderr);
    for w in [
        "layerfs: warning: unknown option 'frobnicate=1' ignored",
        "layerfs: warning: unknown option 'another_unknown' ignored",
    ] {
        assert!(
            stderr.lines().any(|l| l == w),
            "stderr lacks {w:?}: {stderr:?}"
        );
    }
    assert_union(&m, true, "unknown options");
    unmount_and_wait(mnt);
}

#[test]
fn several_o_groups_merge() {
    if !common::require_mount_privilege("several_o_groups_merge") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    let m = s.mnt();
    let shapes: Vec<Vec<String>> = vec![
        vec![
            "-o".into(),
            format!("lowerdir={}:{}", d(&s.lower(0)), d(&s.lower(1))),
            "-o".into(),
            format!("upperdir={}", d(&s.upper())),
            "-o".into(),
            format!("workdir={},", d(&s.work())),
            d(&m),
        ],
        // compact -oOPTS, the mount point in the middle, a later lowerdir wins
        vec![
            "-olowerdir=/nonexistent".into(),
            format!("-oupperdir={}", d(&s.upper())),
            d(&m),
            "-o".into(),
            format!(
                "lowerdir={}:{},workdir={}",
                d(&s.lower(0)),
                d(&s.lower(1)),
                d(&s.work())
            ),
        ],
    ];
    for args in shapes {
        let out = layerfs(&args);
        let ctx = format!("{args:?}");
        let mnt = mount_ok(&out, &m, &ctx);
        assert_union(&m, true, &ctx);
        unmount_and_wait(mnt);
    }
}

// ---------------------------------------------------------------------------------------
// The daemon's life

/// Mount [`populate`]d layers in the background; return the guard and the daemon's pid.
fn mount_daemon(s: &Scratch) -> (common::Mount, i32) {
    become_subreaper();
    populate(s);
    let m = s.mnt();
    let out = layerfs(&o_mnt(rw_opts(s), &m));
    let mnt = mount_ok(&out, &m, "mount");
    let pids = common::daemon_pids(&m);
    assert_eq!(pids.len(), 1, "expected one daemon, found {pids:?}");
    (mnt, pids[0])
}

fn assert_exits_0(pid: i32, how: &str) {
    match wait_pid(pid) {
        Some(Ended::Exited(0)) => {}
        Some(Ended::Gone) => eprintln!("{how}: daemon {pid} gone (exit status not observable)"),
        other => panic!("{how}: daemon {pid} ended as {other:?}, want exit 0"),
    }
}

#[test]
fn sigterm_unmounts_and_exits() {
    if !common::require_mount_privilege("sigterm_unmounts_and_exits") {
        return;
    }
    let s = Scratch::new();
    let (mnt, pid) = mount_daemon(&s);
    assert_union(&s.mnt(), true, "before SIGTERM");
    // SAFETY: kill with a pid we found.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(poll(|| !is_mounted(&s.mnt())), "mount still there");
    assert_exits_0(pid, "SIGTERM");
    std::mem::forget(mnt);
}

#[test]
fn sigterm_with_a_busy_mount_detaches_and_exits() {
    if !common::require_mount_privilege("sigterm_with_a_busy_mount_detaches_and_exits") {
        return;
    }
    let s = Scratch::new();
    let (mnt, pid) = mount_daemon(&s);
    let mut f = fs::File::open(s.mnt().join("b")).unwrap();
    // SAFETY: kill with a pid we found.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(poll(|| !is_mounted(&s.mnt())), "mount still attached");
    // The open file still works until closed, then the daemon goes.
    let mut got = String::new();
    f.read_to_string(&mut got).unwrap();
    assert_eq!(got, "b from lower1");
    drop(f);
    assert_exits_0(pid, "SIGTERM while busy");
    std::mem::forget(mnt);
}

#[test]
fn fusermount3_u_exits() {
    if !common::require_mount_privilege("fusermount3_u_exits") {
        return;
    }
    let s = Scratch::new();
    let (mnt, pid) = mount_daemon(&s);
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(s.mnt())
        .output()
        .expect("run fusermount3");
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        text(&out.stderr)
    );
    assert!(!is_mounted(&s.mnt()));
    assert_exits_0(pid, "fusermount3 -u");
    std::mem::forget(mnt);
}

#[test]
fn detached_umount_exits() {
    if !common::require_mount_privilege("detached_umount_exits") {
        return;
    }
    let s = Scratch::new();
    let (mnt, pid) = mount_daemon(&s);
    let out = Command::new("umount")
        .arg("-l")
        .arg(s.mnt())
        .output()
        .unwrap();
    assert!(out.status.success(), "umount -l: {}", text(&out.stderr));
    assert!(!is_mounted(&s.mnt()));
    assert_exits_0(pid, "umount -l");
    std::mem::forget(mnt);
}

/// A foreground layerfs and the thread collecting its stderr (`-d` logs a lot and must
/// never block on a full pipe).
struct Foreground {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

/// Start layerfs in the foreground with `flags` and wait for the mount to be live.
fn foreground(s: &Scratch, flags: &[&str]) -> Foreground {
    populate(s);
    let m = s.mnt();
    let mut args: Vec<OsString> = flags.iter().map(OsString::from).collect();
    args.extend(o_mnt(rw_opts(s), &m));
    let mut child = Command::new(common::LAYERFS)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let live = poll(|| is_mounted(&m) || child.try_wait().unwrap().is_some()) && is_mounted(&m);
    if !live || child.try_wait().unwrap().is_some() {
        let _ = child.kill();
        let st = child.wait().unwrap();
        panic!(
            "{flags:?}: foreground mount not live ({st}): {}",
            text(&stderr.join().unwrap())
        );
    }
    Foreground { child, stderr }
}

fn wait_child(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let mut status = None;
    assert!(
        poll(|| {
            status = child.try_wait().unwrap();
            status.is_some()
        }),
        "{what}: layerfs did not exit"
    );
    status.unwrap()
}

#[test]
fn foreground_sigint_exits_0() {
    if !common::require_mount_privilege("foreground_sigint_exits_0") {
        return;
    }
    for (flags, sig) in [
        (&["-f"][..], libc::SIGINT),
        (&["-f"][..], libc::SIGTERM),
        (&["-d"][..], libc::SIGINT),
    ] {
        let s = Scratch::new();
        let mut fg = foreground(&s, flags);
        assert_union(&s.mnt(), true, "foreground");
        // SAFETY: kill our own child.
        assert_eq!(unsafe { libc::kill(fg.child.id() as i32, sig) }, 0);
        let st = wait_child(&mut fg.child, &format!("{flags:?} signal {sig}"));
        let stderr = text(&fg.stderr.join().unwrap());
        assert_eq!(st.code(), Some(0), "{flags:?} signal {sig}: {st}: {stderr}");
        assert!(!is_mounted(&s.mnt()), "{flags:?}: still mounted");
        if flags == ["-d"] {
            // debug logs requests to stderr
            assert!(stderr.contains("DEBUG"), "-d logged nothing: {stderr:?}");
        }
    }
}

#[test]
fn foreground_fusermount3_u_exits_0() {
    if !common::require_mount_privilege("foreground_fusermount3_u_exits_0") {
        return;
    }
    let s = Scratch::new();
    let mut fg = foreground(&s, &["-f"]);
    let out = Command::new("fusermount3")
        .arg("-u")
        .arg(s.mnt())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -u: {}",
        text(&out.stderr)
    );
    let st = wait_child(&mut fg.child, "fusermount3 -u");
    let stderr = text(&fg.stderr.join().unwrap());
    assert_eq!(st.code(), Some(0), "{st}: {stderr}");
}

#[test]
fn layers_are_open_before_the_command_returns() {
    if !common::require_mount_privilege("layers_are_open_before_the_command_returns") {
        return;
    }
    // Renamed away: nothing on the mount has been looked up yet, so no cache can help.
    let s = Scratch::new();
    populate(&s);
    let m = s.mnt();
    let out = layerfs(&o_mnt(rw_opts(&s), &m));
    let mnt = mount_ok(&out, &m, "mount");
    fs::rename(s.lower(0), s.path().join("lower0-moved")).unwrap();
    fs::rename(s.path().join("lower1"), s.path().join("lower1-moved")).unwrap();
    assert_union(&m, true, "lowers renamed away");
    unmount_and_wait(mnt);
}

#[test]
fn layers_survive_a_lazy_unmount_of_the_lowers() {
    if !common::require_mount_privilege("layers_survive_a_lazy_unmount_of_the_lowers") {
        return;
    }
    // podman's case: the lowers are mounts that are lazily unmounted right after the mount
    // program exits.
    let s = Scratch::new();
    let t0 = Tmpfs::mount(&s.lower(0));
    let t1 = Tmpfs::mount(&s.lower(1));
    populate(&s);
    let m = s.mnt();
    let out = layerfs(&o_mnt(rw_opts(&s), &m));
    let mnt = mount_ok(&out, &m, "mount");
    for t in [&t0, &t1] {
        let out = Command::new("umount").arg("-l").arg(&t.0).output().unwrap();
        assert!(out.status.success(), "umount -l {}", t.0.display());
        assert!(!is_mounted(&t.0));
    }
    assert_union(&m, true, "lowers lazily unmounted");
    // Copy-up from a detached lower still works.
    fs::write(m.join("dir/x"), "changed").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper().join("dir/x")).unwrap(),
        "changed"
    );
    unmount_and_wait(mnt);
}

// ---------------------------------------------------------------------------------------
// Workdir preparation

#[test]
fn leftovers_in_workdir_work_are_removed_at_mount() {
    if !common::require_mount_privilege("leftovers_in_workdir_work_are_removed_at_mount") {
        return;
    }
    let s = Scratch::new();
    populate(&s);
    // A "crash" left staging files, directories, a whiteout, a fifo and symlinks behind.
    let work = s.work().join("work");
    fs::create_dir_all(work.join("staging-dir/nested/deeper")).unwrap();
    fs::write(work.join("#copyup-1234"), vec![7u8; 100_000]).unwrap();
    fs::write(work.join("staging-dir/nested/deeper/f"), "partial").unwrap();
    fs::set_permissions(
        work.join("staging-dir/nested"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .unwrap();
    common::sh_ok(&format!(
        "mknod '{w}/wh' c 0 0 && mkfifo '{w}/fifo'",
        w = work.display()
    ));
    // Symlinks to things outside: removing the link must not touch the target.
    let victim = s.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, work.join("dir-link")).unwrap();
    std::os::unix::fs::symlink(victim.join("keep"), work.join("file-link")).unwrap();
    // Files in the workdir itself, outside work/, are not the daemon's.
    fs::write(s.work().join("not-ours"), "x").unwrap();

    let m = s.mnt();
    let out = layerfs(&o_mnt(rw_opts(&s), &m));
    let mnt = mount_ok(&out, &m, "mount over a dirty workdir");
    let left: Vec<_> = fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "leftovers in work/: {left:?}");
    assert!(fs::symlink_metadata(&work).unwrap().is_dir());
    assert_eq!(fs::read_to_string(victim.join("keep")).unwrap(), "keep me");
    assert_eq!(fs::read_to_string(s.work().join("not-ours")).unwrap(), "x");
    assert_union(&m, true, "dirty workdir");
    // Copy-up through the cleaned staging area works.
    fs::write(m.join("a"), "copied up").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper().join("a")).unwrap(),
        "copied up"
    );
    unmount_and_wait(mnt);
}

#[test]
fn workdir_work_symlink_is_not_followed() {
    if !common::require_mount_privilege("workdir_work_symlink_is_not_followed") {
        return;
    }
    // WORKDIR/work is a symlink to another directory: emptying "work" must not empty the
    // link's target (the kernel replaces a non-directory `work` entry).
    let s = Scratch::new();
    populate(&s);
    let victim = s.path().join("victim");
    fs::create_dir(&victim).unwrap();
    fs::write(victim.join("keep"), "keep me").unwrap();
    std::os::unix::fs::symlink(&victim, s.work().join("work")).unwrap();
    let m = s.mnt();
    let out = layerfs(&o_mnt(rw_opts(&s), &m));
    let mounted = out.status.success() && is_mounted(&m);
    let kept = fs::read_to_string(victim.join("keep")).ok();
    if mounted {
        common::unmount(&m);
        let _ = poll(|| common::daemon_pids(&m).is_empty());
    }
    assert_eq!(
        kept.as_deref(),
        Some("keep me"),
        "the target of WORKDIR/work -> {} was emptied (mount {}: {})",
        victim.display(),
        if mounted { "succeeded" } else { "failed" },
        text(&out.stderr)
    );
}

#[test]
fn non_utf8_and_special_paths() {
    if !common::require_mount_privilege("non_utf8_and_special_paths") {
        return;
    }
    // A lower whose name has a comma, a space, a backslash and a non-UTF-8 byte, escaped
    // the way layerfs documents (`\,` `\\` `\:`).
    let s = Scratch::new();
    populate(&s);
    let name = OsStr::from_bytes(b"we,ird \\ na\xffme:x");
    let odd = s.path().join(name);
    fs::create_dir(&odd).unwrap();
    fs::write(odd.join("odd"), "odd layer").unwrap();
    let esc = layerfs::options::escape_lowerdir(odd.as_os_str());
    let mut opts = OsString::from("lowerdir=");
    opts.push(&esc);
    opts.push(format!(
        ":{},upperdir={},workdir={}",
        d(&s.lower(0)),
        d(&s.upper()),
        d(&s.work())
    ));
    let m = s.mnt();
    let out = layerfs(&[OsString::from("-o"), opts, m.as_os_str().to_owned()]);
    let mnt = mount_ok(&out, &m, "odd lower name");
    assert_eq!(fs::read_to_string(m.join("odd")).unwrap(), "odd layer");
    assert_eq!(fs::read_to_string(m.join("a")).unwrap(), "a from lower0");
    unmount_and_wait(mnt);
}

/// Problems the command-line checks cannot see, found when the daemon opens the layers
/// and prepares the workdir: `WORKDIR/work` is a regular file, or the upper filesystem is
/// read-only. Returns the scratch area (holding the tmpfs), the workdir and the output.
fn daemon_stage_failure(kind: &str) -> (Scratch, Option<Tmpfs>, PathBuf, Output) {
    let s = Scratch::new();
    populate(&s);
    let (tmpfs, upper, work) = match kind {
        "work is a file" => {
            fs::write(s.work().join("work"), "not a directory").unwrap();
            (None, s.upper(), s.work())
        }
        "read-only upper filesystem" => {
            let t = Tmpfs::mount(&s.path().join("rofs"));
            for sub in ["upper", "work"] {
                fs::create_dir(t.0.join(sub)).unwrap();
            }
            common::sh_ok(&format!("mount -o remount,ro '{}'", t.0.display()));
            let (u, w) = (t.0.join("upper"), t.0.join("work"));
            (Some(t), u, w)
        }
        _ => unreachable!("{kind}"),
    };
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        d(&s.lower(0)),
        d(&upper),
        d(&work)
    );
    let out = layerfs(&o_mnt(opts, &s.mnt()));
    (s, tmpfs, work, out)
}

const DAEMON_STAGE_CASES: [&str; 2] = ["work is a file", "read-only upper filesystem"];

#[test]
fn daemon_stage_errors_fail_cleanly() {
    if !common::require_mount_privilege("daemon_stage_errors_fail_cleanly") {
        return;
    }
    for kind in DAEMON_STAGE_CASES {
        let (s, _tmpfs, _work, out) = daemon_stage_failure(kind);
        let stderr = text(&out.stderr);
        assert!(
            !out.status.success() && out.status.code().is_some(),
            "{kind}: {} {stderr}",
            out.status
        );
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{kind}: {stderr:?}");
        assert!(lines[0].starts_with("layerfs: "), "{kind}: {stderr:?}");
        assert!(!is_mounted(&s.mnt()), "{kind}: mounted");
        assert!(
            poll(|| procs_mentioning(s.path().as_os_str().as_bytes()).is_empty()),
            "{kind}: a daemon stayed behind"
        );
        if kind == "work is a file" {
            // not deleted by a failed mount
            assert_eq!(
                fs::read_to_string(s.work().join("work")).unwrap(),
                "not a directory"
            );
        }
    }
}

/// The issue asks for "a clear one-line error naming the option or path" for every bad
/// input, also for errors found only in the daemon (preparing the workdir), e.g.
/// `layerfs: workdir /W: open work: Not a directory`, with no `(os error N)` suffix.
#[test]
fn daemon_stage_errors_name_the_path() {
    if !common::require_mount_privilege("daemon_stage_errors_name_the_path") {
        return;
    }
    let mut failures = Vec::new();
    for kind in DAEMON_STAGE_CASES {
        let (s, _tmpfs, work, out) = daemon_stage_failure(kind);
        if out.status.success() {
            // Replacing a non-directory `work` as the kernel does is fine too.
            common::unmount(&s.mnt());
            continue;
        }
        let stderr = text(&out.stderr);
        if !stderr.contains(&d(&work)) || stderr.contains("(os error") {
            failures.push(format!(
                "{kind}: want one line naming {} without '(os error N)', got {stderr:?}",
                d(&work)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
