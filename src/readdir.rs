//! Merged directory listing (the kernel's readdir.c): entries of the upper and every lower
//! directory of the stack, top first, without duplicates, whiteouts or overlay metadata
//! names, each with the same inode number that lookup/stat gives.

use crate::error::{err, Result};
use crate::inode::Node;
use crate::overlay::{Attr, Lookup, Overlay};
use crate::sys;
use crate::whiteout;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    /// S_IFMT bits.
    pub kind: u32,
    /// The first lower layer that can hold the entry: the layers above it (immutable) have
    /// neither the name nor a whiteout for it, so a lookup may skip them. 0 for upper
    /// entries and `.`/`..`.
    pub first_layer: usize,
    /// The readdir offset of the entry after this one: `.` 1, `..` 2, then a hash of the
    /// name (see [`Overlay::dir_snapshot`]).
    pub cookie: u64,
}

/// Readdir cookie of a name: the same in every snapshot of every handle, so offsets stay
/// valid across the kernel's readdir cache, concurrent streams and directory changes
/// (a stream never sees a name twice). Fixed-key SipHash, above `.`/`..`, below i64::MAX.
fn name_cookie(name: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(name);
    (h.finish() >> 2) + 3
}

/// The snapshot the streams of one directory read.
pub(crate) struct DirStream {
    len: usize,
    /// Last read.
    used: Mutex<Instant>,
    entries: Arc<Mutex<Vec<DirEntry>>>,
}

/// Entries kept in the snapshots of listings being read: past this, starting a listing
/// drops those not read for a second (a reader that stopped early leaves its snapshot
/// behind; it is taken again if the stream goes on after all).
const KEPT_ENTRIES: usize = 1 << 16;

fn dtype_to_kind(d: u8) -> Option<u32> {
    Some(match d {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_REG => libc::S_IFREG,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_CHR => libc::S_IFCHR,
        _ => return None,
    })
}

impl Overlay {
    /// The union's entries of directory `node` (without `.`/`..`). With `first_only`, stops
    /// at the first visible entry (emptiness checks).
    pub fn merged_entries(&self, node: &Arc<Node>, first_only: bool) -> Result<Vec<DirEntry>> {
        let (upper, upper_xwh, lowers) = {
            let s = node.s.lock();
            (s.upper_dir.clone(), s.upper_xwh, s.lowers.clone())
        };
        let mut dirs: Vec<(Arc<OwnedFd>, bool, bool, usize)> = Vec::new();
        if let Some(u) = upper {
            dirs.push((u, true, upper_xwh, 0));
        }
        for l in lowers {
            dirs.push((l.fd, false, l.xwh, l.layer));
        }
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut hidden: HashSet<Vec<u8>> = HashSet::new();
        let mut out = Vec::new();
        for (fd, is_upper, xwh, layer) in dirs {
            let layer_dev = sys::fstat(fd.as_fd())?.dev;
            let mut layer_wh: Vec<Vec<u8>> = Vec::new();
            for e in sys::read_dir(fd.as_fd())? {
                if let Some(t) = whiteout::whiteout_target(&e.name) {
                    layer_wh.push(t.to_vec());
                    continue;
                }
                if whiteout::is_hidden_name(&e.name) {
                    continue;
                }
                if seen.contains(&e.name) || hidden.contains(&e.name) {
                    continue;
                }
                let mut kind = dtype_to_kind(e.dtype);
                let need_stat = kind.is_none()
                    || kind == Some(libc::S_IFCHR)
                    || (xwh && kind == Some(libc::S_IFREG));
                if need_stat {
                    let st = match sys::fstatat(fd.as_fd(), &e.name) {
                        Ok(st) => st,
                        Err(_) => continue, // vanished
                    };
                    if whiteout::is_whiteout_stat(&st) {
                        layer_wh.push(e.name.clone());
                        continue;
                    }
                    if xwh && st.is_reg() && st.size == 0 {
                        let is_xwh = whiteout::XWHITEOUT_XATTRS
                            .iter()
                            .any(|x| matches!(sys::getxattr(fd.as_fd(), &e.name, x), Ok(Some(_))));
                        if is_xwh {
                            layer_wh.push(e.name.clone());
                            continue;
                        }
                    }
                    kind = Some(st.kind());
                }
                let kind = kind.unwrap_or(libc::S_IFREG);
                seen.insert(e.name.clone());
                // Inode number: objects that appear first in a lower layer take that
                // layer's number (as lookup does); upper objects may carry an origin, so
                // they go through the full lookup.
                let ino = if is_upper && kind == libc::S_IFDIR {
                    match self.resolve(node, &e.name) {
                        Ok(Lookup::Found(f)) => f.st_ino,
                        _ => continue,
                    }
                } else if is_upper {
                    self.read_origin(&fd, &e.name)
                        .unwrap_or_else(|| self.layers.compose_ino(layer_dev, e.ino))
                } else {
                    self.layers.compose_ino(layer_dev, e.ino)
                };
                out.push(DirEntry {
                    name: e.name,
                    ino,
                    kind,
                    first_layer: if is_upper { 0 } else { layer },
                    cookie: 0,
                });
                if first_only {
                    return Ok(out);
                }
            }
            hidden.extend(layer_wh);
        }
        Ok(out)
    }

    /// Snapshot of a directory for one open directory stream: `.`, `..`, then the union in
    /// cookie order.
    pub fn dir_snapshot(&self, node: &Arc<Node>) -> Result<Vec<DirEntry>> {
        let _g = self.tree.read_recursive();
        let mut v = Vec::new();
        v.push(DirEntry {
            name: b".".to_vec(),
            ino: node.st_ino,
            kind: libc::S_IFDIR,
            first_layer: 0,
            cookie: 1,
        });
        let parent_ino = node.primary().map(|(p, _)| p.st_ino).unwrap_or(node.st_ino);
        v.push(DirEntry {
            name: b"..".to_vec(),
            ino: parent_ino,
            kind: libc::S_IFDIR,
            first_layer: 0,
            cookie: 2,
        });
        let mut rest = self.merged_entries(node, false)?;
        for e in rest.iter_mut() {
            e.cookie = name_cookie(&e.name);
        }
        rest.sort_unstable_by_key(|e| e.cookie);
        // A hash collision (vanishingly rare) must still give distinct, increasing cookies.
        for i in 1..rest.len() {
            if rest[i].cookie <= rest[i - 1].cookie {
                rest[i].cookie = rest[i - 1].cookie + 1;
            }
        }
        v.extend(rest);
        Ok(v)
    }

    /// The listing that reads of directory `ino` at position `off` use. Directories are
    /// not opened (OPENDIR answers ENOSYS, so the kernel sends no OPENDIR/RELEASEDIR at
    /// all and caches every listing): the streams of a directory share one snapshot,
    /// taken afresh at position 0 (a new stream, or rewinddir, so changes made since
    /// become visible as POSIX asks) and when there is none. Offsets are per-name
    /// cookies, valid in every snapshot, so a stream never lists a name twice even when
    /// another stream refreshed the snapshot under it.
    fn dir_stream(&self, ino: u64, off: u64) -> Result<Arc<Mutex<Vec<DirEntry>>>> {
        if off != 0 {
            if let Some(s) = self.dir_streams.get(&ino) {
                *s.used.lock() = Instant::now();
                return Ok(s.entries.clone());
            }
        }
        let node = self.node(ino)?;
        if !node.is_dir() {
            return err(libc::ENOTDIR);
        }
        let entries = self.dir_snapshot(&node)?;
        let len = entries.len();
        let snap = Arc::new(Mutex::new(entries));
        if self.listing_entries_kept() + len > KEPT_ENTRIES {
            let idle = Duration::from_secs(1);
            self.dir_streams
                .retain(|_, s| s.used.lock().elapsed() < idle);
        }
        let stream = DirStream {
            len,
            used: Mutex::new(Instant::now()),
            entries: snap.clone(),
        };
        self.dir_streams.insert(ino, stream);
        Ok(snap)
    }

    /// Entries held in the snapshots of directory listings being read.
    pub fn listing_entries_kept(&self) -> usize {
        self.dir_streams.iter().map(|s| s.len).sum()
    }

    /// Run `f` on the entries of directory `ino` after position `off` (held locked: the
    /// kernel may read the same directory through several streams at once). When nothing
    /// is left (the end of the stream), the snapshot is dropped instead, unless another
    /// stream replaced it meanwhile; a stream left unfinished keeps it until the next one
    /// starts or the kernel forgets the directory.
    fn with_dir_entries(&self, ino: u64, off: u64, f: impl FnOnce(&[DirEntry])) -> Result<()> {
        let snap = self.dir_stream(ino, off)?;
        let e = snap.lock();
        let start = e.partition_point(|d| d.cookie <= off);
        if start < e.len() {
            f(&e[start..]);
        } else {
            drop(e);
            self.dir_streams
                .remove_if(&ino, |_, s| Arc::ptr_eq(&s.entries, &snap));
        }
        Ok(())
    }

    /// Feed the entries of directory `ino` from position `off` on to `add(next_offset,
    /// entry)` until it returns true (buffer full).
    pub fn readdir(
        &self,
        ino: u64,
        off: u64,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        self.with_dir_entries(ino, off, |rest| {
            for d in rest {
                if add(d.cookie, d) {
                    break;
                }
            }
        })
    }

    /// readdirplus: like [`Overlay::readdir`], but each entry (except `.` and `..`) is
    /// looked up, taking a kernel reference. `add` returns true when the buffer is full;
    /// the reference taken for an entry that did not fit is dropped again.
    pub fn readdirplus(
        &self,
        ino: u64,
        off: u64,
        mut add: impl FnMut(u64, &DirEntry, Option<(&Arc<Node>, &Attr)>) -> bool,
    ) -> Result<()> {
        // (the lookups never take the snapshot's lock)
        self.with_dir_entries(ino, off, |rest| {
            for d in rest {
                if d.name == b"." || d.name == b".." {
                    if add(d.cookie, d, None) {
                        break;
                    }
                    continue;
                }
                match self.lookup_from(ino, &d.name, d.first_layer) {
                    Ok((node, attr)) => {
                        if add(d.cookie, d, Some((&node, &attr))) {
                            self.forget(node.id, 1);
                            break;
                        }
                    }
                    // Gone since the snapshot: skip it, as a fresh readdir would.
                    Err(_) => continue,
                }
            }
        })
    }
}
