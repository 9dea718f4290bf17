//! `layerfs check`: consistency of an upper/work pair.
//!
//! Found, and with `--repair` fixed where the fix cannot change what a mount shows:
//! - `staging-leftover`: objects in `W/work` (a crashed copy-up; the daemon empties it at
//!   mount anyway) — removed;
//! - `whiteout-hides-nothing`: a whiteout (any format) with nothing below it in the
//!   lowers, or shadowed by an object of the same name in the upper — removed;
//! - `bad-opaque`, `bad-redirect`, `bad-origin`, `bad-xattr-whiteout`, `misplaced-xattr`:
//!   private xattrs the daemon ignores (a value it does not understand, or on the wrong
//!   kind of object) — removed, which keeps what the mount shows;
//! - `bad-override-stat`: an override_stat value that cannot be parsed — reported (the real
//!   owner is unknown);
//! - `redirect-target-missing`: a renamed directory whose lower directory is gone —
//!   reported;
//! - `index-*`: hard-link index entries out of step (unknown names, non-regular copies,
//!   unreadable link counts, an upper name with the index copy's origin that is not linked
//!   to it) — reported.
//!
//! Nothing is repaired while a layerfs daemon uses the upper or workdir.
//! Exit status: 0 no problem left, 1 problems remain, 2 usage or I/O error.

use super::json_str;
use crate::error::Result;
use crate::idmap::{parse_override, OVERRIDE_XATTRS};
use crate::inode::{LowerDir, Node};
use crate::overlay::{bstr, index_name, remove_contents, Lookup, Overlay};
use crate::sys::{self, Stat};
use crate::whiteout::{self, OpaqueValue};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug)]
struct Problem {
    kind: &'static str,
    path: String,
    detail: String,
    /// Removing this (dir, name[, xattr]) is the safe fix.
    fix: Option<Fix>,
    repaired: bool,
}

#[derive(Debug)]
enum Fix {
    /// Remove the object (recursively for a directory).
    Remove(Arc<OwnedFd>, Vec<u8>),
    /// Remove an xattr of (dir, name).
    RemoveXattr(Arc<OwnedFd>, Vec<u8>, Vec<u8>),
}

struct Checker<'a> {
    ov: Option<&'a Overlay>,
    problems: Vec<Problem>,
    /// Index copies by stable inode number: (dev, ino) of the copy.
    index: HashMap<u64, (u64, u64)>,
}

fn show(comps: &[Vec<u8>]) -> String {
    let s = super::show(comps);
    if s.is_empty() {
        "/".into()
    } else {
        s
    }
}

/// Whether a visible `name` exists in the lower directories (top first), as lookup sees it.
fn lower_has(ov: &Overlay, lowers: &[LowerDir], name: &[u8]) -> bool {
    for l in lowers {
        match sys::fstatat(l.fd.as_fd(), name) {
            Ok(st) => return !ov.is_whiteout(&l.fd, name, &st, l.xwh),
            Err(_) => {
                if sys::fstatat(l.fd.as_fd(), &whiteout::whiteout_name(name)).is_ok() {
                    return false;
                }
            }
        }
    }
    false
}

impl Checker<'_> {
    fn add(&mut self, kind: &'static str, path: String, detail: String, fix: Option<Fix>) {
        self.problems.push(Problem {
            kind,
            path,
            detail,
            fix,
            repaired: false,
        });
    }

    /// Private xattrs of (dir, name) with values the daemon does not understand.
    fn check_xattrs(&mut self, dir: &Arc<OwnedFd>, name: &[u8], st: &Stat, path: &str) {
        let Ok(names) = sys::listxattr(dir.as_fd(), name) else {
            return;
        };
        for x in names {
            if !whiteout::is_private_xattr(&x) {
                continue;
            }
            let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, &x) else {
                continue;
            };
            let fix = || Some(Fix::RemoveXattr(dir.clone(), name.to_vec(), x.clone()));
            let xs = bstr(&x);
            let vs = bstr(&v);
            // Opaque and redirect markers belong on directories only, with a value the
            // daemon understands.
            let dir_marker = if whiteout::OPAQUE_XATTRS.contains(&x.as_slice()) {
                Some((
                    "bad-opaque",
                    whiteout::parse_opaque(&v) == OpaqueValue::No,
                    format!("{xs}={vs:?} (not y or x)"),
                ))
            } else if whiteout::REDIRECT_XATTRS.contains(&x.as_slice()) {
                Some((
                    "bad-redirect",
                    whiteout::parse_redirect(&v).is_none(),
                    format!("{xs}={vs:?} is malformed (ignored by the daemon)"),
                ))
            } else {
                None
            };
            if let Some((kind, bad_value, what)) = dir_marker {
                if !st.is_dir() {
                    self.add(
                        "misplaced-xattr",
                        path.into(),
                        format!("{xs} on a non-directory"),
                        fix(),
                    );
                } else if bad_value {
                    self.add(kind, path.into(), what, fix());
                }
            } else if x.ends_with(b"layerfs.origin") {
                if std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .is_none()
                {
                    self.add(
                        "bad-origin",
                        path.into(),
                        format!("{xs}={vs:?} is not an inode number"),
                        fix(),
                    );
                }
            } else if whiteout::XWHITEOUT_XATTRS.contains(&x.as_slice()) {
                if !st.is_reg() || st.size != 0 {
                    self.add(
                        "bad-xattr-whiteout",
                        path.into(),
                        format!("{xs} on an object that is not an empty regular file"),
                        fix(),
                    );
                }
            } else if OVERRIDE_XATTRS.contains(&x.as_slice()) && parse_override(&v).is_none() {
                self.add(
                    "bad-override-stat",
                    path.into(),
                    format!("{xs}={vs:?} cannot be parsed; the real owner and mode are unknown"),
                    None,
                );
            }
        }
    }

    fn walk(
        &mut self,
        udir: &Arc<OwnedFd>,
        node: Option<&Arc<Node>>,
        comps: &mut Vec<Vec<u8>>,
    ) -> Result<()> {
        let (lowers, xwh) = match node {
            Some(n) => {
                let s = n.s.lock();
                (s.lowers.clone(), s.upper_xwh)
            }
            None => (Vec::new(), false),
        };
        let dir_opaque = self
            .ov
            .map(|ov| ov.dir_opaque(udir) == OpaqueValue::Yes)
            .unwrap_or(false);
        let mut entries = sys::read_dir(udir.as_fd())?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            comps.push(e.name.clone());
            let path = show(comps);
            let st = match sys::fstatat(udir.as_fd(), &e.name) {
                Ok(st) => st,
                Err(_) => {
                    comps.pop();
                    continue;
                }
            };
            self.check_xattrs(udir, &e.name, &st, &path);
            // (without the union node of this directory, e.g. below a hidden name, what its
            // whiteouts hide is unknown: they are left alone)
            if let (Some(ov), Some(_)) = (self.ov, node) {
                let target = if e.name == whiteout::OPAQUE_MARKER {
                    None
                } else if let Some(t) = whiteout::whiteout_target(&e.name) {
                    Some(t.to_vec())
                } else if ov.is_whiteout(udir, &e.name, &st, xwh) {
                    Some(e.name.clone())
                } else {
                    None
                };
                if let Some(t) = target {
                    let shadowed = t != e.name && sys::fstatat(udir.as_fd(), &t).is_ok();
                    let why = if shadowed {
                        Some("an object of the same name in the upper hides it already")
                    } else if dir_opaque {
                        Some("its directory is opaque")
                    } else if !lower_has(ov, &lowers, &t) {
                        Some("no lower layer has the name")
                    } else {
                        None
                    };
                    if let Some(why) = why {
                        self.add(
                            "whiteout-hides-nothing",
                            path.clone(),
                            format!("whiteout of {:?}: {why}", bstr(&t)),
                            Some(Fix::Remove(udir.clone(), e.name.clone())),
                        );
                    }
                }
            }
            if st.is_reg() && st.nlink > 1 {
                if let Some(o) = self.ov.and_then(|ov| ov.read_origin(udir, &e.name)) {
                    if let Some(&(dev, ino)) = self.index.get(&o) {
                        if (dev, ino) != (st.dev, st.ino) {
                            self.add(
                                "index-out-of-step",
                                path.clone(),
                                format!("origin {o} has an index copy, but this name is another inode (writes through it are not seen through the other names)"),
                                None,
                            );
                        }
                    }
                }
            }
            if st.is_dir() {
                let sub = Arc::new(sys::open_subdir(udir.as_fd(), &e.name)?);
                let child = match (self.ov, node) {
                    (Some(ov), Some(n)) => match ov.resolve(n, &e.name)? {
                        Lookup::Found(f) => {
                            let redirect = f.has_redirect && !f.opaque;
                            let c = ov.instantiate(n, &e.name, *f);
                            if redirect && c.s.lock().lowers.is_empty() {
                                self.add(
                                    "redirect-target-missing",
                                    path.clone(),
                                    format!(
                                        "redirected to {}, which no lower layer has",
                                        bstr(&c.s.lock().lower_path)
                                    ),
                                    None,
                                );
                            }
                            Some(c)
                        }
                        _ => None,
                    },
                    _ => None,
                };
                self.walk(&sub, child.as_ref(), comps)?;
            }
            comps.pop();
        }
        Ok(())
    }

    fn check_index(&mut self, idx: &Arc<OwnedFd>) -> Result<()> {
        let mut entries = sys::read_dir(idx.as_fd())?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        let is_hex = |n: &[u8]| n.len() == 16 && n.iter().all(u8::is_ascii_hexdigit);
        for e in entries {
            let path = format!("layerfs-index/{}", bstr(&e.name));
            let st = sys::fstatat(idx.as_fd(), &e.name)?;
            if is_hex(&e.name) {
                if !st.is_reg() {
                    self.add(
                        "index-bad-entry",
                        path,
                        "an index copy that is not a regular file".into(),
                        None,
                    );
                } else if let Some(n) = std::str::from_utf8(&e.name)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s, 16).ok())
                {
                    debug_assert_eq!(index_name(n), e.name);
                    self.index.insert(n, (st.dev, st.ino));
                }
            } else if let Some(h) = e.name.strip_suffix(b".nlink").filter(|h| is_hex(h)) {
                let mut buf = [0u8; 64];
                let n = sys::openat(idx.as_fd(), &e.name, libc::O_RDONLY, 0)
                    .and_then(|fd| sys::pread(fd.as_fd(), &mut buf, 0));
                let ok = st.is_reg()
                    && n.ok()
                        .and_then(|n| {
                            std::str::from_utf8(&buf[..n])
                                .ok()?
                                .trim()
                                .parse::<u64>()
                                .ok()
                        })
                        .is_some();
                if !ok {
                    self.add(
                        "index-bad-nlink",
                        path,
                        format!("the link count record of {} is unreadable", bstr(h)),
                        None,
                    );
                }
            } else {
                self.add(
                    "index-unknown-entry",
                    path,
                    "not an index copy or link count record".into(),
                    None,
                );
            }
        }
        Ok(())
    }
}

/// Layerfs daemons with a live mount using `upper` or `work` (pid list), from their command
/// lines and mountinfo (no mount is touched).
fn users_of(upper: &Path, work: &Path) -> Vec<i32> {
    let same = |a: &Path, b: &Path| match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    };
    let mut v = Vec::new();
    let mounted: Vec<std::path::PathBuf> = super::live::layerfs_mounts()
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    for (pid, o) in super::live::daemons() {
        // a daemon whose mount is gone is exiting
        let live = mounted.contains(&o.mountpoint);
        let uses = o.upperdir.as_deref().is_some_and(|u| same(u, upper))
            || o.workdir.as_deref().is_some_and(|w| same(w, work));
        let uses = live && uses;
        if uses {
            v.push(pid);
        }
    }
    v
}

pub fn run(
    upper: &Path,
    work: &Path,
    lowerdir: Option<&str>,
    repair: bool,
    json: bool,
) -> Result<i32> {
    for d in [upper, work] {
        if !d.is_dir() {
            eprintln!("layerfs check: {}: not a directory", d.display());
            return Ok(2);
        }
    }
    let ov = match lowerdir {
        Some(l) => match super::open_stack(l, Some(upper.to_path_buf()), Some(work)) {
            Ok(ov) => Some(ov),
            Err(e) => {
                eprintln!("layerfs check: {e}");
                return Ok(2);
            }
        },
        None => {
            eprintln!("layerfs check: without --lowerdir, whiteouts and redirects are not checked against the lowers");
            None
        }
    };
    let mut c = Checker {
        ov: ov.as_ref(),
        problems: Vec::new(),
        index: HashMap::new(),
    };
    let wfd = sys::open_dir_path(work)?;
    if let Ok(idx) = sys::openat(
        wfd.as_fd(),
        b"layerfs-index",
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    ) {
        c.check_index(&Arc::new(idx))?;
    }
    let users = users_of(upper, work);
    let staging = if users.is_empty() {
        sys::openat(wfd.as_fd(), b"work", libc::O_RDONLY | libc::O_DIRECTORY, 0).ok()
    } else {
        None
    };
    if let Some(staging) = staging {
        let staging = Arc::new(staging);
        let mut entries = sys::read_dir(staging.as_fd())?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            c.add(
                "staging-leftover",
                format!("work/{}", bstr(&e.name)),
                "left in the staging directory by an interrupted operation".into(),
                Some(Fix::Remove(staging.clone(), e.name)),
            );
        }
    }
    let ufd = Arc::new(sys::open_dir_path(upper)?);
    let root = c.ov.map(|ov| ov.root());
    c.walk(&ufd, root.as_ref(), &mut Vec::new())?;

    if !users.is_empty() {
        eprintln!(
            "layerfs check: {}/work is in use by a live mount: staging not checked",
            work.display()
        );
    }
    if repair && !users.is_empty() {
        eprintln!(
            "layerfs check: in use by layerfs pid {}: not repairing (unmount first)",
            users
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else if repair {
        for p in c.problems.iter_mut() {
            let r = match &p.fix {
                Some(Fix::Remove(dir, name)) => match sys::fstatat(dir.as_fd(), name) {
                    Ok(st) if st.is_dir() => sys::open_subdir(dir.as_fd(), name)
                        .and_then(|sub| remove_contents(&sub))
                        .and_then(|_| sys::unlinkat(dir.as_fd(), name, true)),
                    Ok(_) => sys::unlinkat(dir.as_fd(), name, false),
                    Err(e) => Err(e),
                },
                Some(Fix::RemoveXattr(dir, name, x)) => sys::removexattr(dir.as_fd(), name, x),
                None => continue,
            };
            match r {
                // already gone through another name of the same inode
                Err(e) if e.is(libc::ENOENT) || e.is(libc::ENODATA) => p.repaired = true,
                Ok(()) => p.repaired = true,
                Err(e) => p.detail.push_str(&format!(" (repair failed: {e})")),
            }
        }
    }
    let remaining = c.problems.iter().filter(|p| !p.repaired).count();
    let repaired = c.problems.len() - remaining;
    if json {
        let items: Vec<String> = c
            .problems
            .iter()
            .map(|p| {
                format!(
                    "{{\"kind\":{},\"path\":{},\"detail\":{},\"repairable\":{},\"repaired\":{}}}",
                    json_str(p.kind),
                    json_str(&p.path),
                    json_str(&p.detail),
                    p.fix.is_some(),
                    p.repaired
                )
            })
            .collect();
        println!(
            "{{\"problems\":[{}],\"repaired\":{repaired},\"remaining\":{remaining}}}",
            items.join(",")
        );
    } else {
        let mut out = String::new();
        for p in &c.problems {
            let tag = if p.repaired {
                " [repaired]"
            } else if p.fix.is_some() {
                " [repairable]"
            } else {
                ""
            };
            let _ = writeln!(out, "{} {}: {}{tag}", p.kind, p.path, p.detail);
        }
        let _ = writeln!(
            out,
            "{} problems, {repaired} repaired, {remaining} remaining",
            c.problems.len()
        );
        print!("{out}");
    }
    Ok(if remaining == 0 { 0 } else { 1 })
}
