//! `layerfs export`, `import`, `check`, `explain` on a live mount, and the SIGUSR1 counters,
//! on a layer set holding every on-disk format layerfs reads: char 0/0, `.wh.` file and
//! xattr whiteouts (opaque=x), trusted/user/fuseoverlayfs opaque xattrs and `.wh..wh..opq`,
//! absolute and relative redirects, upper and index hard links, override_stat.
//!
//! The export is checked by importing it as a layer on top of the same lowers and comparing
//! the tree that mount shows with the tree the original mount shows, and (where podman is
//! installed) with what `podman diff` and `podman commit` make of the same change.

mod common;

use common::{layerfs, require_mount_privilege, sh_ok, Scratch};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Build lower0 (top), lower1 and an upper in every format, then change it through a real
/// mount (index copy-up of a lower hard link, a rename, rm -rf + mkdir over a whiteout).
fn every_format(s: &Scratch) {
    let (l0, l1, u) = (s.lower(0), s.lower(1), s.upper());
    sh_ok(&format!(
        r#"set -e
cd {l1}
mkdir -p etc usr/share/doc usr/lib/sub var/cache opq1 opq2 opq3 opq4 xw xw2 uo ut data deep
echo base > etc/os-release; echo base > etc/motd; echo pw > etc/passwd; echo gr > etc/group
echo doc > usr/share/doc/README; echo lib > usr/lib/libx.so; echo y > usr/lib/sub/y
echo old > var/cache/old; for d in opq1 opq2 opq3 opq4 uo ut; do echo h > $d/h; done
echo g > xw/gone; echo k > xw/keep; echo a > xw2/a; echo b > xw2/b; echo k > data/keep
echo shared > hl; ln hl hl2; echo c > gone_c; echo f > gone_f; ln -s etc/motd sym
mkfifo fifo; mknod null c 1 3; setfattr -n user.lower -v yes etc/group
cd {l0}
mkdir -p etc xw opq1 opq2 opq3 opq4
touch etc/.wh.os-release; echo top > etc/motd; mknod gone_c c 0 0; touch .wh.gone_f
setfattr -n trusted.overlay.opaque -v x xw; : > xw/gone
setfattr -n trusted.overlay.whiteout -v y xw/gone
touch opq1/.wh..wh..opq; echo n1 > opq1/n1
setfattr -n trusted.overlay.opaque -v y opq2; echo n2 > opq2/n2
setfattr -n user.overlay.opaque -v y opq3; echo n3 > opq3/n3
setfattr -n user.fuseoverlayfs.opaque -v y opq4; echo n4 > opq4/n4
cd {u}
mkdir -p etc usr xw2 uo ut moved usr/lib2
mknod etc/passwd c 0 0; touch etc/.wh.group
setfattr -n user.overlay.opaque -v x xw2; : > xw2/a; setfattr -n user.overlay.whiteout -v y xw2/a
touch uo/.wh..wh..opq; echo un > uo/un
setfattr -n trusted.overlay.opaque -v y ut; echo tn > ut/tn
setfattr -n trusted.overlay.redirect -v /usr/share moved; mknod usr/share c 0 0
setfattr -n user.overlay.redirect -v lib usr/lib2; touch usr/.wh.lib
echo new > new1; ln new1 new2; echo owned > owned
setfattr -n user.containers.override_stat -v 1000:1000:0640 owned
setfattr -n user.test -v value new1; ln -s /abs/target abssym; mkfifo ufifo
echo bytes > "$(printf 'name\xff\xfe')"
mkdir -p "deep/$(printf 'd%.0s' $(seq 1 60))/$(printf 'e%.0s' $(seq 1 60))"
echo long > "deep/$(printf 'd%.0s' $(seq 1 60))/$(printf 'e%.0s' $(seq 1 60))/$(printf 'f%.0s' $(seq 1 90))"
"#,
        l1 = l1.display(),
        l0 = l0.display(),
        u = u.display()
    ));
    let m = s.mount(2, "xattr_permissions=2");
    sh_ok(&format!(
        r#"set -e
cd {m}
echo more >> hl
mv etc/motd etc/motd2
rm -rf var/cache; mkdir var/cache; echo c > var/cache/c
rm data/keep; rmdir data
chmod 600 usr/lib2/libx.so
"#,
        m = m.mnt.display()
    ));
    drop(m);
}

/// Tests that create mount namespaces (the syslog test, podman's containers) run alone: a
/// new namespace copies every mount, and a copy keeps the daemon of an unmounted mount
/// alive; when the copy goes, that daemon unmounts its mountpoint by path, taking down
/// whatever another test mounted there since (a daemon bug, reported). The other mounting
/// tests share the lock.
static NS_LOCK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn ns_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    NS_LOCK.read().unwrap_or_else(|e| e.into_inner())
}

fn ns_exclusive() -> std::sync::RwLockWriteGuard<'static, ()> {
    NS_LOCK.write().unwrap_or_else(|e| e.into_inner())
}

fn lopts(s: &Scratch) -> String {
    format!("{}:{}", s.lower(0).display(), s.lower(1).display())
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr() as *mut _, buf.len()) };
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cn = CString::new(name).unwrap();
        let mut v = vec![0u8; 65536];
        let r =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), v.as_mut_ptr() as *mut _, v.len()) };
        if r >= 0 {
            v.truncate(r as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), v);
        }
    }
    out
}

/// Everything a user sees of a tree: per path, type, mode, owner, size, content, symlink
/// target, xattrs and (for non-directories) link count; plus the hard-link groups.
fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut by_ino: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut BTreeMap<String, String>,
        by_ino: &mut BTreeMap<u64, Vec<String>>,
    ) {
        let mut ents: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        ents.sort();
        for p in ents {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let mut d = format!(
                "mode {:o} uid {} gid {} xattrs {:?}",
                md.mode(),
                md.uid(),
                md.gid(),
                xattrs(&p)
            );
            if ft.is_dir() {
                out.insert(rel, d);
                walk(root, &p, out, by_ino);
                continue;
            }
            d.push_str(&format!(" nlink {} rdev {}", md.nlink(), md.rdev()));
            if ft.is_file() {
                d.push_str(&format!(
                    " data {:?} mtime {}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap()),
                    md.mtime()
                ));
            } else if ft.is_symlink() {
                d.push_str(&format!(" -> {:?}", std::fs::read_link(&p).unwrap()));
            }
            if md.nlink() > 1 {
                by_ino.entry(md.ino()).or_default().push(rel.clone());
            }
            out.insert(rel, d);
        }
    }
    walk(root, root, &mut out, &mut by_ino);
    let mut groups: Vec<Vec<String>> = by_ino.into_values().filter(|g| g.len() > 1).collect();
    groups.sort();
    (out, groups)
}

type Snapshot = (BTreeMap<String, String>, Vec<Vec<String>>);

/// Two snapshots agree entry by entry (named in the failure), and in hard-link groups.
fn assert_same_tree(want: &Snapshot, got: &Snapshot, what: &str) {
    for (k, v) in &want.0 {
        assert_eq!(got.0.get(k), Some(v), "{what}: {k} differs");
    }
    for k in got.0.keys() {
        assert!(want.0.contains_key(k), "{what}: extra {k}");
    }
    assert_eq!(got.1, want.1, "{what}: hard-link groups");
}

fn run_ok(args: &[&str]) -> String {
    let out = layerfs(args);
    assert!(
        out.status.success(),
        "layerfs {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn tar_listing(tar: &Path) -> Vec<String> {
    sh_ok(&format!("tar -tvf {} --numeric-owner", tar.display()))
        .lines()
        .map(|l| l.to_string())
        .collect()
}

#[test]
fn export_reimport_shows_the_same_tree_in_every_compression() {
    if !require_mount_privilege("export_reimport_shows_the_same_tree_in_every_compression") {
        return;
    }
    let _ns = ns_shared();
    let s = Scratch::new();
    every_format(&s);
    let lower = lopts(&s);
    let (u, w) = (s.upper(), s.work());
    let want = {
        let m = s.mount(2, "xattr_permissions=2");
        snapshot(&m.mnt)
    };
    // sanity: the fixture shows what it should
    assert!(
        want.0.contains_key("moved/doc/README"),
        "{:?}",
        want.0.keys()
    );
    assert!(!want.0.contains_key("xw2/a") && want.0.contains_key("xw2/b"));
    assert!(want.0["owned"].contains("mode 100640 uid 1000 gid 1000"));
    assert!(
        want.1.contains(&vec!["hl".to_string(), "hl2".to_string()]),
        "{:?}",
        want.1
    );

    let mut listings = Vec::new();
    for name in ["layer.tar", "layer.tar.gz", "layer.tar.zst"] {
        let tar = s.path().join(name);
        let msg = run_ok(&[
            "export",
            "--lowerdir",
            &lower,
            "--upperdir",
            u.to_str().unwrap(),
            "--workdir",
            w.to_str().unwrap(),
            "-o",
            tar.to_str().unwrap(),
        ]);
        assert!(msg.contains("layerfs export:"), "{msg}");
        let imp = s.path().join(format!("imp-{name}"));
        let msg = run_ok(&["import", "-i", tar.to_str().unwrap(), imp.to_str().unwrap()]);
        assert!(msg.contains("as char 0/0"), "{msg}");
        // imported formats: char 0/0 whiteouts and trusted opaque xattrs, no .wh. files
        let found = sh_ok(&format!("find {} -name '.wh.*'", imp.display()));
        assert_eq!(found.trim(), "", "imported layer keeps .wh. files");
        let mut lowers = vec![imp.clone(), s.lower(0), s.lower(1)];
        let m = common::mount_layerfs(&lowers, None, None, &s.mnt(), "");
        let got = snapshot(&m.mnt);
        drop(m);
        lowers.clear();
        assert_same_tree(&want, &got, name);
        if name == "layer.tar" {
            listings.push(tar_listing(&tar));
        } else {
            let plain = s.path().join(format!("{name}.plain"));
            let dec = if name.ends_with("gz") {
                "gzip -dc"
            } else {
                "zstd -dc"
            };
            let r = common::sh(&format!("{dec} {} > {}", tar.display(), plain.display()));
            if r.status.success() {
                listings.push(tar_listing(&plain));
            }
        }
    }
    // Imported by an unprivileged user: no chown, and no trusted.* xattrs, so opaque
    // directories get user.overlay.opaque; the union shows the same names and data.
    let nobody = s.path().join("imp-nobody");
    std::fs::create_dir(&nobody).unwrap();
    sh_ok(&format!(
        "chown 65534:65534 {n} && chmod 755 {p} && setpriv --reuid=65534 --regid=65534 --clear-groups {bin} import -i {t} {n}/l",
        n = nobody.display(),
        p = s.path().display(),
        bin = common::LAYERFS,
        t = s.path().join("layer.tar").display()
    ));
    let opq = xattrs(&nobody.join("l/var/cache"));
    assert_eq!(
        opq.get("user.overlay.opaque").map(|v| &v[..]),
        Some(&b"y"[..])
    );
    let got = {
        let lowers = [nobody.join("l"), s.lower(0), s.lower(1)];
        let m = common::mount_layerfs(&lowers, None, None, &s.mnt(), "");
        snapshot(&m.mnt)
    };
    let names = |t: &Snapshot| t.0.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(&got), names(&want), "unprivileged import: names");
    let data = |t: &Snapshot, k: &str| t.0[k].split(" data ").nth(1).map(str::to_string);
    for k in ["etc/motd2", "hl2", "moved/doc/README", "var/cache/c"] {
        assert_eq!(data(&got, k), data(&want, k), "unprivileged import: {k}");
    }

    // The same tar whatever the compression, entry by entry.
    for l in &listings[1..] {
        assert_eq!(l, &listings[0]);
    }
    let l = listings[0].join("\n");
    for want in [
        "etc/.wh.passwd",
        "etc/.wh.group",
        "etc/.wh.motd",
        "xw2/.wh.a",
        "uo/.wh..wh..opq",
        "ut/.wh..wh..opq",
        "var/cache/.wh..wh..opq",
        "usr/.wh.share",
        "usr/.wh.lib",
        "moved/doc/README",
        "usr/lib2/sub/y",
        "new2 link to new1",
        "hl2 link to hl",
        "1000/1000",
    ] {
        assert!(l.contains(want), "tar lacks {want:?}:\n{l}");
    }
    // nothing private in the tar, and no whiteout that hides nothing
    let raw = std::fs::read(s.path().join("layer.tar")).unwrap();
    for bad in [&b"overlay."[..], b"layerfs.origin", b"override_stat"] {
        assert!(
            !raw.windows(bad.len()).any(|w| w == bad),
            "private xattr {:?} exported",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(raw
        .windows(18)
        .any(|w| w == b"SCHILY.xattr.user.".as_slice()));
    assert!(
        !l.contains(".wh.gone_c"),
        "whiteout exported though the upper has none"
    );
    // deterministic: a second export is byte-identical
    let again = s.path().join("again.tar");
    run_ok(&[
        "export",
        "--lowerdir",
        &lower,
        "--upperdir",
        u.to_str().unwrap(),
        "--workdir",
        w.to_str().unwrap(),
        "-o",
        again.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&again).unwrap(), raw);
    // to stdout
    let out = std::process::Command::new(common::LAYERFS)
        .args(["export", "--lowerdir", &lower, "--upperdir"])
        .arg(&u)
        .arg("--workdir")
        .arg(&w)
        .args(["-o", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, raw);
}

/// podman with layerfs as its mount program, in a private storage root (the system's
/// podman storage is never touched).
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn run(&self, args: &[&str]) -> std::process::Output {
        let t = self.dir.path();
        std::process::Command::new("podman")
            .env_clear()
            .env("HOME", t)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CONTAINERS_CONF", t.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", t.join("storage.conf"))
            .arg("--root")
            .arg(t.join("root"))
            .arg("--runroot")
            .arg(t.join("runroot"))
            .arg("--tmpdir")
            .arg(t.join("tmp"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--storage-driver", "overlay", "--storage-opt"])
            .arg(format!(
                "overlay.mount_program={}",
                t.join("layerfs").display()
            ))
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run podman")
    }

    fn ok(&self, args: &[&str]) -> Result<String, String> {
        let o = self.run(args);
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            Err(format!(
                "podman {args:?}: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-af", "-t", "0"]);
        let _ = self.run(&["image", "unmount", "-af"]);
        let _ = self.run(&["system", "reset", "-f"]);
        let t = self.dir.path().to_path_buf();
        if let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut ms: Vec<PathBuf> = mi
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(PathBuf::from)
                .filter(|m| m.starts_with(&t))
                .collect();
            ms.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
            for m in ms {
                common::unmount(&m);
            }
        }
    }
}

const PODMAN_CONTAINERS_CONF: &str = "[containers]
default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]
netns = \"none\"
[engine]
runtime = \"runc\"
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
";

/// The change made inside the container (runs in the container only).
const PODMAN_CHANGE: &str = "set -e; echo hi > /etc/new; rm /etc/motd; mv /usr/share /usr/share2; \
     rm -rf /var/cache; mkdir /var/cache; echo c > /var/cache/c; echo more >> /hl; \
     chmod 600 /data/keep; rm /data/gone; ln -s x /sym; mkdir -p /new/dir; \
     echo n > /new/dir/f; ln /new/dir/f /new/f2";

/// The same change made in a podman container whose storage is mounted by layerfs:
/// `podman diff` lists what `layerfs diff` lists, and the image `podman commit` makes shows
/// the same tree as our export of the container's upper imported over the same base.
/// podman is optional on this machine: without it (or when it cannot run containers here)
/// this test prints a SKIP line.
#[test]
fn export_matches_podman_diff_and_commit() {
    if !require_mount_privilege("export_matches_podman_diff_and_commit") {
        return;
    }
    let _ns = ns_exclusive();
    let have = common::sh("command -v podman && command -v runc && test -x /bin/busybox");
    if !have.status.success() {
        eprintln!(
            "SKIP export_matches_podman_diff_and_commit: podman, runc or /bin/busybox is not installed"
        );
        return;
    }
    // The container is named "lfsctr" (not hex: a short name like "c" may also match an
    // image id prefix, and `podman diff` would then diff the image).
    let pm = Podman {
        dir: tempfile::Builder::new()
            .prefix("layerfs-podman-")
            .tempdir()
            .unwrap(),
    };
    let t = pm.dir.path();
    std::fs::copy(common::LAYERFS, t.join("layerfs")).unwrap();
    std::fs::write(t.join("containers.conf"), PODMAN_CONTAINERS_CONF).unwrap();
    std::fs::write(
        t.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/runroot\"\n",
            t.display()
        ),
    )
    .unwrap();
    let r = t.join("rootfs");
    for d in ["bin", "etc", "usr/share/doc", "var/cache", "data"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    for d in ["root", "runroot", "tmp"] {
        std::fs::create_dir_all(t.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
    for (f, c) in [
        ("etc/motd", "motd"),
        ("usr/share/doc/README", "doc"),
        ("var/cache/old", "old"),
        ("hl", "hl"),
        ("data/keep", "k"),
        ("data/gone", "gone"),
    ] {
        std::fs::write(r.join(f), c).unwrap();
    }
    std::fs::hard_link(r.join("hl"), r.join("hl2")).unwrap();
    let base = t.join("base.tar");
    let tar_out = std::process::Command::new("tar")
        .arg("-C")
        .arg(&r)
        .arg("-cf")
        .arg(&base)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar_out.status.success());
    let setup = pm
        .ok(&["import", "-q", base.to_str().unwrap(), "localhost/lfs-base"])
        .and_then(|_| {
            pm.ok(&[
                "run",
                "--name",
                "lfsctr",
                "localhost/lfs-base",
                "/bin/sh",
                "-c",
                PODMAN_CHANGE,
            ])
        });
    if let Err(e) = setup {
        // podman is installed but cannot run containers here: not a layerfs result
        eprintln!("SKIP export_matches_podman_diff_and_commit: {e}");
        return;
    }
    let dirs = pm
        .ok(&[
            "inspect",
            "lfsctr",
            "--format",
            "{{.GraphDriver.Data.LowerDir}} {{.GraphDriver.Data.UpperDir}} {{.GraphDriver.Data.WorkDir}}",
        ])
        .unwrap();
    let v: Vec<&str> = dirs.split(' ').collect();
    assert_eq!(v.len(), 3, "{dirs}");
    let (lower, upper, work) = (v[0], v[1], v[2]);

    // podman diff == layerfs diff, but for what the runtime creates (podman hides those)
    let runtime = [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/mtab",
        "/etc/resolv.conf",
    ];
    let stack = |cmd: &str, extra: &[&str]| -> String {
        let mut a = vec![
            cmd,
            "--lowerdir",
            lower,
            "--upperdir",
            upper,
            "--workdir",
            work,
        ];
        a.extend_from_slice(extra);
        run_ok(&a)
    };
    let ours: std::collections::BTreeSet<String> = stack("diff", &[])
        .lines()
        .filter(|l| l.starts_with("A /") || l.starts_with("C /") || l.starts_with("D /"))
        .filter(|l| {
            !runtime
                .iter()
                .any(|r| &l[2..] == *r || l[2..].starts_with(&format!("{r}/")))
        })
        .map(str::to_string)
        .collect();
    let theirs: std::collections::BTreeSet<String> = pm
        .ok(&["container", "diff", "lfsctr"])
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(ours, theirs, "layerfs diff vs podman diff");

    // podman commit's image vs our export imported over the base layer
    pm.ok(&["commit", "-q", "lfsctr", "localhost/lfs-after"])
        .unwrap();
    let merged = pm.ok(&["image", "mount", "localhost/lfs-after"]).unwrap();
    let want = snapshot(Path::new(&merged));
    pm.ok(&["image", "unmount", "localhost/lfs-after"]).unwrap();
    let tar = t.join("ours.tar");
    stack("export", &["-o", tar.to_str().unwrap()]);
    let imp = t.join("imported");
    run_ok(&["import", "-i", tar.to_str().unwrap(), imp.to_str().unwrap()]);
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = common::mount_layerfs(&[imp, PathBuf::from(lower)], None, None, &mnt, "");
    let got = snapshot(&m.mnt);
    drop(m);
    assert!(
        want.0.contains_key("usr/share2/doc/README"),
        "{:?}",
        want.0.keys()
    );
    assert!(!want.0.contains_key("data/gone"));
    assert_same_tree(&want, &got, "podman commit vs our export");

    // explain on a running container's root, served by the layerfs podman started
    pm.ok(&[
        "run",
        "-d",
        "--name",
        "lfslive",
        "localhost/lfs-after",
        "/bin/sh",
        "-c",
        "rm /etc/new; sleep 60",
    ])
    .unwrap();
    let merged = pm
        .ok(&[
            "inspect",
            "lfslive",
            "--format",
            "{{.GraphDriver.Data.MergedDir}}",
        ])
        .unwrap();
    let path = format!("{merged}/etc/new");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Path::new(&path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "container did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = layerfs(&["explain", &path]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with(&format!("mount {merged} served by layerfs pid")),
        "{text}"
    );
    assert!(text.contains("whiteout: hides the name"), "{text}");
    let _ = pm.run(&["rm", "-f", "-t", "0", "lfslive"]);
}

#[test]
fn import_refuses_hostile_tars() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    std::fs::create_dir_all(p("outside")).unwrap();
    // tars built with the tar crate's raw headers: `..`, absolute, symlinked parent,
    // hard link out, and a private xattr
    let mk = |name: &str, entries: &[(&[u8], tar::EntryType, &[u8])]| -> PathBuf {
        let path = p(name);
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (n, t, link) in entries {
            let mut h = tar::Header::new_old();
            {
                let raw = h.as_old_mut();
                raw.name[..n.len()].copy_from_slice(n);
                raw.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_entry_type(*t);
            h.set_mode(0o644);
            h.set_size(if *t == tar::EntryType::Regular { 3 } else { 0 });
            h.set_cksum();
            let data: &[u8] = if *t == tar::EntryType::Regular {
                b"bad"
            } else {
                b""
            };
            b.append(&h, data).unwrap();
        }
        b.finish().unwrap();
        path
    };
    let outside = p("outside");
    let dotdot = mk(
        "dotdot.tar",
        &[(b"a/../../outside/x", tar::EntryType::Regular, b"")],
    );
    let symparent = mk(
        "sym.tar",
        &[
            (
                b"link",
                tar::EntryType::Symlink,
                outside.as_os_str().as_bytes(),
            ),
            (b"link/x", tar::EntryType::Regular, b""),
        ],
    );
    let hardout = mk(
        "hard.tar",
        &[(b"h", tar::EntryType::Link, b"../outside/secret")],
    );
    std::fs::write(outside.join("secret"), "s").unwrap();
    for t in [&dotdot, &symparent, &hardout] {
        let dest = p(&format!(
            "dest-{}",
            t.file_name().unwrap().to_string_lossy()
        ));
        let out = layerfs(&[
            "import".as_ref(),
            "-i".as_ref(),
            t.as_os_str(),
            dest.as_os_str(),
        ]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}: hostile tar accepted",
            t.display()
        );
        assert!(
            !outside.join("x").exists(),
            "{}: wrote outside",
            t.display()
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
    }
    // absolute paths land inside DIR
    let abs = mk("abs.tar", &[(b"/etc/evil", tar::EntryType::Regular, b"")]);
    let dest = p("dest-abs");
    let out = layerfs(&[
        "import".as_ref(),
        "-i".as_ref(),
        abs.as_os_str(),
        dest.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(dest.join("etc/evil")).unwrap(), b"bad");
}

#[test]
fn check_finds_and_repairs_inconsistencies() {
    if !require_mount_privilege("check_finds_and_repairs_inconsistencies") {
        return;
    }
    let _ns = ns_shared();
    let s = Scratch::new();
    every_format(&s);
    let lower = lopts(&s);
    let (u, w) = (s.upper(), s.work());
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "check",
            "--lowerdir",
            &lower,
            "--upperdir",
            u.to_str().unwrap(),
            "--workdir",
            w.to_str().unwrap(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    // every format, consistent: nothing to report
    let out = layerfs(&args(&[]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("0 problems"), "{text}");
    // break it
    sh_ok(&format!(
        r#"set -e
mkdir -p {w}/work/'#lfs99.1'; echo x > {w}/work/'#lfs99.1'/f; touch {w}/work/'#lfs99.2'
mknod {u}/nothing c 0 0; touch {u}/etc/.wh.nothing2; mknod {u}/new1-shadow c 0 0
setfattr -n trusted.overlay.opaque -v q {u}/etc
setfattr -n user.overlay.redirect -v a/b {u}/uo
mkdir {u}/lost; setfattr -n trusted.overlay.redirect -v /no/such {u}/lost
setfattr -n user.layerfs.origin -v notanumber {u}/new1
setfattr -n trusted.overlay.opaque -v y {u}/owned
echo b > {u}/bogus-owner; setfattr -n user.containers.override_stat -v bogus {u}/bogus-owner
touch {w}/layerfs-index/junk
"#,
        u = u.display(),
        w = w.display()
    ));
    let out = layerfs(&args(&["--json"]));
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{json}");
    for k in [
        "\"staging-leftover\",\"path\":\"work/#lfs99.1\"",
        "\"staging-leftover\",\"path\":\"work/#lfs99.2\"",
        "\"whiteout-hides-nothing\",\"path\":\"/nothing\"",
        "\"whiteout-hides-nothing\",\"path\":\"/etc/.wh.nothing2\"",
        "\"bad-opaque\",\"path\":\"/etc\"",
        "\"bad-redirect\",\"path\":\"/uo\"",
        "\"redirect-target-missing\",\"path\":\"/lost\"",
        "\"bad-origin\",\"path\":\"/new1\"",
        "\"misplaced-xattr\",\"path\":\"/owned\"",
        "\"bad-override-stat\"",
        "\"index-unknown-entry\",\"path\":\"layerfs-index/junk\"",
    ] {
        assert!(json.contains(k), "missing {k} in {json}");
    }
    // no repair while a daemon uses the pair
    {
        let _m = s.mount(2, "");
        // the mount itself emptied work/: put a leftover back
        std::fs::write(w.join("work/#lfs99.3"), "x").unwrap();
        let out = layerfs(&args(&["--repair"]));
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("not repairing"));
        assert!(w.join("work/#lfs99.3").exists());
        assert!(u.join("nothing").exists());
    }
    std::fs::write(w.join("work/#lfs99.3"), "x").unwrap();
    let before = {
        let m = s.mount(2, "");
        snapshot(&m.mnt)
    };
    std::fs::write(w.join("work/#lfs99.4"), "x").unwrap();
    let out = layerfs(&args(&["--repair"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // left: the missing redirect target, the bad override_stat, the unknown index entry
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("3 remaining"), "{text}");
    assert!(text.contains("[repaired]"), "{text}");
    assert!(!u.join("nothing").exists() && !w.join("work/#lfs99.4").exists());
    let after = {
        let m = s.mount(2, "");
        snapshot(&m.mnt)
    };
    assert_eq!(before, after, "repair changed what the mount shows");
    let out = layerfs(&args(&[]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 problems"));
}

#[test]
fn explain_on_a_live_mount_and_sigusr1_counters() {
    if !require_mount_privilege("explain_on_a_live_mount_and_sigusr1_counters") {
        return;
    }
    let _ns = ns_shared();
    let s = Scratch::new();
    every_format(&s);
    let log = s.path().join("daemon.log");
    // relative layer paths: the daemon's cwd is used to resolve them
    let out = std::process::Command::new(common::LAYERFS)
        .current_dir(s.path())
        .args([
            "-o",
            &format!(
                "lowerdir=lower0:lower1,upperdir=upper,workdir=work,log={}",
                log.display()
            ),
            "mnt",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = common::Mount {
        mnt: s.mnt(),
        kernel: false,
    };
    let live = run_ok(&["explain", m.path("moved/doc/README").to_str().unwrap()]);
    let offline = run_ok(&[
        "explain",
        "--lowerdir",
        &lopts(&s),
        "--upperdir",
        s.upper().to_str().unwrap(),
        "--workdir",
        s.work().to_str().unwrap(),
        "/moved/doc/README",
    ]);
    let first = live.lines().next().unwrap();
    assert!(
        first.starts_with(&format!(
            "mount {} served by layerfs pid",
            s.mnt().display()
        )),
        "{live}"
    );
    assert!(first.contains(&format!("lowerdir={}", lopts(&s))), "{live}");
    let rest: Vec<&str> = live.lines().skip(1).collect();
    assert_eq!(rest, offline.lines().collect::<Vec<_>>());
    assert!(live.contains("redirected to /usr/share"), "{live}");
    // hidden names, relative paths and JSON work too
    let out = std::process::Command::new(common::LAYERFS)
        .current_dir(m.path("etc"))
        .args(["explain", "--json", "passwd"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let json = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(json.contains("\"visible\":false"), "{json}");
    assert!(
        json.contains(&format!("\"mount\":\"{}\"", s.mnt().display())),
        "{json}"
    );
    assert!(json.contains("\"daemon_pid\":"), "{json}");
    // the mount's root itself
    let root = run_ok(&["explain", m.mnt.to_str().unwrap()]);
    assert!(root.contains("\nstat: directory"), "{root}");
    // not a layerfs path
    let out = layerfs(&["explain", "/proc/self"]);
    assert_eq!(out.status.code(), Some(2));

    // SIGUSR1: counters in the log file, with requests by type
    std::fs::write(m.path("newfile"), "data").unwrap();
    let _ = std::fs::read(m.path("etc/motd2")).unwrap();
    let _ = std::fs::read_dir(m.path("usr")).unwrap().count();
    // "mnt" is relative: keep the daemon started in our directory (other tests may run
    // `layerfs ... mnt` elsewhere at the same time)
    let ours = std::fs::canonicalize(s.path()).unwrap();
    let pids: Vec<i32> = common::daemon_pids(Path::new("mnt"))
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/cwd")).is_ok_and(|c| c == ours))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    unsafe { libc::kill(pids[0], libc::SIGUSR1) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(l) = t.lines().find(|l| l.contains("counters:")) {
            break l.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no counters in the log: {t}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let num = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(num("lookup") >= 3, "{line}");
    // (the write itself may bypass the daemon: FUSE passthrough as root)
    assert!(num("create") >= 1, "{line}");
    assert!(num("readdir") + num("readdirplus") >= 1, "{line}");
    assert!(num("total") >= num("lookup") + num("create"), "{line}");
}

/// A background daemon without `log=` logs to syslog once detached: run it in a private
/// mount namespace whose /dev (a tmpfs with null and fuse nodes) has /dev/log bound to a
/// datagram socket this test reads, and look for the SIGUSR1 counters there.
#[test]
fn background_daemon_logs_counters_to_syslog() {
    if !require_mount_privilege("background_daemon_logs_counters_to_syslog") {
        return;
    }
    let _ns = ns_exclusive();
    let s = Scratch::new();
    std::fs::write(s.lower(0).join("f"), "x").unwrap();
    let sock_path = s.path().join("log.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The namespace lives as long as the daemon; the mount is only visible inside it, so
    // the daemon is found by its command line and stopped with SIGTERM. The namespace's
    // copies of other FUSE mounts are dropped first: a copy would keep another test's
    // daemon alive after its umount, and that daemon, once the copy goes, unmounts by path
    // whatever was mounted on its mountpoint since (see the report on that daemon bug).
    let script = format!(
        r#"set -e
grep ' - fuse' /proc/self/mountinfo | cut -d' ' -f5 | sort -r | while read -r m; do
  umount -l "$(printf '%b' "$m")" 2>/dev/null || true
done
maj=$((0x$(stat -c %t /dev/fuse))); min=$((0x$(stat -c %T /dev/fuse)))
mount -t tmpfs none /dev
mknod -m 666 /dev/null c 1 3; mknod -m 666 /dev/fuse c $maj $min
touch /dev/log; mount --bind {sock} /dev/log
{bin} -o lowerdir={l},upperdir={u},workdir={w} {m}
cat {m}/f >/dev/null; ls {m} >/dev/null
"#,
        sock = sock_path.display(),
        bin = common::LAYERFS,
        l = s.lower(0).display(),
        u = s.upper().display(),
        w = s.work().display(),
        m = s.mnt().display()
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = common::daemon_pids(&s.mnt());
    assert_eq!(pids.len(), 1, "{pids:?}");
    unsafe { libc::kill(pids[0], libc::SIGUSR1) };
    let mut buf = vec![0u8; 8192];
    let mut seen = Vec::new();
    let line = loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                unsafe { libc::kill(pids[0], libc::SIGTERM) };
                panic!("no counters in syslog ({e}); got {seen:?}");
            }
        };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.contains("counters:") {
            break msg;
        }
        seen.push(msg);
    };
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while Path::new(&format!("/proc/{}", pids[0])).exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(line.contains(&format!("layerfs[{}]", pids[0])), "{line}");
    assert!(line.contains("lookup="), "{line}");
    assert!(line.contains("open=") || line.contains("read="), "{line}");
}

/// A copy of a mount in another mount namespace keeps the daemon alive after `umount`;
/// when the copy goes, the daemon must exit without unmounting its mountpoint by path,
/// where a newer mount may live by then (possibly with the reused device number).
#[test]
fn old_daemon_does_not_unmount_a_newer_mount_on_its_path() {
    if !require_mount_privilege("old_daemon_does_not_unmount_a_newer_mount_on_its_path") {
        return;
    }
    let _ns = ns_exclusive();
    let s = Scratch::new();
    std::fs::write(s.lower(0).join("f"), "x").unwrap();
    let a = s.mount(1, "");
    let old = common::daemon_pids(&s.mnt());
    assert_eq!(old.len(), 1);
    // a namespace holding a copy of the mount for a while
    let mut ns = std::process::Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "echo ready; sleep 2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(ns.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    drop(a); // umount here; the copy keeps the old daemon's session alive
    assert!(Path::new(&format!("/proc/{}", old[0])).exists());
    let b = s.mount(1, "");
    assert!(ns.wait().unwrap().success());
    // the old daemon's session ends now: it must exit and leave the new mount alone
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&format!("/proc/{}", old[0])).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "old daemon did not exit"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        common::is_mounted(&s.mnt()),
        "the newer mount was unmounted"
    );
    assert_eq!(std::fs::read(b.path("f")).unwrap(), b"x");
}
