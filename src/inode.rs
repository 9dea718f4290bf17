//! Overlay inodes: what the union knows about one object, and the table of inodes the
//! kernel holds references to (FUSE node id == stable st_ino, root == 1).

use dashmap::DashMap;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

pub const ROOT_ID: u64 = 1;

/// A real directory in a lower layer that takes part in a merged directory.
#[derive(Debug, Clone)]
pub struct LowerDir {
    /// Index into `Layers::lowers`.
    pub layer: usize,
    pub fd: Arc<OwnedFd>,
    /// The directory is marked opaque=x: it may hold xattr whiteouts.
    pub xwh: bool,
}

/// Where a lower non-directory lives: (layer, real parent dir, name).
#[derive(Debug, Clone)]
pub struct LowerFile {
    pub layer: usize,
    pub dir: Arc<OwnedFd>,
    pub name: Vec<u8>,
    /// Real st_nlink of the lower inode (for hard-link handling).
    pub nlink: u64,
}

#[derive(Debug)]
pub struct NodeState {
    /// S_IFMT bits.
    pub kind: u32,
    /// Primary name: parent node and name in it (None for the root).
    pub parent: Option<Arc<Node>>,
    pub name: Vec<u8>,
    /// Further names of the same object (hard links), beyond the primary one.
    pub aliases: Vec<(Arc<Node>, Vec<u8>)>,
    /// Directories: the upper directory, once it exists.
    pub upper_dir: Option<Arc<OwnedFd>>,
    /// Directories: the upper directory is marked opaque=x (may hold xattr whiteouts).
    pub upper_xwh: bool,
    /// Directories: the upper directory holds no `.wh.NAME` file, so a name missing from it
    /// needs no second look for one: it was made empty by this daemon (copy-up, mkdir),
    /// which writes `.wh.` files only once char 0/0 whiteouts have failed
    /// (`Overlay::chardev_whiteouts`, checked with the flag), and names starting `.wh.`
    /// cannot be made through the mount.
    pub upper_whfree: bool,
    /// Non-directories: the object exists in the upper at (parent's upper dir, name).
    pub in_upper: bool,
    /// Directories: the lower directories merged below the upper, top first.
    pub lowers: Vec<LowerDir>,
    /// Non-directories: the lower object (data source until copy-up; origin after).
    pub lower: Option<LowerFile>,
    /// Directories: path of this directory's lower dirs from the lower layers' roots
    /// (differs from the union path after a directory rename: the redirect).
    pub lower_path: Vec<u8>,
    /// Directories: carries a redirect xattr already.
    pub has_redirect: bool,
    /// Non-directories: a copy of a hard-linked lower file lives in the index.
    pub indexed: bool,
    /// Something with this name exists (possibly hidden) in a lower layer below the visible
    /// object: removing the name must leave a whiteout.
    pub lower_present: bool,
    /// The object has been removed from the union (kept while the kernel holds it).
    pub deleted: bool,
    /// Non-directories: the upper object lost its last name while the kernel still held
    /// the inode; it lives on in the workdir under this name (so the real inode, and with
    /// it the inode number, is not freed and reused) until the kernel forgets the inode.
    pub orphan: Option<Vec<u8>>,
}

/// The names of a non-directory: one primary name (where its upper copy lives once it is
/// in the upper) and the other names it is known by, each (parent, name) at most once in
/// either place.
impl NodeState {
    pub fn is_primary(&self, parent: u64, name: &[u8]) -> bool {
        self.parent.as_ref().is_some_and(|p| p.id == parent) && self.name == name
    }
    pub fn has_name(&self, parent: u64, name: &[u8]) -> bool {
        self.is_primary(parent, name)
            || self
                .aliases
                .iter()
                .any(|(p, n)| p.id == parent && n.as_slice() == name)
    }
    /// Add (parent, name) as another name, unless it is known already.
    pub fn add_alias(&mut self, parent: &Arc<Node>, name: &[u8]) {
        if !self.has_name(parent.id, name) {
            self.aliases.push((parent.clone(), name.to_vec()));
        }
    }
    /// Make (parent, name) the primary name; the old primary stays as an alias.
    pub fn set_primary(&mut self, parent: &Arc<Node>, name: &[u8]) {
        if self.is_primary(parent.id, name) {
            return;
        }
        self.aliases
            .retain(|(p, n)| !(p.id == parent.id && n.as_slice() == name));
        if let Some(old) = self.parent.replace(parent.clone()) {
            let old_name = std::mem::replace(&mut self.name, name.to_vec());
            self.aliases.push((old, old_name));
        } else {
            self.name = name.to_vec();
        }
    }
}

#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub st_ino: u64,
    pub generation: AtomicU64,
    pub lookups: AtomicU64,
    pub s: Mutex<NodeState>,
    /// Serializes copy-up of this object.
    pub copy_lock: Mutex<()>,
    /// How this inode's open files do I/O (FUSE passthrough bookkeeping).
    pub io: Mutex<IoState>,
    /// What is known absent from the object (`attr::NO_CAPS`, `attr::NO_SETID`), so that
    /// a write need not look for privileges to drop.
    pub privs: AtomicU8,
}

/// The kernel allows one backing file per inode while any passthrough open is live, and no
/// passthrough open while a page-cached open is live; this tracks both.
#[derive(Debug, Default)]
pub struct IoState {
    /// The backing file registered for passthrough and whether it is the upper copy.
    pub backing: Option<(Arc<fuser::BackingId>, bool)>,
    pub pt_opens: u32,
    pub cached_opens: u32,
    /// The kernel's page cache of this file may be kept at the next open: set by a
    /// page-cached open, cleared when a passthrough open starts (passthrough writes bypass
    /// the page cache).
    pub cache_valid: bool,
    /// Open handles still on the lower file (opened before a copy-up, not used since).
    pub stale_opens: u32,
    /// Opens waiting for the opens passed through to the lower file to be closed, and how
    /// many of them are for writing (see `Overlay::open_must_wait`).
    pub waiters: Vec<Waiter>,
    pub writers_waiting: u32,
}

/// An open answered later: `run` answers it (once the inode no longer has opens passed
/// through to its lower file, or at its deadline).
pub struct Waiter {
    pub seq: u64,
    pub write: bool,
    pub run: Box<dyn FnOnce() + Send>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Waiter({}, write {})", self.seq, self.write)
    }
}

impl Node {
    pub fn new(id: u64, st_ino: u64, state: NodeState, generation: u64) -> Arc<Node> {
        Arc::new(Node {
            id,
            st_ino,
            generation: AtomicU64::new(generation),
            lookups: AtomicU64::new(0),
            s: Mutex::new(state),
            copy_lock: Mutex::new(()),
            io: Mutex::new(IoState::default()),
            privs: AtomicU8::new(0),
        })
    }
    pub fn kind(&self) -> u32 {
        self.s.lock().kind
    }
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }
    /// Primary (parent, name), if any.
    pub fn primary(&self) -> Option<(Arc<Node>, Vec<u8>)> {
        let s = self.s.lock();
        s.parent.clone().map(|p| (p, s.name.clone()))
    }
}

/// The inodes the kernel currently references, by node id.
#[derive(Default)]
pub struct InodeTable {
    map: DashMap<u64, Arc<Node>>,
    next_gen: AtomicU64,
    /// Nodes in the table, and the most there were since memory was last given back.
    live: AtomicUsize,
    peak: AtomicUsize,
}

/// Give memory back once at least this many nodes (and half the peak) were forgotten.
const TRIM_AFTER: usize = 16384;

impl InodeTable {
    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.map.get(&id).map(|n| n.clone())
    }
    pub fn insert(&self, node: Arc<Node>) {
        if self.map.insert(node.id, node).is_none() {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
    }
    pub fn next_generation(&self) -> u64 {
        self.next_gen.fetch_add(1, Ordering::Relaxed) + 1
    }
    /// Get the node for `id` or insert the one `make` builds, and take one kernel
    /// reference on it, atomically with respect to [`InodeTable::forget`].
    pub fn get_or_insert_ref(
        &self,
        id: u64,
        make: impl FnOnce() -> Arc<Node>,
    ) -> (Arc<Node>, bool) {
        match self.map.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(o) => {
                o.get().lookups.fetch_add(1, Ordering::AcqRel);
                (o.get().clone(), false)
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let n = make();
                n.lookups.fetch_add(1, Ordering::AcqRel);
                v.insert(n.clone());
                let live = self.live.fetch_add(1, Ordering::Relaxed) + 1;
                self.peak.fetch_max(live, Ordering::Relaxed);
                (n, true)
            }
        }
    }
    /// Drop `n` kernel references; removes the node at zero (the root is never removed)
    /// and returns it then.
    pub fn forget(&self, id: u64, n: u64) -> Option<Arc<Node>> {
        if id == ROOT_ID {
            return None;
        }
        let mut removed = None;
        if let dashmap::mapref::entry::Entry::Occupied(o) = self.map.entry(id) {
            let node = o.get();
            let prev = node.lookups.load(Ordering::Acquire);
            let new = prev.saturating_sub(n);
            node.lookups.store(new, Ordering::Release);
            if new == 0 {
                removed = Some(o.remove());
            }
        }
        if removed.is_some() {
            let live = self.live.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
            let peak = self.peak.load(Ordering::Relaxed);
            // The kernel dropped most of its inodes (memory pressure, drop_caches):
            // return the memory instead of keeping the high-water mark forever.
            if peak >= live + TRIM_AFTER
                && live < peak / 2
                && self
                    .peak
                    .compare_exchange(peak, live, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                self.map.shrink_to_fit();
                crate::sys::malloc_trim();
            }
        }
        removed
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
