//! fsx-style file exerciser: random read / write / truncate / mmap read / mmap write /
//! fallocate on one file through the mount, verified against an in-memory copy after
//! every operation (size and every byte, through the read-write and the read-only open).
//!
//! Configurations: a lower-backed file (read first through a read-only open, then the
//! first write opens it read-write, which copies it up) and an upper file, each with FUSE
//! passthrough (the default as root; the daemon's log must say it is enabled), without it
//! (`writeback=1` turns it off), and with `noopen` (no OPEN requests: I/O by inode; the
//! copy-up comes at the first write). With `passthrough=all` the read-only open of the
//! lower file is passed through to the lower file and closed before the first write (a
//! fresh one is used after it); with the default `passthrough=upper` it is page-cached, and
//! replaced by a fresh one after the copy-up (fsx_read_only_open_follows_copy_up and
//! fsx_lower_backed_noopen keep it).
//! At the end the upper file on disk and a remount show the same bytes, and the lower file
//! is unchanged.
//!
//! Seeded: `LAYERFS_FSX_SEED`; `LAYERFS_FSX_OPS` (default 2000 per configuration);
//! `scripts/fsx` runs longer. A failure prints the seed and the operation log.

mod common;
#[path = "common/load.rs"]
mod load;

use common::Scratch;
use load::{env_num, seed_from_env, FgMount, Rng};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAX_SIZE: u64 = 192 << 10;

struct Fsx {
    rng: Rng,
    model: Vec<u8>,
    ro: Option<fs::File>,
    rw: Option<fs::File>,
    path: std::path::PathBuf,
    log: Vec<String>,
    seed: u64,
    name: String,
    fallocate_ok: bool,
    /// Keep reading through the read-only open made before the copy-up.
    keep_old_ro: bool,
    /// The read-only open of the lower file is passed through to it (`passthrough=all`):
    /// it is closed before the first open for writing, which it would make fail.
    lower_pt: bool,
}

impl Fsx {
    fn fail(&self, msg: String) -> ! {
        let keep =
            std::env::temp_dir().join(format!("layerfs-fsx-{}-{}.log", self.name, self.seed));
        let _ = fs::write(&keep, self.log.join("\n"));
        let n = self.log.len();
        panic!(
            "fsx {} (LAYERFS_FSX_SEED={}): op {}: {msg}\nlast operations (full log in {}):\n{}",
            self.name,
            self.seed,
            n,
            keep.display(),
            self.log[n.saturating_sub(25)..].join("\n")
        );
    }

    fn rw(&mut self) -> &fs::File {
        if self.rw.is_none() {
            let had_ro = self.ro.is_some();
            if self.lower_pt && had_ro {
                self.log
                    .push("close O_RDONLY (passed through to the lower file)".into());
                self.ro = None;
            }
            self.log
                .push("open O_RDWR (copy-up of a lower file)".into());
            match fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)
            {
                Ok(f) => self.rw = Some(f),
                Err(e) => self.fail(format!("open O_RDWR: {e}")),
            }
            if !self.keep_old_ro && had_ro {
                // The read-only open from before the copy-up may still read the lower
                // file (see fsx_read_only_open_follows_copy_up): use a fresh one.
                self.log.push("reopen O_RDONLY".into());
                self.ro = Some(fs::File::open(&self.path).unwrap());
            }
        }
        self.rw.as_ref().unwrap()
    }

    /// A read fd: the read-only open or the read-write one.
    fn reader(&mut self) -> (&'static str, &fs::File) {
        let use_ro = self.ro.is_some() && (self.rw.is_none() || self.rng.below(2) == 0);
        if use_ro {
            ("ro", self.ro.as_ref().unwrap())
        } else {
            ("rw", self.rw())
        }
    }

    fn range(&mut self, max: u64) -> (u64, u64) {
        let off = self.rng.below(max.max(1));
        let len = 1 + self.rng.below((max - off).clamp(1, 32 << 10));
        (off, len)
    }

    fn step(&mut self) {
        let size = self.model.len() as u64;
        let op = if self.lower_pt && self.rw.is_none() && self.log.len() < 50 {
            // Reads and mapped reads through the open passed through to the lower file.
            self.rng.below(3)
        } else {
            self.rng.below(if self.rw.is_none() { 14 } else { 10 })
        };
        match op {
            0 | 1 => {
                let (off, len) = self.range(size + 100);
                let (which, f) = self.reader();
                let f = f.try_clone().unwrap();
                self.log.push(format!("read {off}+{len} ({which})"));
                let mut buf = vec![0u8; len as usize];
                let n = read_full(&f, &mut buf, off)
                    .unwrap_or_else(|e| self.fail(format!("read: {e}")));
                let want = slice(&self.model, off, len);
                if buf[..n] != *want {
                    self.fail(format!(
                        "read {off}+{len} via {which}: got {n} bytes, {}",
                        first_diff(&buf[..n], want)
                    ));
                }
            }
            2 => {
                if size == 0 {
                    return;
                }
                let (off, len) = self.range(size);
                let (which, f) = self.reader();
                let f = f.try_clone().unwrap();
                self.log.push(format!("mmap read {off}+{len} ({which})"));
                let got = mmap_read(&f, size, off, len)
                    .unwrap_or_else(|e| self.fail(format!("mmap read: {e}")));
                let want = slice(&self.model, off, len).to_vec();
                if got != want {
                    self.fail(format!(
                        "mmap read {off}+{len} via {which}: {}",
                        first_diff(&got, &want)
                    ));
                }
            }
            3 | 4 | 10 | 11 => {
                let (off, len) = self.range(MAX_SIZE);
                let data = self.rng.bytes(len as usize);
                self.log.push(format!("write {off}+{len}"));
                let f = self.rw().try_clone().unwrap();
                f.write_all_at(&data, off)
                    .unwrap_or_else(|e| self.fail(format!("write: {e}")));
                let end = (off + len) as usize;
                if self.model.len() < end {
                    self.model.resize(end, 0);
                }
                self.model[off as usize..end].copy_from_slice(&data);
            }
            5 | 12 => {
                let newlen = self.rng.below(MAX_SIZE);
                self.log.push(format!("truncate {size} -> {newlen}"));
                let f = self.rw().try_clone().unwrap();
                f.set_len(newlen)
                    .unwrap_or_else(|e| self.fail(format!("truncate: {e}")));
                self.model.resize(newlen as usize, 0);
            }
            6 | 13 => {
                if size == 0 {
                    return;
                }
                let (off, len) = self.range(size);
                let data = self.rng.bytes(len as usize);
                let sync = self.rng.below(2) == 0;
                self.log
                    .push(format!("mmap write {off}+{len} msync {sync}"));
                let f = self.rw().try_clone().unwrap();
                mmap_write(&f, size, off, &data, sync)
                    .unwrap_or_else(|e| self.fail(format!("mmap write: {e}")));
                self.model[off as usize..(off + len) as usize].copy_from_slice(&data);
            }
            7 | 8 => {
                if !self.fallocate_ok {
                    return;
                }
                let (off, len) = self.range(MAX_SIZE);
                let (mode, name) = *self.rng.pick(&[
                    (0, "alloc"),
                    (libc::FALLOC_FL_KEEP_SIZE, "keep_size"),
                    (
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        "punch_hole",
                    ),
                    (libc::FALLOC_FL_ZERO_RANGE, "zero_range"),
                ]);
                self.log.push(format!("fallocate {name} {off}+{len}"));
                let f = self.rw().try_clone().unwrap();
                let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                if r != 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                        eprintln!("fsx {}: fallocate not supported, skipped", self.name);
                        self.fallocate_ok = false;
                        return;
                    }
                    self.fail(format!("fallocate {name}: {e}"));
                }
                let end = (off + len) as usize;
                let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
                if !keep && self.model.len() < end {
                    self.model.resize(end, 0);
                }
                if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                    let stop = end.min(self.model.len());
                    if (off as usize) < stop {
                        self.model[off as usize..stop].fill(0);
                    }
                }
            }
            _ => {
                // Reopen: close the read-write open (if any) and open it again.
                self.log.push("close and reopen O_RDWR".into());
                self.rw = None;
                let _ = self.rw();
            }
        }
        self.verify();
    }

    fn verify(&mut self) {
        for which in ["ro", "rw"] {
            let f = match which {
                "ro" => self.ro.as_ref(),
                _ => self.rw.as_ref(),
            };
            let Some(f) = f else { continue };
            let f = f.try_clone().unwrap();
            let size = f
                .metadata()
                .map(|m| m.len())
                .unwrap_or_else(|e| self.fail(format!("fstat: {e}")));
            if size != self.model.len() as u64 {
                self.fail(format!(
                    "size via {which} is {size}, expected {}",
                    self.model.len()
                ));
            }
            let mut buf = vec![0u8; self.model.len() + 1];
            let n = read_full(&f, &mut buf, 0)
                .unwrap_or_else(|e| self.fail(format!("verify read: {e}")));
            if buf[..n] != self.model[..] {
                self.fail(format!(
                    "contents via {which}: {}",
                    first_diff(&buf[..n], &self.model)
                ));
            }
        }
    }
}

fn slice(v: &[u8], off: u64, len: u64) -> &[u8] {
    let a = (off as usize).min(v.len());
    let b = ((off + len) as usize).min(v.len());
    &v[a..b]
}

fn first_diff(got: &[u8], want: &[u8]) -> String {
    if got.len() != want.len() {
        return format!("length {} instead of {}", got.len(), want.len());
    }
    let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    format!(
        "first difference at +{i}: {:#04x} instead of {:#04x}",
        got[i], want[i]
    )
}

fn read_full(f: &fs::File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn mmap_read(f: &fs::File, size: u64, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let end = (off + len).min(size);
    let out = unsafe {
        std::slice::from_raw_parts(p.cast::<u8>().add(off as usize), (end - off) as usize)
    }
    .to_vec();
    unsafe { libc::munmap(p, size as usize) };
    Ok(out)
}

fn mmap_write(f: &fs::File, size: u64, off: u64, data: &[u8], sync: bool) -> std::io::Result<()> {
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>().add(off as usize), data.len());
        if sync && libc::msync(p, size as usize, libc::MS_SYNC) != 0 {
            let e = std::io::Error::last_os_error();
            libc::munmap(p, size as usize);
            return Err(e);
        }
        libc::munmap(p, size as usize);
    }
    Ok(())
}

/// FUSE passthrough in a configuration: `passthrough=all`, `passthrough=upper` (the default),
/// or none (`writeback=1` turns it off; `noopen` too, where files are opened without the
/// daemon and I/O comes by inode).
#[derive(Clone, Copy, PartialEq)]
enum Pt {
    All,
    Upper,
    Off,
    NoOpen,
}

fn run_fsx(name: &str, lower_backed: bool, pt: Pt, keep_old_ro: bool) {
    let passthrough = matches!(pt, Pt::All | Pt::Upper);
    if !common::require_mount_privilege(name) {
        return;
    }
    let ops = env_num("LAYERFS_FSX_OPS", 2000);
    let seed = seed_from_env("LAYERFS_FSX_SEED");
    let s = Scratch::new();
    let l0 = s.lower(0);
    let mut rng = Rng::new(seed);
    let initial_len = rng.below(MAX_SIZE) as usize;
    let initial = rng.bytes(initial_len);
    if lower_backed {
        fs::write(l0.join("file"), &initial).unwrap();
    } else {
        fs::write(s.upper().join("file"), &initial).unwrap();
    }
    let mut opts = common::layer_opts(std::slice::from_ref(&l0), Some(&s.upper()), Some(&s.work()));
    match pt {
        Pt::All => opts.push_str(",passthrough=all"),
        Pt::Upper => {}
        Pt::Off => opts.push_str(",writeback=1"),
        Pt::NoOpen => opts.push_str(",noopen"),
    }
    let m = FgMount::start(&opts, &s.mnt(), &s.path().join("daemon.log"), "info");
    let path = s.mnt().join("file");
    let ro = fs::File::open(&path).unwrap();
    let mut fsx = Fsx {
        rng,
        model: initial.clone(),
        ro: Some(ro),
        rw: None,
        path: path.clone(),
        log: Vec::new(),
        seed,
        name: name.into(),
        fallocate_ok: true,
        keep_old_ro,
        lower_pt: lower_backed && pt == Pt::All,
    };
    if !lower_backed {
        fsx.rw();
    }
    for _ in 0..ops {
        fsx.step();
    }
    // Passthrough really was (or was not) in use.
    let log = m.log_text();
    assert_eq!(
        log.contains("FUSE passthrough enabled"),
        passthrough,
        "{name}: daemon log does not match the passthrough setting:\n{log}"
    );
    if passthrough {
        assert!(!log.contains("passthrough refused"), "{name}: {log}");
    }
    let model = std::mem::take(&mut fsx.model);
    let oplog = fsx.log.len();
    drop(fsx);
    if let Some(st) = m.stop() {
        assert!(st.success(), "{name}: daemon exit {st}");
    }
    let up = fs::read(s.upper().join("file")).unwrap();
    assert!(
        up == model,
        "{name} (seed {seed}): the upper file differs from the model after unmount"
    );
    if lower_backed {
        assert!(
            fs::read(l0.join("file")).unwrap() == initial,
            "{name}: the lower file changed"
        );
    }
    let m = s.mount(1, "");
    assert!(
        fs::read(m.path("file")).unwrap() == model,
        "{name} (seed {seed}): remount differs"
    );
    drop(m);
    assert!(Path::new(&s.work().join("work"))
        .read_dir()
        .unwrap()
        .next()
        .is_none());
    eprintln!("fsx {name}: {oplog} operations verified (seed {seed})");
}

#[test]
fn fsx_lower_backed_passthrough() {
    run_fsx("fsx_lower_backed_passthrough", true, Pt::All, false);
}

#[test]
fn fsx_lower_backed_upper_passthrough() {
    run_fsx("fsx_lower_backed_upper_passthrough", true, Pt::Upper, false);
}

#[test]
fn fsx_upper_passthrough() {
    run_fsx("fsx_upper_passthrough", false, Pt::All, false);
}

#[test]
fn fsx_lower_backed_no_passthrough() {
    run_fsx("fsx_lower_backed_no_passthrough", true, Pt::Off, false);
}

#[test]
fn fsx_upper_no_passthrough() {
    run_fsx("fsx_upper_no_passthrough", false, Pt::Off, false);
}

/// `noopen`: the lower file is copied up at the first write (not at the O_RDWR open), and
/// the read-only open made before it reads the copy (I/O by inode).
#[test]
fn fsx_lower_backed_noopen() {
    run_fsx("fsx_lower_backed_noopen", true, Pt::NoOpen, true);
}

#[test]
fn fsx_upper_noopen() {
    run_fsx("fsx_upper_noopen", false, Pt::NoOpen, false);
}

/// The kernel overlay (since 4.19) makes a file opened read-only before its copy-up read the
/// copied-up data afterwards; so does layerfs without passthrough and with
/// `passthrough=upper` (the handle re-opens the copy on first use after the copy-up; with
/// `passthrough=all` such an open reads the lower file, see tests/mount_regressions.rs
/// lower_passthrough_across_copy_up). Minimal case: open O_RDONLY, open O_RDWR (copy-up),
/// pwrite, pread through the first open, then random ops through both opens.
#[test]
fn fsx_read_only_open_follows_copy_up() {
    run_fsx("fsx_read_only_open_follows_copy_up", true, Pt::Off, true);
    run_fsx(
        "fsx_read_only_open_follows_copy_up_pt",
        true,
        Pt::Upper,
        true,
    );
}
