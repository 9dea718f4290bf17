//! setattr and xattrs (the kernel's inode.c and xattrs.c): copy up, then change the upper.

use crate::copy_up::Data;
use crate::error::{err, Error, Result};
use crate::idmap::{format_override, OverrideStat};
use crate::overlay::{Attr, Overlay};
use crate::sys::{self, TimeSpec};
use crate::whiteout;
use std::os::fd::AsFd;

#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: TimeSpec,
    pub mtime: TimeSpec,
    pub fh: Option<u64>,
}

impl Overlay {
    pub fn setattr(&self, ino: u64, a: SetAttr) -> Result<Attr> {
        self.check_writable()?;
        let node = self.node(ino)?;
        {
            let _g = self.tree.read();
            let data = match a.size {
                Some(n) => Data::UpTo(n),
                None => Data::Full,
            };
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
        self.attr_of(&node)
    }

    /// getattr through an open handle (works for unlinked-but-open files).
    pub fn getattr_fh(&self, ino: u64, fh: u64) -> Result<Attr> {
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
                let st = sys::fstat(fd.as_fd())?;
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
        self.attr_of(&node)
    }

    pub fn getxattr(&self, ino: u64, name: &[u8], size: u32) -> Result<Vec<u8>> {
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
        self.check_writable()?;
        if whiteout::is_private_xattr(name) {
            return err(libc::EPERM);
        }
        if self.cfg.noxattrs {
            return err(libc::ENOTSUP);
        }
        let node = self.node(ino)?;
        {
            let _g = self.tree.read();
            self.copy_up(&node, Data::Full)?;
        }
        let (dir, n) = self.upper_loc(&node)?;
        sys::setxattr(dir.as_fd(), &n, name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> Result<()> {
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
            let _g = self.tree.read();
            self.copy_up(&node, Data::Full)?;
        }
        let (dir, n) = self.upper_loc(&node)?;
        sys::removexattr(dir.as_fd(), &n, name)
    }
}
