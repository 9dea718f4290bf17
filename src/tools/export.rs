//! `layerfs export`: the upper layer's changes as an OCI image layer tar.
//!
//! The export is planned first (a sorted list of entries, so the output is deterministic
//! and the progress bar knows the total) and then written:
//! - whiteouts of every format layerfs reads (char 0/0, `.wh.NAME` files, xattr whiteouts in
//!   `opaque=x` directories) become `.wh.NAME` entries, when they hide something in the
//!   lowers;
//! - opaque directories (xattr or `.wh..wh..opq`) get a `.wh..wh..opq` entry;
//! - a renamed directory (redirect xattr) is expanded: everything the union shows below its
//!   new path is written in full (with `.wh..wh..opq` when the lowers have a directory
//!   there), and the whiteout the rename left at the old path is exported like any other;
//! - objects sharing an inode are written once and then as tar hard links, including lower
//!   hard links whose copy lives in the workdir's index (with `--workdir`);
//! - owner and mode come from `override_stat` where an object has one; xattrs go in PAX
//!   `SCHILY.xattr.*` records, never overlay/layerfs private ones.

use super::{in_lowers, show_rel};
use crate::error::{Error, Result};
use crate::inode::Node;
use crate::overlay::{bstr, Lookup, Overlay};
use crate::sys::{self, Stat};
use crate::whiteout;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

/// One planned tar entry.
pub(crate) enum Item {
    /// An empty regular file (`.wh.NAME` or `.wh..wh..opq`): `path` is the full name.
    Marker { path: Vec<u8> },
    /// A real object to copy: read from (dir, name), `name` empty = `dir` itself.
    Object {
        path: Vec<u8>,
        dir: Arc<OwnedFd>,
        name: Vec<u8>,
        st: Stat,
        link_to: Option<Vec<u8>>,
    },
}

/// What an export contained (printed at the end).
#[derive(Debug, Default)]
pub struct Summary {
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub hard_links: u64,
    pub other: u64,
    pub bytes: u64,
    pub skipped: u64,
}

struct Planner<'a> {
    full: &'a Overlay,
    lower: &'a Overlay,
    items: Vec<Item>,
    /// Real (dev, ino) of multiply-linked objects -> the first path written.
    links: HashMap<(u64, u64), Vec<u8>>,
    emitted: HashSet<Vec<u8>>,
}

fn with_name(comps: &[Vec<u8>], last: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    for c in comps {
        p.extend_from_slice(c);
        p.push(b'/');
    }
    p.extend_from_slice(last);
    p
}

impl Planner<'_> {
    fn marker(&mut self, comps: &[Vec<u8>], name: &[u8]) {
        let path = with_name(comps, name);
        if self.emitted.insert(path.clone()) {
            self.items.push(Item::Marker { path });
        }
    }

    fn object(&mut self, comps: &[Vec<u8>], dir: Arc<OwnedFd>, name: &[u8]) -> Result<Stat> {
        let path = show_rel(comps);
        let st = sys::fstatat(dir.as_fd(), name)?;
        if !self.emitted.insert(path.clone()) {
            return Ok(st);
        }
        let link_to = if !st.is_dir() && st.nlink > 1 {
            match self.links.get(&(st.dev, st.ino)) {
                Some(p) => Some(p.clone()),
                None => {
                    self.links.insert((st.dev, st.ino), path.clone());
                    None
                }
            }
        } else {
            None
        };
        self.items.push(Item::Object {
            path,
            dir,
            name: name.to_vec(),
            st,
            link_to,
        });
        Ok(st)
    }

    /// Export the upper directory `udir` (union node `node`, at `comps`).
    fn walk_upper(
        &mut self,
        udir: &Arc<OwnedFd>,
        node: &Arc<Node>,
        comps: &mut Vec<Vec<u8>>,
        parent_opaque: bool,
    ) -> Result<()> {
        let xwh = node.s.lock().upper_xwh;
        // name -> is a whiteout (an object of the same name wins over a `.wh.` file)
        let mut names: BTreeMap<Vec<u8>, bool> = BTreeMap::new();
        for e in sys::read_dir(udir.as_fd())? {
            if e.name == whiteout::OPAQUE_MARKER {
                continue;
            }
            if let Some(t) = whiteout::whiteout_target(&e.name) {
                names.entry(t.to_vec()).or_insert(true);
                continue;
            }
            let st = sys::fstatat(udir.as_fd(), &e.name)?;
            let wh = self.full.is_whiteout(udir, &e.name, &st, xwh);
            if wh {
                names.entry(e.name).or_insert(true);
            } else {
                names.insert(e.name, false);
            }
        }
        for (name, is_wh) in names {
            comps.push(name.clone());
            if is_wh {
                if !parent_opaque && in_lowers(self.lower, comps).is_some() {
                    comps.pop();
                    self.marker(comps, &whiteout::whiteout_name(&name));
                    comps.push(name);
                }
            } else {
                let st = self.object(comps, udir.clone(), &name)?;
                if st.is_dir() {
                    self.upper_subdir(node, &name, comps, parent_opaque)?;
                }
            }
            comps.pop();
        }
        Ok(())
    }

    fn upper_subdir(
        &mut self,
        node: &Arc<Node>,
        name: &[u8],
        comps: &mut Vec<Vec<u8>>,
        parent_opaque: bool,
    ) -> Result<()> {
        let f = match self.full.resolve(node, name)? {
            Lookup::Found(f) => f,
            _ => return Ok(()),
        };
        let (redirect, opaque) = (f.has_redirect, f.opaque);
        let child = self.full.instantiate(node, name, *f);
        let lower_dir_here = !parent_opaque && in_lowers(self.lower, comps) == Some(libc::S_IFDIR);
        if redirect {
            if lower_dir_here {
                self.marker(comps, whiteout::OPAQUE_MARKER);
            }
            return self.expand(&child, comps);
        }
        if opaque && lower_dir_here {
            self.marker(comps, whiteout::OPAQUE_MARKER);
        }
        let Some(sub) = child.s.lock().upper_dir.clone() else {
            return Ok(());
        };
        self.walk_upper(&sub, &child, comps, parent_opaque || opaque)
    }

    /// Everything the union shows below directory `node`, in full.
    fn expand(&mut self, node: &Arc<Node>, comps: &mut Vec<Vec<u8>>) -> Result<()> {
        let mut entries = self.full.merged_entries(node, false)?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        for e in entries {
            let Lookup::Found(f) = self.full.resolve(node, &e.name)? else {
                continue;
            };
            let child = self.full.instantiate(node, &e.name, *f);
            let (dir, name) = self.full.real_loc(&child)?;
            comps.push(e.name.clone());
            self.object(comps, dir, &name)?;
            if child.is_dir() {
                self.expand(&child, comps)?;
            }
            comps.pop();
        }
        Ok(())
    }
}

/// Plan the export of `full`'s upper against `lower` (the same stack without the upper).
pub(crate) fn plan(full: &Overlay, lower: &Overlay) -> Result<Vec<Item>> {
    let upper = full
        .layers
        .upper
        .as_ref()
        .map(|u| u.root.clone())
        .ok_or_else(|| Error::from_errno(libc::EINVAL).context("no upper layer"))?;
    let mut p = Planner {
        full,
        lower,
        items: Vec::new(),
        links: HashMap::new(),
        emitted: HashSet::new(),
    };
    let root = full.root();
    p.walk_upper(&upper, &root, &mut Vec::new(), false)?;
    super::index_aliases(full, &mut |comps, dir, name| {
        p.object(comps, dir, &name).map(drop)
    })?;
    Ok(p.items)
}

/// Owner and mode as the union shows them: from an override_stat xattr when there is one.
pub(crate) fn effective_owner(dir: &OwnedFd, name: &[u8], st: &Stat) -> (u32, u32, u32) {
    for x in crate::idmap::OVERRIDE_XATTRS {
        if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, x) {
            if let Some(o) = crate::idmap::parse_override(&v) {
                return (o.uid, o.gid, o.mode);
            }
        }
    }
    (st.uid, st.gid, st.mode & 0o7777)
}

/// The xattrs of an object that belong in an image layer (no private overlay ones).
pub(crate) fn public_xattrs(dir: &OwnedFd, name: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(names) = sys::listxattr(dir.as_fd(), name) else {
        return out;
    };
    for n in names {
        if whiteout::is_private_xattr(&n) {
            continue;
        }
        if let Ok(Some(v)) = sys::getxattr(dir.as_fd(), name, &n) {
            out.push((n, v));
        }
    }
    out.sort();
    out
}

fn tar_path(p: &[u8]) -> &std::path::Path {
    std::path::Path::new(std::ffi::OsStr::from_bytes(p))
}

/// An io::Error as our error type (errno kept).
pub(crate) fn io_err(e: std::io::Error) -> Error {
    Error::from_errno(e.raw_os_error().unwrap_or(libc::EIO)).context(e.to_string())
}

/// Total bytes of file data in a plan (for the progress bar).
pub(crate) fn data_bytes(items: &[Item]) -> u64 {
    items
        .iter()
        .map(|i| match i {
            Item::Object {
                st, link_to: None, ..
            } if st.is_reg() => st.size,
            _ => 0,
        })
        .sum()
}

/// Write the planned entries as a tar stream into `w`.
pub(crate) fn write_tar<W: Write>(
    items: &[Item],
    w: W,
    progress: &indicatif::ProgressBar,
) -> Result<(W, Summary)> {
    let mut b = tar::Builder::new(w);
    let mut sum = Summary::default();
    for it in items {
        match it {
            Item::Marker { path } => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, tar_path(path), std::io::empty())
                    .map_err(io_err)?;
                if path.ends_with(whiteout::OPAQUE_MARKER) {
                    sum.opaque_dirs += 1;
                } else {
                    sum.whiteouts += 1;
                }
            }
            Item::Object {
                path,
                dir,
                name,
                st,
                link_to,
            } => {
                if st.kind() == libc::S_IFSOCK {
                    log::warn!("{}: sockets cannot be stored in a tar; skipped", bstr(path));
                    sum.skipped += 1;
                    continue;
                }
                let xattrs = public_xattrs(dir, name);
                let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
                for (n, v) in xattrs {
                    match String::from_utf8(n) {
                        Ok(n) => pax.push((format!("SCHILY.xattr.{n}"), v)),
                        Err(e) => {
                            log::warn!(
                                "{}: xattr {:?} has a non-UTF-8 name; not exported",
                                bstr(path),
                                bstr(e.as_bytes())
                            );
                        }
                    }
                }
                if !pax.is_empty() {
                    b.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                        .map_err(io_err)?;
                }
                let (uid, gid, mode) = effective_owner(dir, name, st);
                let mut h = tar::Header::new_gnu();
                h.set_mode(mode);
                h.set_uid(uid as u64);
                h.set_gid(gid as u64);
                h.set_mtime(st.mtime.0.max(0) as u64);
                h.set_size(0);
                if let Some(target) = link_to {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, tar_path(path), tar_path(target))
                        .map_err(io_err)?;
                    sum.hard_links += 1;
                    sum.entries += 1;
                    continue;
                }
                match st.kind() {
                    libc::S_IFDIR => {
                        h.set_entry_type(tar::EntryType::Directory);
                        b.append_data(&mut h, tar_path(path), std::io::empty())
                            .map_err(io_err)?;
                        sum.dirs += 1;
                    }
                    libc::S_IFREG => {
                        h.set_entry_type(tar::EntryType::Regular);
                        h.set_size(st.size);
                        let f =
                            std::fs::File::from(sys::openat(dir.as_fd(), name, libc::O_RDONLY, 0)?);
                        // Exactly st.size bytes even if the file changes under us.
                        let data = progress
                            .wrap_read(f)
                            .take(st.size)
                            .chain(std::io::repeat(0))
                            .take(st.size);
                        b.append_data(&mut h, tar_path(path), data)
                            .map_err(io_err)?;
                        sum.files += 1;
                        sum.bytes += st.size;
                    }
                    libc::S_IFLNK => {
                        h.set_entry_type(tar::EntryType::Symlink);
                        let target = sys::readlinkat(dir.as_fd(), name)?;
                        b.append_link(&mut h, tar_path(path), tar_path(&target))
                            .map_err(io_err)?;
                        sum.other += 1;
                    }
                    k @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO) => {
                        h.set_entry_type(match k {
                            libc::S_IFCHR => tar::EntryType::Char,
                            libc::S_IFBLK => tar::EntryType::Block,
                            _ => tar::EntryType::Fifo,
                        });
                        if k != libc::S_IFIFO {
                            h.set_device_major(libc::major(st.rdev)).map_err(io_err)?;
                            h.set_device_minor(libc::minor(st.rdev)).map_err(io_err)?;
                        }
                        b.append_data(&mut h, tar_path(path), std::io::empty())
                            .map_err(io_err)?;
                        sum.other += 1;
                    }
                    _ => {
                        sum.skipped += 1;
                        continue;
                    }
                }
            }
        }
        sum.entries += 1;
    }
    let w = b.into_inner().map_err(io_err)?;
    Ok((w, sum))
}

/// Output compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a file name: `.gz`/`.tgz` gzip, `.zst`/`.zstd` zstd, anything else none.
    pub fn from_name(p: &std::path::Path) -> Compression {
        let n = p.as_os_str().as_bytes();
        if n.ends_with(b".gz") || n.ends_with(b".tgz") {
            Compression::Gzip
        } else if n.ends_with(b".zst") || n.ends_with(b".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A possibly compressing writer that must be finished.
pub(crate) enum Sink<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Sink<W> {
    pub fn new(w: W, c: Compression) -> Result<Sink<W>> {
        Ok(match c {
            Compression::None => Sink::Plain(w),
            Compression::Gzip => Sink::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::default(),
            )),
            Compression::Zstd => Sink::Zstd(zstd::Encoder::new(w, 3).map_err(io_err)?),
        })
    }
    pub fn finish(self) -> Result<W> {
        match self {
            Sink::Plain(w) => Ok(w),
            Sink::Gzip(g) => g.finish().map_err(io_err),
            Sink::Zstd(z) => z.finish().map_err(io_err),
        }
    }
}

impl<W: Write> Write for Sink<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Plain(w) => w.write(buf),
            Sink::Gzip(w) => w.write(buf),
            Sink::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Plain(w) => w.flush(),
            Sink::Gzip(w) => w.flush(),
            Sink::Zstd(w) => w.flush(),
        }
    }
}

/// A progress bar over `total` bytes on a terminal's stderr, hidden elsewhere.
pub(crate) fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Write `items` to `out` (`-` = stdout), compressed as asked; the file appears complete or
/// not at all (written to a temporary name, then renamed).
pub(crate) fn write_output(
    items: &[Item],
    out: &std::path::Path,
    c: Compression,
) -> Result<Summary> {
    let pb = progress_bar(data_bytes(items), "export");
    let sum = if out.as_os_str() == "-" {
        let stdout = std::io::stdout().lock();
        let sink = Sink::new(std::io::BufWriter::new(stdout), c)?;
        let (sink, sum) = write_tar(items, sink, &pb)?;
        sink.finish()?.flush().map_err(io_err)?;
        sum
    } else {
        let mut tmp = out.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = std::path::PathBuf::from(tmp);
        let r = (|| -> Result<Summary> {
            let f = std::fs::File::create(&tmp).map_err(io_err)?;
            let sink = Sink::new(std::io::BufWriter::new(f), c)?;
            let (sink, sum) = write_tar(items, sink, &pb)?;
            let f = sink
                .finish()?
                .into_inner()
                .map_err(|e| io_err(e.into_error()))?;
            f.sync_all().map_err(io_err)?;
            std::fs::rename(&tmp, out).map_err(io_err)?;
            Ok(sum)
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r?
    };
    pb.finish_and_clear();
    Ok(sum)
}
