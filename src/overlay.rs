//! The overlay filesystem object: layers, workdir, inode table, and the lookup through the
//! layer stack (the kernel's namei.c). Operations live in the sibling modules as
//! `impl Overlay` blocks and all return `Result<T, Error>`, so they run without a mount.

use crate::error::{err, Error, Result};
use crate::inode::{InodeTable, LowerDir, LowerFile, Node, NodeState, ROOT_ID};
use crate::layer::Layers;
use crate::options::Options;
use crate::sys::{self, Stat};
use crate::whiteout::{self, OpaqueValue, Redirect};
use dashmap::DashMap;
use parking_lot::RwLock;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// Which xattr namespace layerfs writes its overlay metadata in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XattrNs {
    /// `trusted.overlay.*` (real root): readable by the kernel overlay.
    Trusted,
    /// `user.overlay.*` (+ `user.fuseoverlayfs.*` for opaque): rootless.
    User,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub fsync: bool,
    pub redirect_dir: bool,
    pub static_nlink: bool,
    pub noxattrs: bool,
    pub read_only: bool,
    /// chown new objects to the caller (the daemon can change owners).
    pub chown_new: bool,
    /// `passthrough=all`: read-only opens of lower files of a writable mount may be passed
    /// through to the lower file.
    pub lower_passthrough: bool,
    /// `noopen`: regular files are opened by the kernel alone; I/O comes by inode.
    pub noopen: bool,
}

/// Counters for SIGUSR1 dumps and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub copy_ups: AtomicU64,
    pub copy_up_bytes: AtomicU64,
    pub whiteouts: AtomicU64,
    /// FUSE requests by type.
    pub requests: crate::counters::Requests,
}

pub struct Overlay {
    pub layers: Layers,
    /// WORKDIR/work: staging area, emptied at mount.
    pub work: Option<Arc<OwnedFd>>,
    /// WORKDIR/layerfs-index: copies of hard-linked lower files, by stable inode number.
    pub index: Option<Arc<OwnedFd>>,
    pub inodes: InodeTable,
    /// Namespace lock: shared for lookups/reads, exclusive for namespace changes. Every
    /// request that finds a node's real object by its name (getattr, setattr, readlink,
    /// xattrs, open) holds it shared from finding the name to the last syscall on it: a
    /// rename or unlink moves the real objects before it updates the nodes, and in between
    /// a name may already hold another object (a READLINK raced with a rename over a
    /// symlink's name read the new file: EINVAL; a GETATTR answered another object's type
    /// and the kernel marked the inode bad: EIO). Always taken with `read_recursive`: these
    /// nest (setattr -> copy-up, kill_privs -> setattr), and a plain `read` behind a
    /// waiting writer would deadlock.
    pub tree: RwLock<()>,
    pub cfg: Config,
    pub xattr_ns: XattrNs,
    /// false once creating a char 0/0 whiteout failed: fall back to `.wh.NAME` files.
    pub chardev_whiteouts: AtomicBool,
    /// The last char 0/0 whiteout made (upper or work directory, name): the next one is
    /// made as a hard link of it (see `Overlay::create_whiteout`).
    pub(crate) shared_whiteout: parking_lot::Mutex<Option<(Arc<OwnedFd>, Vec<u8>)>>,
    pub handles: DashMap<u64, Arc<crate::file::Handle>>,
    /// Fds of regular files for I/O by inode (`noopen`), a bounded cache.
    pub(crate) ino_files: crate::ino_io::InoFiles,
    /// Directory listings being read, by node id (see [`Overlay::readdir`]).
    pub(crate) dir_streams: DashMap<u64, crate::readdir::DirStream>,
    pub next_fh: AtomicU64,
    tmp_seq: AtomicU64,
    pub counters: Counters,
    pub ids: crate::idmap::IdMapper,
    /// FUSE passthrough is on (set at init when the kernel and our privileges allow it).
    pub passthrough: AtomicBool,
    /// Serializes updates of the index's link-count records.
    index_lock: parking_lot::Mutex<()>,
    /// Removed files kept in the workdir while the kernel still holds them (orphans).
    pub(crate) orphans: AtomicU64,
    /// The daemon's effective ids (new objects it makes are chowned when they differ).
    pub(crate) euid: u32,
    pub(crate) egid: u32,
    /// Tells the kernel to drop its cached attributes of a node, and with `true` its
    /// cached data too (a directory's listing); set by the daemon once the FUSE session
    /// exists, unset without a mount.
    pub attr_invalidator: std::sync::OnceLock<Box<dyn Fn(u64, bool) + Send + Sync>>,
}

/// Result of resolving one name in a directory through the layer stack.
#[derive(Debug)]
pub enum Lookup {
    Found(Box<Found>),
    /// Hidden by a whiteout (in the upper, or the first layer that has the name).
    WhitedOut,
    Absent,
}

#[derive(Debug)]
pub struct Found {
    pub st: Stat,
    pub st_ino: u64,
    pub upper_dir: Option<Arc<OwnedFd>>,
    pub upper_xwh: bool,
    pub in_upper: bool,
    pub lowers: Vec<LowerDir>,
    pub lower: Option<LowerFile>,
    pub lower_path: Vec<u8>,
    pub has_redirect: bool,
    pub indexed: bool,
    pub lower_present: bool,
    pub opaque: bool,
}

/// Where a lookup found a non-directory's real object (see `Overlay::stat_is_real`).
struct SeenAt {
    in_upper: bool,
    indexed: bool,
    /// The lower (directory, name), for an object found in a lower layer.
    lower: Option<(Arc<OwnedFd>, Vec<u8>)>,
}

/// Attributes of a union object as reported to the kernel.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub st: Stat,
    pub ino: u64,
}

pub fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = dir.to_vec();
    if !v.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

impl Overlay {
    /// Open the layers and prepare the workdir the way the kernel does: a private `work/`
    /// subdirectory, emptied at start.
    pub fn new(opts: &Options) -> Result<Overlay> {
        sys::raise_nofile_limit();
        let read_only = opts.read_only();
        let layers = Layers::open(opts.upperdir.as_deref(), &opts.lowerdirs, opts.ino32)?;
        let (work, index) = match (&layers.upper, &opts.workdir) {
            (Some(_), Some(w)) if !read_only => {
                let wfd = sys::open_dir_path(w)
                    .map_err(|e| e.context(format!("open workdir {}", w.display())))?;
                let within = |e: Error| e.within(format!("workdir {}", w.display()));
                let work = prepare_subdir(wfd.as_fd(), b"work", true).map_err(within)?;
                let index = prepare_subdir(wfd.as_fd(), b"layerfs-index", false).map_err(within)?;
                (Some(Arc::new(work)), Some(Arc::new(index)))
            }
            _ => (None, None),
        };
        let euid = sys::geteuid();
        let mut ov = Overlay {
            layers,
            work,
            index,
            inodes: InodeTable::default(),
            tree: RwLock::new(()),
            cfg: Config {
                fsync: opts.fsync && !opts.volatile,
                redirect_dir: opts.redirect_dir,
                static_nlink: opts.static_nlink,
                noxattrs: opts.noxattrs,
                read_only,
                chown_new: euid == 0,
                lower_passthrough: opts.passthrough == crate::options::Passthrough::All,
                noopen: opts.noopen,
            },
            xattr_ns: XattrNs::User,
            chardev_whiteouts: AtomicBool::new(true),
            shared_whiteout: parking_lot::Mutex::new(None),
            handles: DashMap::new(),
            ino_files: Default::default(),
            dir_streams: DashMap::new(),
            next_fh: AtomicU64::new(1),
            tmp_seq: AtomicU64::new(0),
            counters: Counters::default(),
            ids: crate::idmap::IdMapper::from_options(opts),
            passthrough: AtomicBool::new(false),
            index_lock: parking_lot::Mutex::new(()),
            orphans: AtomicU64::new(0),
            attr_invalidator: std::sync::OnceLock::new(),
            euid,
            egid: sys::getegid(),
        };
        ov.probe_capabilities();
        ov.make_root()?;
        Ok(ov)
    }

    /// Decide the metadata formats this daemon can write, by trying them in workdir.
    fn probe_capabilities(&mut self) {
        let Some(work) = self.work.clone() else {
            return;
        };
        let probe = self.tmp_name();
        if sys::mkdirat(work.as_fd(), &probe, 0o700).is_ok() {
            self.xattr_ns =
                match sys::setxattr(work.as_fd(), &probe, b"trusted.overlay.opaque", b"y", 0) {
                    Ok(()) => XattrNs::Trusted,
                    Err(e) => {
                        log::warn!(
                            "trusted.* xattrs not writable ({e}): writing opaque, redirect and \
                             origin as user.* xattrs"
                        );
                        XattrNs::User
                    }
                };
            let _ = sys::unlinkat(work.as_fd(), &probe, true);
        }
        let wh = self.tmp_name();
        match sys::mknodat(work.as_fd(), &wh, libc::S_IFCHR, 0) {
            Ok(()) => {
                let _ = sys::unlinkat(work.as_fd(), &wh, false);
            }
            Err(e) => {
                log::warn!("cannot create char 0/0 whiteouts ({e}): using .wh.NAME files");
                self.chardev_whiteouts.store(false, Ordering::Relaxed);
            }
        }
    }

    fn make_root(&self) -> Result<()> {
        let upper_dir = match &self.layers.upper {
            Some(u) => Some(Arc::new(sys::dup(u.root.as_fd())?)),
            None => None,
        };
        let mut lowers = Vec::new();
        for (i, l) in self.layers.lowers.iter().enumerate() {
            let fd = sys::dup(l.root.as_fd())?;
            let xwh = self.dir_opaque(&fd) == OpaqueValue::XWhiteouts;
            lowers.push(LowerDir {
                layer: i,
                fd: Arc::new(fd),
                xwh,
            });
        }
        let st_ino = {
            let fd = upper_dir
                .as_ref()
                .map(|f| f.clone())
                .unwrap_or(lowers[0].fd.clone());
            let st = sys::fstat(fd.as_fd())?;
            self.layers.compose_ino(st.dev, st.ino)
        };
        let root = Node::new(
            ROOT_ID,
            st_ino,
            NodeState {
                kind: libc::S_IFDIR,
                parent: None,
                name: Vec::new(),
                aliases: Vec::new(),
                upper_xwh: upper_dir
                    .as_ref()
                    .map(|u| self.dir_opaque(u) == OpaqueValue::XWhiteouts)
                    .unwrap_or(false),
                upper_whfree: false,
                upper_dir,
                in_upper: self.layers.upper.is_some(),
                lowers,
                lower: None,
                lower_path: b"/".to_vec(),
                has_redirect: false,
                indexed: false,
                lower_present: false,
                deleted: false,
                orphan: None,
            },
            0,
        );
        root.lookups.store(1, Ordering::Relaxed);
        self.inodes.insert(root);
        Ok(())
    }

    /// The attributes of node `id` changed outside a request that returns them (a
    /// directory's copy-up makes it merged: st_nlink 1): the kernel must not keep its
    /// cached copy.
    pub fn invalidate_attr(&self, id: u64) {
        if let Some(f) = self.attr_invalidator.get() {
            f(id, false);
        }
    }

    /// Directory `id` moved: the listing the kernel caches for it has a stale `..` (the
    /// one change of a listing the kernel does not see itself), drop it.
    pub fn invalidate_listing(&self, id: u64) {
        if let Some(f) = self.attr_invalidator.get() {
            f(id, true);
        }
    }

    pub fn root(&self) -> Arc<Node> {
        self.inodes.get(ROOT_ID).expect("root inode")
    }

    pub fn node(&self, id: u64) -> Result<Arc<Node>> {
        self.inodes.get(id).ok_or_else(|| {
            log::debug!("unknown node id {id}");
            Error::from_errno(libc::ESTALE)
        })
    }

    /// A fresh name for a staging object in the work directory.
    pub fn tmp_name(&self) -> Vec<u8> {
        let n = self.tmp_seq.fetch_add(1, Ordering::Relaxed);
        format!("#lfs{}.{}", std::process::id(), n).into_bytes()
    }

    pub fn work(&self) -> Result<&Arc<OwnedFd>> {
        self.work
            .as_ref()
            .ok_or_else(|| Error::from_errno(libc::EROFS))
    }

    pub fn check_writable(&self) -> Result<()> {
        if self.cfg.read_only || self.layers.upper.is_none() {
            return err(libc::EROFS);
        }
        Ok(())
    }

    /// Metadata xattr name in the namespace this daemon writes (`opaque`, `redirect`, ...).
    pub fn ovl_xattr(&self, what: &str) -> Vec<u8> {
        match self.xattr_ns {
            XattrNs::Trusted => format!("trusted.overlay.{what}").into_bytes(),
            XattrNs::User => format!("user.overlay.{what}").into_bytes(),
        }
    }

    /// layerfs's own origin xattr.
    pub fn origin_xattr(&self) -> &'static [u8] {
        match self.xattr_ns {
            XattrNs::Trusted => b"trusted.layerfs.origin",
            XattrNs::User => b"user.layerfs.origin",
        }
    }

    // ----- reading overlay metadata of real objects -----

    /// Opaqueness of a real directory (`dir` is the directory's own fd).
    pub fn dir_opaque(&self, dir: &OwnedFd) -> OpaqueValue {
        for x in whiteout::OPAQUE_XATTRS {
            if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), b"", x) {
                match whiteout::parse_opaque(&v) {
                    OpaqueValue::No => {}
                    o => return o,
                }
            }
        }
        if sys::fstatat(dir.as_fd(), whiteout::OPAQUE_MARKER).is_ok() {
            return OpaqueValue::Yes;
        }
        OpaqueValue::No
    }

    pub fn dir_redirect(&self, dir: &OwnedFd) -> Option<Redirect> {
        if !self.cfg.redirect_dir {
            return None;
        }
        for x in whiteout::REDIRECT_XATTRS {
            if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), b"", x) {
                match whiteout::parse_redirect(&v) {
                    Some(r) => return Some(r),
                    None => log::warn!("ignoring malformed redirect xattr {:?}", bstr(&v)),
                }
            }
        }
        None
    }

    pub(crate) fn read_origin(&self, dir: &OwnedFd, name: &[u8]) -> Option<u64> {
        for x in [&b"trusted.layerfs.origin"[..], b"user.layerfs.origin"] {
            if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, x) {
                if let Some(n) = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    return Some(n);
                }
            }
        }
        None
    }

    /// Is the real entry (dir, name) with stat `st` a whiteout? `xwh` tells whether the
    /// directory may hold xattr whiteouts (opaque=x).
    pub(crate) fn is_whiteout(&self, dir: &OwnedFd, name: &[u8], st: &Stat, xwh: bool) -> bool {
        if whiteout::is_whiteout_stat(st) {
            return true;
        }
        if xwh && st.is_reg() && st.size == 0 {
            return whiteout::XWHITEOUT_XATTRS
                .iter()
                .any(|x| matches!(sys::getxattr(dir.as_fd(), name, x), Ok(Some(_))));
        }
        false
    }

    fn has_wh_file(&self, dir: &OwnedFd, name: &[u8]) -> bool {
        sys::fstatat(dir.as_fd(), &whiteout::whiteout_name(name)).is_ok()
    }

    /// Whether directory node `dir`'s upper directory is known to hold no `.wh.` file
    /// (see `NodeState::upper_whfree`).
    pub(crate) fn upper_whfree(&self, dir: &Node) -> bool {
        dir.s.lock().upper_whfree && self.chardev_whiteouts.load(Ordering::Relaxed)
    }

    /// Resolve `name` in directory node `parent` through the stack (the kernel's
    /// ovl_lookup). With `open_dirs` false, directory fds are not kept (readdir ino
    /// computation).
    pub fn resolve(&self, parent: &Node, name: &[u8]) -> Result<Lookup> {
        self.resolve_traced(parent, name, None)
    }

    /// [`Overlay::resolve`], recording what each layer contributed or hid (for `explain`):
    /// events are (layer label, what happened there).
    pub fn resolve_traced(
        &self,
        parent: &Node,
        name: &[u8],
        trace: Option<&mut Vec<(String, String)>>,
    ) -> Result<Lookup> {
        self.resolve_from(parent, name, trace, 0)
    }

    /// [`Overlay::resolve_traced`], skipping the lower layers above `first_layer` when the
    /// upper has nothing by that name (a readdir snapshot's hint: those layers are
    /// immutable and hold neither the name nor a whiteout for it).
    pub fn resolve_from(
        &self,
        parent: &Node,
        name: &[u8],
        mut trace: Option<&mut Vec<(String, String)>>,
        first_layer: usize,
    ) -> Result<Lookup> {
        macro_rules! note {
            ($layer:expr, $($arg:tt)*) => {
                if let Some(t) = trace.as_deref_mut() {
                    t.push(($layer, format!($($arg)*)));
                }
            };
        }
        let upper_label = || match &self.layers.upper {
            Some(u) => format!("upper ({})", u.path.display()),
            None => "upper".to_string(),
        };
        let lower_label =
            |i: usize| format!("lower {} ({})", i, self.layers.lowers[i].path.display());
        if whiteout::is_hidden_name(name) || name == b"." || name == b".." {
            return Ok(Lookup::Absent);
        }
        if name.len() > 255 {
            return err(libc::ENAMETOOLONG);
        }
        let (pupper, pupper_xwh, pupper_whfree, plowers, plower_path, pkind) = {
            let s = parent.s.lock();
            (
                s.upper_dir.clone(),
                s.upper_xwh,
                s.upper_whfree && self.chardev_whiteouts.load(Ordering::Relaxed),
                s.lowers.clone(),
                s.lower_path.clone(),
                s.kind,
            )
        };
        if pkind != libc::S_IFDIR {
            return err(libc::ENOTDIR);
        }
        let mut found: Option<Found> = None;
        let mut stop = false;
        let mut target_rel: Option<Vec<u8>> = Some(name.to_vec());
        let mut target_abs: Option<Vec<u8>> = None;

        if let Some(u) = &pupper {
            let pxwh = pupper_xwh;
            match sys::fstatat(u.as_fd(), name) {
                Ok(st) if self.is_whiteout(u, name, &st, pxwh) => {
                    note!(
                        upper_label(),
                        "whiteout: hides the name in every lower layer"
                    );
                    return Ok(Lookup::WhitedOut);
                }
                Ok(st) => {
                    let mut f = Found {
                        st,
                        st_ino: 0,
                        upper_dir: None,
                        upper_xwh: false,
                        in_upper: true,
                        lowers: Vec::new(),
                        lower: None,
                        lower_path: join(&plower_path, name),
                        has_redirect: false,
                        indexed: false,
                        lower_present: false,
                        opaque: false,
                    };
                    let origin = self.read_origin(u, name);
                    if st.is_dir() {
                        let fd = sys::open_subdir(u.as_fd(), name)?;
                        match self.dir_opaque(&fd) {
                            OpaqueValue::Yes => {
                                note!(upper_label(), "opaque directory: nothing below is merged");
                                f.opaque = true;
                                stop = true;
                            }
                            OpaqueValue::XWhiteouts => f.upper_xwh = true,
                            OpaqueValue::No => {}
                        }
                        match self.dir_redirect(&fd) {
                            Some(Redirect::Absolute(p)) => {
                                f.has_redirect = true;
                                f.lower_path = p.clone();
                                target_abs = Some(p);
                                target_rel = None;
                            }
                            Some(Redirect::Relative(n)) => {
                                f.has_redirect = true;
                                f.lower_path = join(&plower_path, &n);
                                target_rel = Some(n);
                            }
                            None => {}
                        }
                        f.upper_dir = Some(Arc::new(fd));
                    }
                    f.st_ino = origin.unwrap_or_else(|| self.layers.compose_ino(st.dev, st.ino));
                    if origin.is_none() && st.is_dir() {
                        f.st_ino = 0; // decided by the top lower dir below, if any
                    }
                    if f.has_redirect {
                        note!(
                            upper_label(),
                            "directory, redirected to {} in the lower layers",
                            bstr(&f.lower_path)
                        );
                    } else if st.is_dir() {
                        note!(upper_label(), "directory");
                    } else {
                        note!(
                            upper_label(),
                            "{}: hides the lower layers",
                            kind_name(st.kind())
                        );
                    }
                    found = Some(f);
                }
                Err(e) if e.is(libc::ENOENT) => {
                    if !pupper_whfree && self.has_wh_file(u, name) {
                        note!(
                            upper_label(),
                            ".wh.{} file: hides the name in every lower layer",
                            bstr(name)
                        );
                        return Ok(Lookup::WhitedOut);
                    }
                }
                Err(e) => return Err(e),
            }
        }

        let nlower = self.layers.lowers.len();
        let mut j = 0;
        while j < nlower && !stop {
            let layer = j;
            j += 1;
            if found.is_none() && layer < first_layer {
                continue;
            }
            let (dirfd, ename, xwh): (Arc<OwnedFd>, Vec<u8>, bool) = if let Some(p) = &target_abs {
                let (dpath, base) = split_last(p);
                if base.is_empty() {
                    continue;
                }
                match sys::openat2_beneath(
                    self.layers.lowers[layer].root.as_fd(),
                    dpath,
                    libc::O_RDONLY | libc::O_DIRECTORY,
                ) {
                    Ok(fd) => {
                        let x = self.dir_opaque(&fd) == OpaqueValue::XWhiteouts;
                        (Arc::new(fd), base.to_vec(), x)
                    }
                    Err(_) => continue,
                }
            } else {
                match plowers.iter().find(|l| l.layer == layer) {
                    Some(l) => (l.fd.clone(), target_rel.clone().unwrap_or_default(), l.xwh),
                    None => continue,
                }
            };
            match sys::fstatat(dirfd.as_fd(), &ename) {
                Ok(st) if self.is_whiteout(&dirfd, &ename, &st, xwh) => {
                    note!(
                        lower_label(layer),
                        "whiteout: hides {} in the layers below",
                        bstr(&ename)
                    );
                    if found.is_none() {
                        return Ok(Lookup::WhitedOut);
                    }
                    break;
                }
                Ok(st) => {
                    let above_non_dir = found.as_ref().map(|f| !f.st.is_dir()).unwrap_or(false);
                    let above_dir = found.as_ref().map(|f| f.st.is_dir()).unwrap_or(false);
                    if above_non_dir {
                        note!(
                            lower_label(layer),
                            "{} {}: hidden by the non-directory above",
                            kind_name(st.kind()),
                            bstr(&ename)
                        );
                    } else if above_dir && !st.is_dir() {
                        note!(
                            lower_label(layer),
                            "{} {}: hidden by the directory above (merge stops)",
                            kind_name(st.kind()),
                            bstr(&ename)
                        );
                    } else if above_dir {
                        note!(lower_label(layer), "directory {}: merged", bstr(&ename));
                    } else {
                        note!(
                            lower_label(layer),
                            "{} {}: visible",
                            kind_name(st.kind()),
                            bstr(&ename)
                        );
                    }
                    // A `.wh.NAME` beside NAME only matters to directories (a non-directory
                    // stops the descent anyway) and to `explain`.
                    let wh_here =
                        (st.is_dir() || trace.is_some()) && self.has_wh_file(&dirfd, &ename);
                    match &mut found {
                        None => {
                            let mut f = Found {
                                st,
                                st_ino: self.layers.compose_ino(st.dev, st.ino),
                                upper_dir: None,
                                upper_xwh: false,
                                in_upper: false,
                                lowers: Vec::new(),
                                lower: None,
                                lower_path: target_abs
                                    .clone()
                                    .unwrap_or_else(|| join(&plower_path, &ename)),
                                has_redirect: false,
                                indexed: false,
                                lower_present: true,
                                opaque: false,
                            };
                            if st.is_dir() {
                                stop |= self.push_lower_dir(
                                    &mut f,
                                    layer,
                                    &dirfd,
                                    &ename,
                                    wh_here,
                                    &mut target_rel,
                                    &mut target_abs,
                                )?;
                            } else {
                                f.lower = Some(LowerFile {
                                    layer,
                                    dir: dirfd.clone(),
                                    name: ename.clone(),
                                    nlink: st.nlink,
                                });
                                stop = true;
                            }
                            found = Some(f);
                        }
                        Some(f) => {
                            f.lower_present = true;
                            if f.st.is_dir() && st.is_dir() {
                                if f.st_ino == 0 {
                                    f.st_ino = self.layers.compose_ino(st.dev, st.ino);
                                }
                                stop |= self.push_lower_dir(
                                    f,
                                    layer,
                                    &dirfd,
                                    &ename,
                                    wh_here,
                                    &mut target_rel,
                                    &mut target_abs,
                                )?;
                            } else {
                                if !f.st.is_dir()
                                    && !st.is_dir()
                                    && f.lower.is_none()
                                    && self.layers.compose_ino(st.dev, st.ino) == f.st_ino
                                {
                                    f.lower = Some(LowerFile {
                                        layer,
                                        dir: dirfd.clone(),
                                        name: ename.clone(),
                                        nlink: st.nlink,
                                    });
                                }
                                stop = true;
                            }
                        }
                    }
                    if wh_here {
                        note!(
                            lower_label(layer),
                            ".wh.{} in the same layer: hides the layers below",
                            bstr(&ename)
                        );
                        stop = true;
                    } else if stop && st.is_dir() && !above_non_dir {
                        note!(
                            lower_label(layer),
                            "opaque directory: the layers below are not merged"
                        );
                    }
                }
                Err(e) if e.is(libc::ENOENT) || e.is(libc::ENOTDIR) => {
                    if self.has_wh_file(&dirfd, &ename) {
                        note!(
                            lower_label(layer),
                            ".wh.{} file: hides the name in the layers below",
                            bstr(&ename)
                        );
                        if found.is_none() {
                            return Ok(Lookup::WhitedOut);
                        }
                        break;
                    }
                }
                Err(e) => return Err(e),
            }
        }

        let Some(mut f) = found else {
            return Ok(Lookup::Absent);
        };
        if f.opaque && !f.lower_present {
            // Not merged, but removing this name must still hide what is below it.
            f.lower_present = self.lower_has_name(&plowers, name);
        }
        if f.st_ino == 0 {
            f.st_ino = self.layers.compose_ino(f.st.dev, f.st.ino);
        }
        // A hard-linked lower file whose copy lives in the index.
        if !f.in_upper && !f.st.is_dir() && f.st.nlink > 1 {
            if let Some(idx) = &self.index {
                if let Ok(ist) = sys::fstatat(idx.as_fd(), &index_name(f.st_ino)) {
                    f.indexed = true;
                    f.st = ist;
                }
            }
        }
        Ok(Lookup::Found(Box::new(f)))
    }

    /// Whether any of the parent's lower directories has a visible entry `name` (stopping
    /// at a whiteout).
    pub(crate) fn lower_has_name(&self, plowers: &[LowerDir], name: &[u8]) -> bool {
        for l in plowers {
            match sys::fstatat(l.fd.as_fd(), name) {
                Ok(st) => return !self.is_whiteout(&l.fd, name, &st, l.xwh),
                Err(_) => {
                    if self.has_wh_file(&l.fd, name) {
                        return false;
                    }
                }
            }
        }
        false
    }

    /// Add the real directory (dirfd, name) of lower `layer` to a merged directory being
    /// looked up, and follow its redirect for the layers below. Returns true when the merge
    /// stops here (opaque, or a `.wh.` file for the name in the same layer).
    #[allow(clippy::too_many_arguments)]
    fn push_lower_dir(
        &self,
        f: &mut Found,
        layer: usize,
        dirfd: &OwnedFd,
        name: &[u8],
        wh_here: bool,
        target_rel: &mut Option<Vec<u8>>,
        target_abs: &mut Option<Vec<u8>>,
    ) -> Result<bool> {
        let fd = sys::open_subdir(dirfd.as_fd(), name)?;
        let op = self.dir_opaque(&fd);
        match self.dir_redirect(&fd) {
            Some(Redirect::Absolute(p)) => {
                *target_abs = Some(p);
                *target_rel = None;
            }
            Some(Redirect::Relative(n)) => match target_abs {
                Some(abs) => *abs = join(split_last(abs).0, &n),
                None => *target_rel = Some(n),
            },
            None => {}
        }
        f.lowers.push(LowerDir {
            layer,
            fd: Arc::new(fd),
            xwh: op == OpaqueValue::XWhiteouts,
        });
        Ok(op == OpaqueValue::Yes || wh_here)
    }

    /// Turn a resolved object into a node (creating it or refreshing the existing one with
    /// the same id) and take one kernel reference.
    pub fn instantiate(&self, parent: &Arc<Node>, name: &[u8], f: Found) -> Arc<Node> {
        self.instantiate_fresh(parent, name, f).0
    }

    /// [`Overlay::instantiate`], also telling whether the node's state is all `f`'s (a new
    /// node, or one found again after its removal): its real object is then the one `f`
    /// has the stat of.
    pub(crate) fn instantiate_fresh(
        &self,
        parent: &Arc<Node>,
        name: &[u8],
        f: Found,
    ) -> (Arc<Node>, bool) {
        let id = f.st_ino;
        let kind = f.st.kind();
        let make_state = |f: Found| NodeState {
            kind,
            parent: Some(parent.clone()),
            name: name.to_vec(),
            aliases: Vec::new(),
            upper_dir: f.upper_dir,
            upper_xwh: f.upper_xwh,
            upper_whfree: false,
            in_upper: f.in_upper,
            lowers: f.lowers,
            lower: f.lower,
            lower_path: f.lower_path,
            has_redirect: f.has_redirect,
            indexed: f.indexed,
            lower_present: f.lower_present,
            deleted: false,
            orphan: None,
        };
        let mut slot = Some(f);
        let (node, created) = self.inodes.get_or_insert_ref(id, || {
            let f = slot.take().unwrap();
            Node::new(id, id, make_state(f), self.inodes.next_generation())
        });
        let mut fresh = created;
        if !created {
            let f = slot.take().unwrap();
            let mut s = node.s.lock();
            if s.deleted || s.kind != kind {
                // Found again after its removal: the same object (a removed upper object's
                // node holds it, so its number is not reused meanwhile), reached through a
                // name the node did not know, e.g. another hard link. Only an object of
                // another type is a new object, which needs a new generation (the kernel
                // marks the inode of an id whose generation changes bad: EIO).
                if s.kind != kind {
                    node.generation
                        .store(self.inodes.next_generation(), Ordering::Relaxed);
                }
                *s = make_state(f);
                fresh = true;
            } else if kind == libc::S_IFDIR {
                s.parent = Some(parent.clone());
                s.name = name.to_vec();
                if s.upper_dir.is_none() {
                    s.upper_dir = f.upper_dir;
                    s.upper_xwh = f.upper_xwh;
                }
                if !s.has_redirect {
                    s.lowers = f.lowers;
                    s.lower_path = f.lower_path;
                }
                s.lower_present = f.lower_present;
            } else {
                // Another name of a hard-linked object: keep every name known; a name
                // found in the upper becomes the primary one (the old primary stays an
                // alias, whatever order the names are met in).
                s.add_alias(parent, name);
                if f.in_upper || !s.in_upper {
                    s.in_upper = f.in_upper;
                    s.lower = f.lower.or(s.lower.take());
                    s.indexed = f.indexed;
                    if f.in_upper {
                        s.set_primary(parent, name);
                    }
                }
                s.lower_present = s.lower_present || f.lower_present;
            }
        }
        (node, fresh)
    }

    /// lookup(2): resolve and instantiate.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<(Arc<Node>, Attr)> {
        self.lookup_from(parent, name, 0)
    }

    /// [`Overlay::lookup`] with a readdir snapshot's layer hint (see [`Overlay::resolve_from`]).
    pub fn lookup_from(
        &self,
        parent: u64,
        name: &[u8],
        first_layer: usize,
    ) -> Result<(Arc<Node>, Attr)> {
        let _g = self.tree.read_recursive();
        let p = self.node(parent)?;
        match self.resolve_from(&p, name, None, first_layer)? {
            Lookup::Found(f) => {
                let st = f.st;
                let seen = SeenAt {
                    in_upper: f.in_upper,
                    indexed: f.indexed,
                    lower: f.lower.as_ref().map(|l| (l.dir.clone(), l.name.clone())),
                };
                let (node, fresh) = self.instantiate_fresh(&p, name, *f);
                let attr = if fresh || self.stat_is_real(&node, &p, name, seen) {
                    // (the resolve's stat of the real object: no second fstatat)
                    let (dir, rname) = self.real_loc(&node)?;
                    self.attr_from_stat(&node, st, &dir, &rname)
                } else {
                    self.attr_of(&node)?
                };
                Ok((node, attr))
            }
            _ => err(libc::ENOENT),
        }
    }

    /// Whether a known non-directory `node`, just found again as (parent, name) in the
    /// upper (`in_upper`), the index (`indexed`) or at the lower location `lower`, still
    /// has its real object there, so the lookup's stat is its stat and no second fstatat
    /// is needed (a listing read again, as `rm -rf` does with every directory).
    fn stat_is_real(&self, node: &Node, parent: &Node, name: &[u8], seen: SeenAt) -> bool {
        let SeenAt {
            in_upper,
            indexed,
            lower,
        } = seen;
        let s = node.s.lock();
        if s.kind == libc::S_IFDIR || s.deleted || s.in_upper != in_upper {
            return false;
        }
        if in_upper {
            return s.is_primary(parent.id, name);
        }
        if s.indexed != indexed {
            return false;
        }
        indexed
            || matches!((&s.lower, &lower), (Some(l), Some((d, n)))
                if Arc::ptr_eq(&l.dir, d) && &l.name == n)
    }

    pub fn forget(&self, id: u64, n: u64) {
        if let Some(node) = self.inodes.forget(id, n) {
            self.dir_streams.remove(&id);
            self.ino_files.remove(id);
            self.drop_orphan(&node);
        }
    }

    /// Remove the workdir copy of a deleted object once the kernel no longer holds it.
    pub(crate) fn drop_orphan(&self, node: &Node) {
        let Some(o) = node.s.lock().orphan.take() else {
            return;
        };
        if let Ok(work) = self.work() {
            if let Err(e) = sys::unlinkat(work.as_fd(), &o, false) {
                log::warn!("removing orphan {}: {e}", bstr(&o));
            }
        }
        self.orphans.fetch_sub(1, Ordering::AcqRel);
    }

    /// Run `op`; if it fails with ENOSPC while removed files still hold space as orphans,
    /// wait (at most a second) for one of them to go and try once more. Removing a file
    /// that nothing uses any more frees its space as the kernel forgets the inode, and that
    /// FORGET may still be in another daemon thread's hands when the next request (say, the
    /// copy-up of `rm big; chmod 600 other`) runs out of space.
    pub(crate) fn with_space_retry<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        match op() {
            Err(e) if e.is(libc::ENOSPC) && self.orphans.load(Ordering::Acquire) > 0 => {
                let held = self.orphans.load(Ordering::Acquire);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while self.orphans.load(Ordering::Acquire) >= held
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                op()
            }
            r => r,
        }
    }

    /// Upper location of a non-directory: (parent's upper dir, name).
    pub fn upper_loc(&self, node: &Node) -> Result<(Arc<OwnedFd>, Vec<u8>)> {
        let s = node.s.lock();
        if let (true, Some(o)) = (s.deleted, &s.orphan) {
            let o = o.clone();
            drop(s);
            return Ok((self.work()?.clone(), o));
        }
        if s.kind == libc::S_IFDIR {
            return s
                .upper_dir
                .clone()
                .map(|d| (d, Vec::new()))
                .ok_or_else(|| Error::from_errno(libc::EIO));
        }
        let parent = s
            .parent
            .clone()
            .ok_or_else(|| Error::from_errno(libc::EIO))?;
        let name = s.name.clone();
        drop(s);
        let pu = parent.s.lock().upper_dir.clone();
        pu.map(|d| (d, name))
            .ok_or_else(|| Error::from_errno(libc::EIO).context("parent has no upper dir"))
    }

    /// Where the visible data/attributes of a node live now: (dir fd, name) with an empty
    /// name meaning the directory fd itself.
    pub fn real_loc(&self, node: &Node) -> Result<(Arc<OwnedFd>, Vec<u8>)> {
        let s = node.s.lock();
        if s.kind == libc::S_IFDIR {
            if let Some(u) = &s.upper_dir {
                return Ok((u.clone(), Vec::new()));
            }
            return s
                .lowers
                .first()
                .map(|l| (l.fd.clone(), Vec::new()))
                .ok_or_else(|| Error::from_errno(libc::EIO));
        }
        if s.in_upper {
            drop(s);
            return self.upper_loc(node);
        }
        if s.indexed {
            if let Some(idx) = &self.index {
                return Ok((idx.clone(), index_name(node.st_ino)));
            }
        }
        s.lower
            .as_ref()
            .map(|l| (l.dir.clone(), l.name.clone()))
            .ok_or_else(|| Error::from_errno(libc::EIO))
    }

    pub fn attr_of(&self, node: &Node) -> Result<Attr> {
        let (dir, name) = self.real_loc(node)?;
        let st = sys::fstatat(dir.as_fd(), &name)?;
        Ok(self.attr_from_stat(node, st, &dir, &name))
    }

    /// The union's attributes of `node` from `st`, the stat of its real object (`dir`,
    /// `name`).
    pub(crate) fn attr_from_stat(
        &self,
        node: &Node,
        mut st: Stat,
        dir: &OwnedFd,
        name: &[u8],
    ) -> Attr {
        let s = node.s.lock();
        if s.kind == libc::S_IFDIR {
            let merged = !s.lowers.is_empty() && (s.upper_dir.is_some() || s.lowers.len() > 1);
            if merged || self.cfg.static_nlink {
                st.nlink = 1;
            }
        } else {
            let lower_nlink = s.lower.as_ref().map(|l| l.nlink).unwrap_or(0);
            if st.nlink > 1 || lower_nlink > 1 {
                // Hard-linked lower object: the union's link count is kept in the index.
                if let Some(n) = self.union_nlink(node.st_ino) {
                    st.nlink = n;
                } else if lower_nlink > 1 {
                    st.nlink = lower_nlink;
                }
            }
        }
        drop(s);
        self.present(&mut st, dir, name);
        Attr {
            st,
            ino: node.st_ino,
        }
    }

    /// Turn a stored stat into what the union shows: override_stat owner/mode where
    /// xattr_permissions is on, then stored ids mapped to shown ids (and squashed).
    pub fn present(&self, st: &mut Stat, dir: &OwnedFd, name: &[u8]) {
        self.apply_override(st, dir, name);
        st.uid = self.ids.shown_uid(st.uid);
        st.gid = self.ids.shown_gid(st.gid);
    }

    /// Where xattr_permissions is on and the object has a valid override xattr, take owner
    /// and mode from it. The ids stay stored ids (the override holds stored ids, as
    /// containers/storage writes them into layers and fuse-overlayfs maps them).
    pub(crate) fn apply_override(&self, st: &mut Stat, dir: &OwnedFd, name: &[u8]) {
        let Some(x) = self.ids.override_xattr() else {
            return;
        };
        if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, x) {
            if let Some(o) = crate::idmap::parse_override(&v) {
                st.uid = o.uid;
                st.gid = o.gid;
                st.mode = (st.mode & libc::S_IFMT) | o.mode;
            }
        }
    }

    /// The union link count recorded for a hard-linked lower object, if any change or
    /// copy-up has happened to it.
    pub fn union_nlink(&self, st_ino: u64) -> Option<u64> {
        let idx = self.index.as_ref()?;
        let mut name = index_name(st_ino);
        name.extend_from_slice(b".nlink");
        let fd = sys::openat(idx.as_fd(), &name, libc::O_RDONLY, 0).ok()?;
        let mut buf = [0u8; 32];
        let n = sys::pread(fd.as_fd(), &mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.trim().parse().ok()
    }

    /// Adjust the recorded union link count of a hard-linked lower object by `delta`
    /// (initialising it from the lower link count). No-op for other objects.
    pub(crate) fn adjust_union_nlink(&self, node: &Node, delta: i64) -> Result<()> {
        let (lower_nlink, only_lower) = {
            let s = node.s.lock();
            let n = s.lower.as_ref().map(|l| l.nlink).unwrap_or(0);
            (n, !s.in_upper && !s.indexed)
        };
        if only_lower && lower_nlink <= 1 {
            // Not a hard link (records are only made for lower link counts above 1): no
            // record to look for.
            return Ok(());
        }
        let (Some(idx), Some(work)) = (self.index.clone(), self.work.clone()) else {
            return Ok(());
        };
        let _g = self.index_lock.lock();
        let cur = match self.union_nlink(node.st_ino) {
            Some(n) => n,
            None if lower_nlink > 1 => lower_nlink,
            None => return Ok(()),
        };
        let new = (cur as i64 + delta).max(0) as u64;
        let tmp = self.tmp_name();
        let fd = sys::openat(
            work.as_fd(),
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
            0o600,
        )?;
        sys::write_all_at(fd.as_fd(), format!("{new}\n").as_bytes(), 0)?;
        if self.cfg.fsync {
            sys::fsync(fd.as_fd(), false)?;
        }
        drop(fd);
        let mut name = index_name(node.st_ino);
        name.extend_from_slice(b".nlink");
        sys::renameat2(work.as_fd(), &tmp, idx.as_fd(), &name, 0)
    }

    pub fn getattr(&self, id: u64) -> Result<Attr> {
        let _g = self.tree.read_recursive(); // see `Overlay::tree`
        let node = self.node(id)?;
        if !node.s.lock().deleted {
            return self.attr_of(&node);
        }
        // Removed from the union but still in use (fstat of an unlinked open file, which
        // the kernel may ask without a handle): its old name may hold a whiteout or
        // another object now. Answer from an open handle of the node.
        let fh = self
            .handles
            .iter()
            .find(|h| h.node.id == id)
            .map(|h| *h.key());
        if let Some(fh) = fh {
            return self.getattr_fh(id, fh);
        }
        if let Some(fd) = self.cached_ino_fd(&node) {
            // (`noopen`: the fd reads and writes of the inode go to)
            let mut st = sys::fstat(fd.as_fd())?;
            self.present(&mut st, &fd, b"");
            st.nlink = 0;
            return Ok(Attr {
                st,
                ino: node.st_ino,
            });
        }
        let mut a = self.attr_of(&node)?;
        if a.st.kind() != node.kind() {
            return err(libc::ENOENT);
        }
        a.st.nlink = 0;
        Ok(a)
    }

    pub fn statfs(&self) -> Result<sys::StatFs> {
        let fd = match &self.layers.upper {
            Some(u) => u.root.clone(),
            None => self.layers.lowers[0].root.clone(),
        };
        sys::fstatvfs(fd.as_fd())
    }
}

/// A human name for a file type.
pub fn kind_name(kind: u32) -> &'static str {
    match kind {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFLNK => "symlink",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        _ => "object",
    }
}

/// Name of an index entry for a stable inode number.
pub fn index_name(st_ino: u64) -> Vec<u8> {
    format!("{st_ino:016x}").into_bytes()
}

/// Split `/a/b/c` into (`/a/b`, `c`).
pub fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..i.max(1)], &p[i + 1..]),
        None => (b"/", p),
    }
}

/// Debug rendering of a byte name.
pub fn bstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Create (or reuse) `name` under `dir`; when `empty` clear what is in it (leftovers of a
/// crashed daemon: staging files are never valid state).
fn prepare_subdir(dir: std::os::fd::BorrowedFd, name: &[u8], empty: bool) -> Result<OwnedFd> {
    let name_s = String::from_utf8_lossy(name);
    match sys::mkdirat(dir, name, 0o700) {
        Ok(()) => {}
        Err(e) if e.is(libc::EEXIST) => {}
        Err(e) => return Err(e.context(format!("create {name_s}"))),
    }
    let fd = sys::openat(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
        .map_err(|e| e.context(format!("open {name_s}")))?;
    if empty {
        remove_contents(&fd).map_err(|e| e.context(format!("empty {name_s}")))?;
    }
    Ok(fd)
}

/// Remove everything inside the directory `fd` (not following symlinks). Directories are
/// told apart by the entries' d_type (a stat only where the filesystem gives none), so
/// emptying a directory of whiteouts (rmdir of a copied-up directory) costs one unlink
/// per entry, as the kernel's `ovl_cleanup_whiteouts`.
pub fn remove_contents(fd: &OwnedFd) -> Result<()> {
    for e in sys::read_dir(fd.as_fd())? {
        let is_dir = match e.dtype {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => match sys::fstatat(fd.as_fd(), &e.name) {
                Ok(st) => st.is_dir(),
                Err(_) => continue, // vanished
            },
            _ => false,
        };
        if !is_dir {
            match sys::unlinkat(fd.as_fd(), &e.name, false) {
                Err(err) if err.is(libc::ENOENT) => continue, // vanished
                // replaced by a directory since it was listed
                Err(err) if err.is(libc::EISDIR) => {}
                r => {
                    r?;
                    continue;
                }
            }
        }
        let sub = match sys::openat(fd.as_fd(), &e.name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Err(err) if err.is(libc::ENOENT) => continue,
            r => r?,
        };
        remove_contents(&sub)?;
        drop(sub);
        sys::unlinkat(fd.as_fd(), &e.name, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_paths() {
        assert_eq!(split_last(b"/a/b"), (&b"/a"[..], &b"b"[..]));
        assert_eq!(split_last(b"/a"), (&b"/"[..], &b"a"[..]));
        assert_eq!(join(b"/", b"x"), b"/x".to_vec());
        assert_eq!(join(b"/a", b"x"), b"/a/x".to_vec());
    }
}
