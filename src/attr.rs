//! setattr and xattrs (the kernel's inode.c and xattrs.c): copy up, then change the upper.

use crate::copy_up::Data;
use crate::dir::Caller;
use crate::error::{err, Error, Result};
use crate::idmap::{format_override, OverrideStat};
use crate::inode::Node;
use crate::overlay::{Attr, Overlay};
use crate::sys::{self, TimeSpec};
use crate::whiteout;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
    pub fh: Option<u64>,
    /// The process asking, for a request from the kernel: set-id bits and file
    /// capabilities are then dropped as the VFS drops them (see [`mode_after_kill`]).
    /// A request that changes nothing is the kernel's `file_remove_privs` before a write
    /// (FUSE_HANDLE_KILLPRIV_V2 leaves the killing to the daemon).
    pub who: Option<Caller>,
}

/// The file capability xattr the VFS removes on write, truncate and chown.
const CAPS_XATTR: &[u8] = b"security.capability";
/// `Node::privs` bits: known to have no `security.capability` / no set-id bits.
pub const NO_CAPS: u8 = 1;
pub const NO_SETID: u8 = 2;
const SETID: u32 = libc::S_ISUID | libc::S_ISGID;
/// Capability number of CAP_FSETID.
const CAP_FSETID: u32 = 4;
/// The initial user namespace's inode number (the kernel's PROC_USER_INIT_INO).
const INIT_USER_NS: &str = "user:[4026531837]";

/// Why the VFS drops privileges of a file: a write, a truncate (truncate(2), ftruncate(2),
/// open with O_TRUNC), or a chown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    Write,
    Truncate,
    Chown,
}

/// What the VFS's rules look at in the caller's credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cred {
    pub fsgid: u32,
    pub groups: Vec<u32>,
    /// CAP_FSETID in the initial user namespace (the kernel's `capable()`).
    pub fsetid: bool,
    /// CAP_FSETID over the mount's files (`capable_wrt_inode_uidgid`): held in the initial
    /// user namespace or in the daemon's.
    pub fsetid_here: bool,
}

/// The mode the VFS leaves on a file of mode `mode` and group `gid` (as the kernel sees
/// them) after `kill` by a caller with `cred`, as the kernel overlay does it on its upper
/// (`setattr_should_drop_suidgid`, `setattr_should_drop_sgid`, `chown_common`):
/// - write and truncate: regular files only, and only when the caller lacks CAP_FSETID:
///   set-user-id always, set-group-id when group-execute is set or the caller is not in
///   the file's group;
/// - chown: every non-directory, whoever the caller: set-user-id always, set-group-id
///   when group-execute is set or the caller is neither in the file's group (before the
///   change) nor holds CAP_FSETID.
pub fn mode_after_kill(mode: u32, gid: u32, kill: Kill, cred: &Cred) -> u32 {
    let kind = mode & libc::S_IFMT;
    let applies = match kill {
        Kill::Chown => kind != libc::S_IFDIR,
        Kill::Write | Kill::Truncate => kind == libc::S_IFREG && !cred.fsetid,
    };
    if !applies || mode & SETID == 0 {
        return mode;
    }
    let in_group_or_capable = cred.fsgid == gid || cred.groups.contains(&gid) || cred.fsetid_here;
    let mut m = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 || !in_group_or_capable {
        m &= !libc::S_ISGID;
    }
    m
}

/// The supplementary groups and whether CAP_FSETID is effective, from the text of
/// `/proc/PID/status`; None when a line is missing or malformed.
pub fn parse_status(status: &str) -> Option<(Vec<u32>, bool)> {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    let groups = field("Groups:")?
        .split_whitespace()
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    let capeff = u64::from_str_radix(field("CapEff:")?, 16).ok()?;
    Some((groups, capeff & (1 << CAP_FSETID) != 0))
}

/// The credentials of the process that made a request (its thread id is the request's
/// pid). Where /proc does not tell (the process is gone, another pid namespace), the
/// caller counts as holding no capability and no supplementary group: more bits are
/// dropped, never fewer.
fn caller_cred(who: &Caller) -> Cred {
    let mut c = Cred {
        fsgid: who.gid,
        ..Default::default()
    };
    if who.pid == 0 {
        return c;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", who.pid)) else {
        return c;
    };
    let Some((groups, fsetid)) = parse_status(&status) else {
        return c;
    };
    c.groups = groups;
    if fsetid {
        let ns = |p: &str| std::fs::read_link(p).ok();
        let theirs = ns(&format!("/proc/{}/ns/user", who.pid));
        c.fsetid = theirs.as_deref() == Some(std::path::Path::new(INIT_USER_NS));
        c.fsetid_here = c.fsetid || (theirs.is_some() && theirs == ns("/proc/self/ns/user"));
    }
    c
}

impl Overlay {
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        self.check_writable()?;
        let node = self.node(ino)?;
        let data = match a.size {
            Some(n) => Data::UpTo(n),
            None => Data::Full,
        };
        if self.cfg.noopen {
            // (also a lower file unlinked since it was opened: see `copy_up_held`)
            self.copy_up_held(&node, data)?;
        } else {
            let _g = self.tree.read_recursive();
            self.copy_up(&node, data)?;
        }
        let (dir, name) = self.upper_loc(&node)?;
        if let Some(size) = a.size {
            if node.is_dir() {
                return err(libc::EISDIR);
            }
            let by_handle = a.fh.and_then(|fh| self.handle(fh).ok());
            match by_handle.as_ref().and_then(|h| self.file_fd(h).ok()) {
                Some(fd) => sys::ftruncate(fd.as_fd(), size)?,
                None => {
                    let fd = sys::openat(dir.as_fd(), &name, libc::O_WRONLY, 0)?;
                    sys::ftruncate(fd.as_fd(), size)?;
                }
            }
        }
        if a.mode.is_some() {
            // chmod may add set-id bits
            node.privs.fetch_and(!NO_SETID, Ordering::AcqRel);
        } else if let Some(who) = &a.who {
            // Decided on the state before a chown (the VFS looks at the old group).
            let kill = if a.size.is_some() {
                Some(Kill::Truncate)
            } else if a.uid.is_some() || a.gid.is_some() {
                Some(Kill::Chown)
            } else if a.atime.is_none() && a.mtime.is_none() {
                Some(Kill::Write)
            } else {
                None
            };
            if let Some(kill) = kill {
                self.kill_privs(&node, kill, who, None)?;
            }
        }
        // chown to a shown id no triple covers is refused, as for the kernel's idmapped mounts.
        let uid = match a.uid {
            Some(u) => Some(
                self.ids
                    .stored_uid(u)
                    .ok_or_else(|| Error::from_errno(libc::EINVAL))?,
            ),
            None => None,
        };
        let gid = match a.gid {
            Some(g) => Some(
                self.ids
                    .stored_gid(g)
                    .ok_or_else(|| Error::from_errno(libc::EINVAL))?,
            ),
            None => None,
        };
        if let Some(x) = self.ids.override_xattr() {
            if uid.is_some() || gid.is_some() || a.mode.is_some() {
                // Owner and mode live in the override xattr (stored ids), not in the inode.
                let mut cur = sys::fstatat(dir.as_fd(), &name)?;
                self.apply_override(&mut cur, &dir, &name);
                let o = OverrideStat {
                    uid: uid.unwrap_or(cur.uid),
                    gid: gid.unwrap_or(cur.gid),
                    mode: a.mode.unwrap_or(cur.mode) & 0o7777,
                    kind: Some(cur.kind()),
                };
                sys::setxattr(dir.as_fd(), &name, x, &format_override(&o), 0)?;
            }
        } else {
            if uid.is_some() || gid.is_some() {
                sys::fchownat(dir.as_fd(), &name, uid, gid)?;
            }
            if let Some(mode) = a.mode {
                if node.kind() == libc::S_IFLNK {
                    return err(libc::EOPNOTSUPP);
                }
                sys::fchmodat(dir.as_fd(), &name, mode)?;
            }
        }
        if a.atime.is_some() || a.mtime.is_some() {
            sys::utimensat(dir.as_fd(), &name, a.atime, a.mtime)?;
        }
        let attr = self.attr_of(&node)?;
        if a.mode.is_some() && attr.st.mode & SETID == 0 {
            // (tar's chmod after the write) later writes need no look again
            node.privs.fetch_or(NO_SETID, Ordering::AcqRel);
        }
        Ok(attr)
    }

    /// Drop the set-id bits and the file capability of `node` as the VFS does when `who`
    /// writes, truncates or chowns it (see [`mode_after_kill`]; the capability goes
    /// whoever the caller). `fsetid`: whether the caller holds CAP_FSETID, when the kernel
    /// said so (a WRITE's kill flag); else it is read from /proc, only for a file with
    /// set-id bits. What is known absent is remembered on the node (`Node::privs`), so
    /// writes to ordinary files cost no syscall here. Returns whether the mode changed.
    pub(crate) fn kill_privs(
        &self,
        node: &Node,
        kill: Kill,
        who: &Caller,
        fsetid: Option<bool>,
    ) -> Result<bool> {
        let known = node.privs.load(Ordering::Acquire);
        let check_caps = known & NO_CAPS == 0;
        let check_mode = known & NO_SETID == 0 && (kill == Kill::Chown || fsetid != Some(true));
        if !check_caps && !check_mode {
            return Ok(false);
        }
        if crate::file::data_on_lower(node) {
            // not copied up: nothing was written (nor may be changed) here
            return Ok(false);
        }
        let (dir, name) = self.real_loc(node)?;
        let mut had_caps = false;
        if check_caps {
            if sys::getxattr(dir.as_fd(), &name, CAPS_XATTR)?.is_some() {
                had_caps = true;
                match sys::removexattr(dir.as_fd(), &name, CAPS_XATTR) {
                    Err(e) if !e.is(libc::ENODATA) => return Err(e),
                    _ => {}
                }
            }
            node.privs.fetch_or(NO_CAPS, Ordering::AcqRel);
        }
        if !check_mode {
            return Ok(false);
        }
        let a = self.attr_of(node)?;
        let mut mode = a.st.mode;
        let mut changed = false;
        if mode & SETID != 0 {
            let mut cred = caller_cred(who);
            if let Some(f) = fsetid {
                cred.fsetid = f;
            }
            // A SETATTR without change (kill == Write, fsetid unknown) comes from the
            // VFS's file_remove_privs before a write, or from chown(f, -1, -1). For a
            // caller holding CAP_FSETID the write path sends one only to remove a file
            // capability: with none there, it is the chown, which drops set-user-id
            // whoever asks. (With a capability present both remain possible; the
            // write's rules, which keep the mode, are applied.)
            let kill = if kill == Kill::Write && fsetid.is_none() && cred.fsetid && !had_caps {
                Kill::Chown
            } else {
                kill
            };
            let new = mode_after_kill(mode, a.st.gid, kill, &cred);
            if new != mode {
                log::debug!(
                    "{kill:?} by uid {} drops mode {:o} to {:o} of inode {}",
                    who.uid,
                    mode & 0o7777,
                    new & 0o7777,
                    node.st_ino
                );
                self.setattr(
                    node.id,
                    SetAttr {
                        mode: Some(new & 0o7777),
                        ..Default::default()
                    },
                )?;
                mode = new;
                changed = true;
            }
        }
        if mode & SETID == 0 {
            node.privs.fetch_or(NO_SETID, Ordering::AcqRel);
        }
        Ok(changed)
    }

    /// getattr through an open handle (works for unlinked-but-open files).
    pub fn getattr_fh(&self, ino: u64, fh: u64) -> Result<Attr> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        let node = self.node(ino)?;
        if let Ok(h) = self.handle(fh) {
            if h.reads_old_lower() {
                // Still reading the lower file after a copy-up: the node's attributes.
                let mut attr = self.attr_of(&node)?;
                if node.s.lock().deleted {
                    attr.st.nlink = 0;
                }
                return Ok(attr);
            }
            if let Ok(fd) = self.file_fd(&h) {
                let mut st = sys::fstat(fd.as_fd())?;
                // The union's owner and mode, as for a lookup by name: override_stat of
                // the open object, then stored ids mapped to shown ids.
                self.present(&mut st, &fd, b"");
                let mut attr = Attr {
                    st,
                    ino: node.st_ino,
                };
                let deleted = node.s.lock().deleted;
                attr.st.nlink = match self.attr_of(&node) {
                    Ok(a) if !deleted => a.st.nlink,
                    _ => 0,
                };
                return Ok(attr);
            }
        }
        // No such handle (handle 0 with `noopen`): as without one.
        self.getattr(ino)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<Vec<u8>> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        if whiteout::is_private_xattr(name) {
            return err(libc::ENODATA);
        }
        if self.cfg.noxattrs {
            return err(libc::ENOTSUP);
        }
        let node = self.node(ino)?;
        let (dir, n) = self.real_loc(&node)?;
        sys::getxattr_raw(dir.as_fd(), &n, name, size as usize)
    }

    /// The NUL-separated name list the user sees (private names removed).
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        if self.cfg.noxattrs {
            return Ok(Vec::new());
        }
        let node = self.node(ino)?;
        let (dir, n) = self.real_loc(&node)?;
        let mut out = Vec::new();
        for x in sys::listxattr(dir.as_fd(), &n)? {
            if !whiteout::is_private_xattr(&x) {
                out.extend_from_slice(&x);
                out.push(0);
            }
        }
        Ok(out)
    }

    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> Result<()> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        self.check_writable()?;
        if whiteout::is_private_xattr(name) {
            return err(libc::EPERM);
        }
        if self.cfg.noxattrs {
            return err(libc::ENOTSUP);
        }
        let node = self.node(ino)?;
        {
            let _g = self.tree.read_recursive();
            self.copy_up(&node, Data::Full)?;
        }
        let (dir, n) = self.upper_loc(&node)?;
        if name == CAPS_XATTR {
            node.privs.fetch_and(!NO_CAPS, Ordering::AcqRel);
        }
        sys::setxattr(dir.as_fd(), &n, name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        self.check_writable()?;
        if whiteout::is_private_xattr(name) {
            return err(libc::ENODATA);
        }
        let node = self.node(ino)?;
        // Nothing to copy up for an xattr the object does not have.
        let (rdir, rn) = self.real_loc(&node)?;
        if sys::getxattr(rdir.as_fd(), &rn, name)?.is_none() {
            return err(libc::ENODATA);
        }
        {
            let _g = self.tree.read_recursive();
            self.copy_up(&node, Data::Full)?;
        }
        let (dir, n) = self.upper_loc(&node)?;
        sys::removexattr(dir.as_fd(), &n, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: u32 = libc::S_IFREG;
    const GID: u32 = 100;

    fn cred(fsgid: u32, groups: &[u32], fsetid: bool) -> Cred {
        Cred {
            fsgid,
            groups: groups.to_vec(),
            fsetid,
            fsetid_here: fsetid,
        }
    }

    /// The VFS's table (setattr_should_drop_suidgid / chown_common), one row per case:
    /// (file mode, cause, caller, mode after).
    #[test]
    fn kill_rules_follow_the_vfs() {
        let member = cred(GID, &[], false);
        let supplementary = cred(7, &[3, GID], false);
        let outsider = cred(7, &[3], false);
        let root = cred(0, &[], true);
        let rows: &[(u32, Kill, &Cred, u32)] = &[
            // write: set-user-id always goes for a caller without CAP_FSETID
            (0o4755, Kill::Write, &member, 0o0755),
            (0o4755, Kill::Write, &outsider, 0o0755),
            (0o4755, Kill::Write, &root, 0o4755),
            // set-group-id with group-execute: goes for anyone without CAP_FSETID
            (0o2775, Kill::Write, &member, 0o0775),
            (0o2775, Kill::Write, &outsider, 0o0775),
            (0o2775, Kill::Write, &root, 0o2775),
            // set-group-id without group-execute: only for a caller outside the group
            (0o2766, Kill::Write, &member, 0o2766),
            (0o2766, Kill::Write, &supplementary, 0o2766),
            (0o2766, Kill::Write, &outsider, 0o0766),
            (0o6766, Kill::Write, &outsider, 0o0766),
            (0o6766, Kill::Write, &member, 0o2766),
            // truncate: the same rules
            (0o6777, Kill::Truncate, &outsider, 0o0777),
            (0o6766, Kill::Truncate, &member, 0o2766),
            (0o6777, Kill::Truncate, &root, 0o6777),
            // chown: set-user-id whoever the caller; set-group-id with group-execute, or
            // without when the caller is neither in the group nor holds CAP_FSETID
            (0o6755, Kill::Chown, &root, 0o0755),
            (0o6745, Kill::Chown, &root, 0o2745),
            (0o6745, Kill::Chown, &member, 0o2745),
            (0o6745, Kill::Chown, &outsider, 0o0745),
            (0o2775, Kill::Chown, &root, 0o0775),
            // nothing to drop
            (0o0755, Kill::Write, &outsider, 0o0755),
            (0o1777, Kill::Write, &outsider, 0o1777),
        ];
        for &(mode, kill, c, want) in rows {
            let got = mode_after_kill(REG | mode, GID, kill, c);
            assert_eq!(got, REG | want, "{mode:o} {kill:?} {c:?}");
        }
    }

    #[test]
    fn kill_applies_to_the_right_file_types() {
        let outsider = cred(7, &[], false);
        let dir = libc::S_IFDIR | 0o2775;
        for kill in [Kill::Write, Kill::Truncate, Kill::Chown] {
            assert_eq!(mode_after_kill(dir, GID, kill, &outsider), dir, "{kill:?}");
        }
        // a FIFO with set-id bits keeps them on write, loses them on chown
        let fifo = libc::S_IFIFO | 0o6666;
        assert_eq!(mode_after_kill(fifo, GID, Kill::Write, &outsider), fifo);
        assert_eq!(
            mode_after_kill(fifo, GID, Kill::Chown, &outsider),
            libc::S_IFIFO | 0o0666
        );
    }

    #[test]
    fn proc_status_parsed() {
        let s = "Name:\tbash\nUid:\t0\t0\t0\t0\nGroups:\t4 24 27 \nCapInh:\t0000000000000000\n\
                 CapEff:\t000001ffffffffff\n";
        assert_eq!(parse_status(s), Some((vec![4, 24, 27], true)));
        let s = "Groups:\t\nCapEff:\t0000000000000000\n";
        assert_eq!(parse_status(s), Some((vec![], false)));
        // CAP_FSETID alone (bit 4)
        assert_eq!(
            parse_status("Groups:\nCapEff:\t0000000000000010\n"),
            Some((vec![], true))
        );
        assert_eq!(parse_status("Groups:\t1 x\nCapEff:\t0\n"), None);
        assert_eq!(parse_status("Groups:\t1\n"), None);
    }
}
