//! The differential runner: one kernel overlay (the reference) and layerfs mounts over the
//! same logical layers, the same [`Act`]s applied to all, everything compared after each.

use super::layers::{self, Format};
use super::ops::{apply, moved_paths, Act, Outcome, P};
use super::snapshot::{diff, snapshot, SnapOpts, Snapshot};
use crate::common::{self, Mount};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Kernel overlay options: layerfs claims redirect_dir=on and the kernel's index=on
/// behaviour for lower hard links.
pub const KERNEL_OPTS: &str = "index=on,redirect_dir=on,metacopy=off";

pub struct Side {
    pub name: &'static str,
    kernel: bool,
    lowers: Vec<PathBuf>,
    pub upper: PathBuf,
    work: PathBuf,
    pub mnt: PathBuf,
    mount: Option<Mount>,
    pub snap: Snapshot,
    /// layerfs's extra mount options.
    opts: &'static str,
}

impl Side {
    fn mount(&mut self) {
        assert!(self.mount.is_none());
        self.mount = Some(if self.kernel {
            mount_kernel(&self.lowers, &self.upper, &self.work, &self.mnt)
        } else {
            common::mount_layerfs(
                &self.lowers,
                Some(&self.upper),
                Some(&self.work),
                &self.mnt,
                self.opts,
            )
        });
    }
    fn unmount(&mut self) {
        self.mount = None;
    }
}

/// Which layerfs variants run next to the kernel.
#[derive(Clone, Copy)]
pub struct Variants {
    /// layerfs on the `.wh.`-format copy of the layers
    pub wh: bool,
    /// `passthrough=upper` (the default) instead of `passthrough=all`, which every other
    /// sequence runs to cover it (see ALLOWED_DIFFERENCES "fd opened before a copy-up").
    pub strict_old_fd: bool,
    /// a further layerfs mount with `noopen` (the kernel opens files without the daemon:
    /// I/O by inode, copy-up at the first write); an fd opened before a copy-up reads the
    /// copy, as on the kernel
    pub noopen: bool,
}

pub struct Runner {
    scratch: tempfile::TempDir,
    pub sides: Vec<Side>,
    kernel_lowers: Vec<PathBuf>,
    opts: SnapOpts,
    pub done: Vec<Act>,
    pub ops_compared: usize,
}

fn mkdirs(p: &Path) -> PathBuf {
    std::fs::create_dir_all(p).unwrap();
    p.to_path_buf()
}

impl Runner {
    pub fn new(v: Variants) -> Runner {
        unsafe { libc::umask(0o022) };
        let mut scratch = tempfile::Builder::new()
            .prefix("layerfs-diff-")
            .tempdir()
            .unwrap();
        // LAYERFS_DIFF_KEEP=1 keeps the layers and uppers for a look after a failure
        scratch.disable_cleanup(std::env::var_os("LAYERFS_DIFF_KEEP").is_some());
        let base = scratch.path();
        let kernel_lowers = layers::build(&base.join("lowers-kernel-format"), Format::Kernel);
        let wh_lowers = layers::build(&base.join("lowers-wh-format"), Format::Wh);
        let side = |name: &'static str, kernel: bool, lowers: &Vec<PathBuf>, opts: Option<_>| {
            let d = base.join(name);
            Side {
                name,
                kernel,
                lowers: lowers.clone(),
                upper: mkdirs(&d.join("upper")),
                work: mkdirs(&d.join("work")),
                mnt: mkdirs(&d.join("mnt")),
                mount: None,
                snap: Snapshot::default(),
                opts: opts.unwrap_or(if v.strict_old_fd {
                    "passthrough=upper"
                } else {
                    "passthrough=all"
                }),
            }
        };
        let mut sides = vec![
            side("kernel", true, &kernel_lowers, None),
            side("layerfs", false, &kernel_lowers, None),
        ];
        if v.wh {
            sides.push(side("layerfs-wh", false, &wh_lowers, None));
        }
        if v.noopen {
            sides.push(side(
                "layerfs-noopen",
                false,
                &kernel_lowers,
                Some("noopen"),
            ));
        }
        // everything written from now on is "recent"
        let recent_from = now() - 1;
        Runner {
            scratch,
            sides,
            kernel_lowers,
            opts: SnapOpts {
                recent_from,
                dir_nlink: true,
                dotdot_ino: false,
                link_dino: true,
            },
            done: Vec::new(),
            ops_compared: 0,
        }
    }

    pub fn base(&self) -> &Path {
        self.scratch.path()
    }

    /// Mount every side and compare the initial trees.
    pub fn start(&mut self) -> Result<(), String> {
        self.mount_all();
        self.compare_all("initial tree", None)
    }

    /// Mount every side without looking at anything yet.
    pub fn mount_all(&mut self) {
        for s in &mut self.sides {
            s.mount();
        }
    }

    /// Inode numbers of the hard-linked files of the bottom layer (b = e/c, hl = d/hl2).
    pub fn lower_hard_link_inos(&self) -> Vec<u64> {
        let bottom = &self.kernel_lowers[self.kernel_lowers.len() - 1];
        ["b", "hl"]
            .iter()
            .map(|n| std::fs::symlink_metadata(bottom.join(n)).unwrap().ino())
            .collect()
    }

    /// Snapshot and compare every side now (after changes made outside [`Runner::step`]).
    pub fn compare_now(&mut self, what: &str) -> Result<(), String> {
        self.compare_all(what, None)
    }

    /// The kernel's current tree: the state abstract ops are resolved against.
    pub fn reference(&self) -> &Snapshot {
        &self.sides[0].snap
    }

    fn fail(&self, what: &str, detail: &str) -> String {
        let mut s = format!(
            "DIVERGENCE at {what}\n{detail}\nacts so far (paste into a regression test):\n[\n"
        );
        for a in &self.done {
            let _ = writeln!(s, "    {a:?},");
        }
        s.push(']');
        s
    }

    /// Snapshot every side; check its own invariants, its st_ino stability against its
    /// previous snapshot (unless `act` moved the path), and its tree against the kernel's.
    fn compare_all(&mut self, what: &str, act: Option<(&Act, bool)>) -> Result<(), String> {
        let mut problems = Vec::new();
        for s in &mut self.sides {
            let new = snapshot(
                &s.mnt,
                &SnapOpts {
                    dotdot_ino: !s.kernel,
                    link_dino: !s.kernel,
                    ..self.opts
                },
                Some(&s.snap),
            );
            for p in &new.problems {
                problems.push(format!("{}: {p}", s.name));
            }
            if let Some((act, ok)) = act {
                for p in ino_changes(&s.snap, &new, act, ok) {
                    problems.push(format!("{}: {p}", s.name));
                }
            }
            s.snap = new;
        }
        let (k, rest) = self.sides.split_first().unwrap();
        for s in rest {
            for d in diff(&k.snap, &s.snap, k.name, s.name, &BTreeSet::new()) {
                problems.push(d);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.fail(what, &problems.join("\n")))
        }
    }

    /// Apply one act to every side and compare.
    pub fn step(&mut self, act: &Act) -> Result<(), String> {
        self.done.push(act.clone());
        let what = format!("step {} {act:?}", self.done.len() - 1);
        if *act == Act::Remount {
            return self.remount(&what);
        }
        if *act == Act::DropCaches {
            // no snapshot now: the next act decides what layerfs looks up first
            drop_caches();
            return Ok(());
        }
        if let Some(expect) = crate::by_design(act, self.reference()) {
            // layerfs refuses this by design: the kernel is not asked, layerfs must give
            // `expect` and change nothing
            let mut bad = Vec::new();
            for s in self.sides.iter().skip(1) {
                let o = apply(&s.mnt, act);
                if o.errno != expect {
                    bad.push(format!(
                        "result: {} {} where {} is expected by design",
                        s.name,
                        show(&o),
                        show(&Outcome {
                            errno: expect,
                            data: None
                        })
                    ));
                }
            }
            if !bad.is_empty() {
                return Err(self.fail(&what, &bad.join("\n")));
            }
            self.ops_compared += 1;
            return self.compare_all(&what, Some((act, false)));
        }
        let outs: Vec<Outcome> = self.sides.iter().map(|s| apply(&s.mnt, act)).collect();
        let mut bad = Vec::new();
        for (s, o) in self.sides.iter().zip(&outs).skip(1) {
            if *o != outs[0] {
                bad.push(format!(
                    "result: {} {} / {} {}",
                    self.sides[0].name,
                    show(&outs[0]),
                    s.name,
                    show(o)
                ));
            }
        }
        if !bad.is_empty() {
            return Err(self.fail(&what, &bad.join("\n")));
        }
        self.ops_compared += 1;
        if std::env::var_os("LAYERFS_DIFF_VERBOSE").is_some() {
            eprintln!("{what}: {}", show(&outs[0]));
        }
        let r = self.compare_all(&what, Some((act, outs[0].errno == 0)));
        if let Some(p) = std::env::var_os("LAYERFS_DIFF_SHOW") {
            for s in &self.sides {
                eprintln!(
                    "  {} {:?}: {:?}",
                    s.name,
                    p,
                    s.snap.entries.get(Path::new(&p))
                );
            }
        }
        r
    }

    /// Unmount everything, mount each upper again with the same implementation; the trees
    /// and every st_ino must be unchanged.
    fn remount(&mut self, what: &str) -> Result<(), String> {
        let before: Vec<Snapshot> = self.sides.iter().map(|s| s.snap.clone()).collect();
        for s in &mut self.sides {
            s.unmount();
        }
        for s in &mut self.sides {
            s.mount();
        }
        self.compare_all(what, None)?;
        let mut problems = Vec::new();
        for (s, b) in self.sides.iter().zip(&before) {
            for d in diff(b, &s.snap, "before", "after remount", &BTreeSet::new()) {
                problems.push(format!("{}: {d}", s.name));
            }
            for (p, ino) in &b.ino {
                if p.as_os_str().is_empty() {
                    continue; // the root's st_ino may be the mount's
                }
                if let Some(n) = s.snap.ino.get(p) {
                    if n != ino {
                        problems.push(format!(
                            "{}: {p:?}: st_ino {ino} before remount, {n} after",
                            s.name
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.fail(what, &problems.join("\n")))
        }
    }

    /// The end of a sequence: remount every upper with its own implementation, then mount
    /// each layerfs upper with the kernel overlay (on the kernel-format lowers) and compare.
    pub fn finish(&mut self) -> Result<(), String> {
        self.remount("final remount")?;
        for s in &mut self.sides {
            s.unmount();
        }
        let reference = self.sides[0].snap.clone();
        // ALLOWED_DIFFERENCES "lower hard links seen by a kernel mounted on a layerfs upper":
        // those paths are compared by type only
        let linked = self.lower_hard_link_inos();
        let relaxed: BTreeSet<PathBuf> = reference
            .ino
            .iter()
            .filter(|(_, i)| linked.contains(i))
            .map(|(p, _)| p.clone())
            .collect();
        let mut problems = Vec::new();
        for i in 1..self.sides.len() {
            let s = &self.sides[i];
            let work = mkdirs(&self.base().join(format!("{}-kernel-work", s.name)));
            let mnt = mkdirs(&self.base().join(format!("{}-kernel-mnt", s.name)));
            let m = mount_kernel(&self.kernel_lowers, &s.upper, &work, &mnt);
            let t = snapshot(&mnt, &self.opts, None);
            drop(m);
            let who = format!("kernel on the {} upper", s.name);
            for p in &t.problems {
                problems.push(format!("{who}: {p}"));
            }
            for d in diff(&reference, &t, "kernel", &who, &relaxed) {
                problems.push(d);
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(self.fail(
                "kernel mount of the layerfs upper after the sequence",
                &problems.join("\n"),
            ))
        }
    }
}

fn show(o: &Outcome) -> String {
    let e = if o.errno == 0 {
        "ok".to_string()
    } else {
        format!(
            "{} ({})",
            std::io::Error::from_raw_os_error(o.errno),
            o.errno
        )
    };
    match &o.data {
        None => e,
        Some(d) => format!("{e} read {:?}", String::from_utf8_lossy(d)),
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn bytes(p: &Path) -> P {
    P(p.as_os_str().as_bytes().to_vec())
}

/// st_ino changes between two snapshots of one mount that `act` does not explain.
fn ino_changes(before: &Snapshot, after: &Snapshot, act: &Act, ok: bool) -> Vec<String> {
    let mut out = Vec::new();
    let moved = moved_paths(act);
    for (p, ino) in &before.ino {
        let bp = bytes(p);
        if moved.iter().any(|m| bp.within(m)) {
            continue;
        }
        if let Some(n) = after.ino.get(p) {
            if n != ino {
                out.push(format!(
                    "{p:?}: st_ino changed from {ino} to {n} though {act:?} did not move it"
                ));
            }
        }
    }
    // a successful rename keeps the identity of what it moved
    if let (Act::Rename(a, b, flags), true) = (act, ok) {
        let mut pairs = vec![(a, b)];
        if flags & libc::RENAME_EXCHANGE != 0 {
            pairs.push((b, a));
        }
        for (from, to) in pairs {
            for (p, ino) in &before.ino {
                let bp = bytes(p);
                if !bp.within(from) {
                    continue;
                }
                let mut np = to.0.clone();
                np.extend_from_slice(&bp.0[from.0.len()..]);
                let np = P(np).path();
                match after.ino.get(&np) {
                    Some(n) if n == ino => {}
                    Some(n) => out.push(format!(
                        "{p:?} moved to {np:?}: st_ino {ino} before, {n} after"
                    )),
                    None => out.push(format!("{p:?} moved to {np:?}, which is missing")),
                }
            }
        }
    }
    out
}

/// `mount -t overlay` with [`KERNEL_OPTS`], retried for a while: right after an unmount
/// the kernel may still hold the upper "in use" (EBUSY) until the old superblock is gone.
pub fn mount_kernel(lowers: &[PathBuf], upper: &Path, work: &Path, mnt: &Path) -> Mount {
    let mut o = common::layer_opts(lowers, Some(upper), Some(work));
    o.push(',');
    o.push_str(KERNEL_OPTS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(mnt)
            .output()
            .expect("run mount");
        if out.status.success() {
            return Mount {
                mnt: mnt.to_path_buf(),
                kernel: true,
            };
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kernel overlay mount of {} failed: {}",
            upper.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Make the kernel drop unused dentries and inodes (FORGETs to layerfs).
pub fn drop_caches() {
    // sync first so dirty inodes can go too
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}
