//! Offline tools that read the layer directories with the daemon's own lookup code, so
//! their answers cannot drift from what a mount shows:
//! - `layerfs explain`: which layer provides each component of a path and what it hides;
//! - `layerfs diff`: the upper's changes against the lowers, as `A`/`C`/`D` lines;
//! - `layerfs export` / `import`: the upper as an OCI image layer tar and back ([`export`],
//!   [`import`]);
//! - `layerfs check`: consistency of an upper/work pair ([`check`]);
//! - `explain` on a path inside a live mount ([`live`]).

mod check;
mod export;
mod import;
mod live;

use crate::error::Result;
use crate::inode::Node;
use crate::overlay::{bstr, kind_name, Lookup, Overlay};
use crate::sys;
use crate::whiteout;
use clap::{Parser, Subcommand};
use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "layerfs",
    about = "Inspect an overlay layer stack without mounting it"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Explain, component by component, which layer provides PATH and what it hides.
    /// Without --lowerdir, PATH is a path inside a live layerfs mount, and the layers are
    /// those of the daemon serving it.
    Explain {
        /// Lower layers, top first, colon-separated (`\:` for a literal colon).
        #[arg(long)]
        lowerdir: Option<String>,
        #[arg(long)]
        upperdir: Option<PathBuf>,
        /// The workdir (read only): its hard-link index is consulted.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// A path inside the union (absolute or relative to its root), or inside a mount.
        path: PathBuf,
    },
    /// List what the upper changed against the lowers (docker diff form: A/C/D PATH).
    Diff {
        #[arg(long)]
        lowerdir: String,
        #[arg(long)]
        upperdir: PathBuf,
        /// The workdir (read only): lower hard links whose copy is in its index and shows
        /// the change are listed as changed.
        #[arg(long)]
        workdir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Write the upper's changes as an OCI image layer tar.
    Export {
        #[arg(long)]
        lowerdir: String,
        #[arg(long)]
        upperdir: PathBuf,
        /// The workdir (read only): lower hard links whose copy is in its index are
        /// exported as links to it.
        #[arg(long)]
        workdir: Option<PathBuf>,
        /// Output file (`.tar`, `.tar.gz`/`.tgz`, `.tar.zst`), or `-` for stdout.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Compression (default: from the output name; none for stdout).
        #[arg(long, value_enum)]
        compress: Option<export::Compression>,
    },
    /// Unpack an OCI image layer tar (plain, gzip or zstd) into DIR as a lower layer.
    Import {
        /// The tar, or `-` for stdin.
        #[arg(short = 'i', long = "input")]
        input: PathBuf,
        dir: PathBuf,
    },
    /// Check an upper/work pair for inconsistencies; --repair fixes what is safe.
    Check {
        #[arg(long)]
        upperdir: PathBuf,
        #[arg(long)]
        workdir: PathBuf,
        /// Lower layers: needed for the checks against them (whiteouts, redirects).
        #[arg(long)]
        lowerdir: Option<String>,
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

pub const SUBCOMMANDS: [&str; 5] = ["explain", "diff", "export", "import", "check"];

/// Run a tool subcommand (`args` includes the subcommand name); returns the exit code.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    let mut full = vec![std::ffi::OsString::from("layerfs")];
    full.extend(args);
    let cli = match Cli::try_parse_from(full) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let r = match cli.cmd {
        Cmd::Explain {
            lowerdir: Some(lowerdir),
            upperdir,
            workdir,
            json,
            path,
        } => match open_stack(&lowerdir, upperdir, workdir.as_deref()) {
            Ok(ov) => explain(&ov, &path, json),
            Err(e) => {
                eprintln!("layerfs explain: {e}");
                return 2;
            }
        },
        Cmd::Explain {
            lowerdir: None,
            upperdir,
            workdir,
            json,
            path,
        } => {
            if upperdir.is_some() || workdir.is_some() {
                eprintln!("layerfs explain: --upperdir/--workdir need --lowerdir");
                return 2;
            }
            live::explain_mounted(&path, json)
        }
        Cmd::Diff {
            lowerdir,
            upperdir,
            workdir,
            json,
        } => diff(&lowerdir, upperdir, workdir, json),
        Cmd::Export {
            lowerdir,
            upperdir,
            workdir,
            output,
            compress,
        } => run_export(&lowerdir, upperdir, workdir, &output, compress),
        Cmd::Import { input, dir } => run_import(&input, &dir),
        Cmd::Check {
            upperdir,
            workdir,
            lowerdir,
            repair,
            json,
        } => check::run(&upperdir, &workdir, lowerdir.as_deref(), repair, json),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("layerfs: {e}");
            1
        }
    }
}

fn run_export(
    lowerdir: &str,
    upperdir: PathBuf,
    workdir: Option<PathBuf>,
    output: &std::path::Path,
    compress: Option<export::Compression>,
) -> Result<i32> {
    let (lower_ov, full_ov) = match (
        open_stack(lowerdir, None, None),
        open_stack(lowerdir, Some(upperdir), workdir.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("layerfs export: {e}");
            return Ok(2);
        }
    };
    let c = compress.unwrap_or_else(|| export::Compression::from_name(output));
    let items = export::plan(&full_ov, &lower_ov)?;
    let s = export::write_output(&items, output, c)?;
    eprintln!(
        "layerfs export: {} entries ({} directories, {} files with {} bytes, {} hard links, {} other, {} whiteouts, {} opaque directories){}",
        s.entries,
        s.dirs,
        s.files,
        s.bytes,
        s.hard_links,
        s.other,
        s.whiteouts,
        s.opaque_dirs,
        if s.skipped > 0 {
            format!(", {} sockets skipped", s.skipped)
        } else {
            String::new()
        }
    );
    Ok(0)
}

fn run_import(input: &std::path::Path, dir: &std::path::Path) -> Result<i32> {
    let s = import::import(input, dir)?;
    eprintln!(
        "layerfs import: {} entries, {} hard links; whiteouts: {} as char 0/0, {} as .wh. files; opaque directories: {} as xattr, {} as .wh..wh..opq",
        s.entries,
        s.hard_links,
        s.whiteouts_chardev,
        s.whiteouts_file,
        s.opaque_xattr,
        s.opaque_file
    );
    for w in &s.skipped {
        eprintln!("layerfs import: warning: {w}");
    }
    Ok(0)
}

/// Open a layer stack read-only, as the daemon would; with `workdir`, its hard-link index
/// is consulted (nothing in the workdir is written or cleaned).
pub(crate) fn open_stack_opts(
    mut opts: crate::options::Options,
    workdir: Option<&std::path::Path>,
) -> std::result::Result<Overlay, String> {
    opts.workdir = None;
    opts.ro = true;
    for l in opts.lowerdirs.iter().chain(opts.upperdir.iter()) {
        if !l.is_dir() {
            return Err(format!("{}: not a directory", l.display()));
        }
    }
    let mut ov = Overlay::new(&opts).map_err(|e| e.to_string())?;
    if let Some(w) = workdir {
        let idx = w.join("layerfs-index");
        if idx.is_dir() {
            let fd = sys::open_dir_path(&idx).map_err(|e| format!("{}: {e}", idx.display()))?;
            ov.index = Some(Arc::new(fd));
        }
    }
    Ok(ov)
}

pub(crate) fn open_stack(
    lowerdir: &str,
    upperdir: Option<PathBuf>,
    workdir: Option<&std::path::Path>,
) -> std::result::Result<Overlay, String> {
    let o = format!("lowerdir={lowerdir}");
    let mut opts = match crate::options::parse_args(vec!["-o".into(), o.into(), "/".into()]) {
        Ok(crate::options::Command::Mount(opts)) => opts,
        Ok(_) => return Err("bad --lowerdir".into()),
        Err(e) => return Err(e),
    };
    opts.upperdir = upperdir.map(|u| std::path::absolute(&u).unwrap_or(u));
    open_stack_opts(opts, workdir)
}

pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

pub(crate) fn explain(ov: &Overlay, path: &std::path::Path, json: bool) -> Result<i32> {
    use std::os::unix::ffi::OsStrExt;
    let comps: Vec<&[u8]> = path
        .as_os_str()
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    let mut node: Arc<Node> = ov.root();
    let mut union_path = String::new();
    let mut out = String::new();
    let mut jcomps = Vec::new();
    let mut visible = true;
    for c in comps {
        union_path.push('/');
        union_path.push_str(&bstr(c));
        let mut trace = Vec::new();
        let r = ov.resolve_traced(&node, c, Some(&mut trace))?;
        let verdict = match &r {
            Lookup::Found(f) => {
                let from = if f.in_upper || f.upper_dir.is_some() {
                    "upper".to_string()
                } else if let Some(l) = f.lowers.first() {
                    format!("lower {}", l.layer)
                } else if let Some(l) = &f.lower {
                    format!("lower {}", l.layer)
                } else {
                    "?".into()
                };
                format!("{} from {from}", kind_name(f.st.kind()))
            }
            Lookup::WhitedOut => "not visible: deleted by a whiteout".into(),
            Lookup::Absent => "not visible: no layer has it".into(),
        };
        let _ = writeln!(out, "{union_path}: {verdict}");
        for (layer, what) in &trace {
            let _ = writeln!(out, "    {layer}: {what}");
        }
        jcomps.push(format!(
            "{{\"path\":{},\"verdict\":{},\"layers\":[{}]}}",
            json_str(&union_path),
            json_str(&verdict),
            trace
                .iter()
                .map(|(l, w)| format!("{{\"layer\":{},\"event\":{}}}", json_str(l), json_str(w)))
                .collect::<Vec<_>>()
                .join(",")
        ));
        match r {
            Lookup::Found(f) => node = ov.instantiate(&node, c, *f),
            _ => {
                visible = false;
                break;
            }
        }
    }
    let mut jstat = "null".to_string();
    if visible {
        let a = ov.attr_of(&node)?;
        let st = a.st;
        let _ = writeln!(
            out,
            "stat: {} mode {:o} uid {} gid {} size {} nlink {} ino {}",
            kind_name(st.kind()),
            st.mode & 0o7777,
            st.uid,
            st.gid,
            st.size,
            st.nlink,
            a.ino
        );
        jstat = format!(
            "{{\"type\":{},\"mode\":\"{:o}\",\"uid\":{},\"gid\":{},\"size\":{},\"nlink\":{},\"ino\":{}}}",
            json_str(kind_name(st.kind())),
            st.mode & 0o7777,
            st.uid,
            st.gid,
            st.size,
            st.nlink,
            a.ino
        );
    }
    if json {
        println!(
            "{{\"path\":{},\"visible\":{},\"components\":[{}],\"stat\":{}}}",
            json_str(&path.display().to_string()),
            visible,
            jcomps.join(","),
            jstat
        );
    } else {
        print!("{out}");
    }
    Ok(if visible { 0 } else { 1 })
}

/// Called with (union path, directory, name) of an object.
pub(crate) type AliasFn<'a> =
    dyn FnMut(&[Vec<u8>], Arc<std::os::fd::OwnedFd>, Vec<u8>) -> Result<()> + 'a;

/// Every union path of a lower hard-linked file whose copy lives in the index but which
/// was not itself modified (the union shows the index copy under it too): `f(path, dir,
/// name)` with the copy's location. Nothing to do without an index or copies in it.
pub(crate) fn index_aliases(full: &Overlay, f: &mut AliasFn<'_>) -> Result<()> {
    let Some(idx) = &full.index else {
        return Ok(());
    };
    let has_copies = sys::read_dir(idx.as_fd())?
        .iter()
        .any(|e| e.name.len() == 16 && e.name.iter().all(u8::is_ascii_hexdigit));
    if has_copies {
        visit_index_aliases(full, &full.root(), &mut Vec::new(), f)?;
    }
    Ok(())
}

fn visit_index_aliases(
    full: &Overlay,
    node: &Arc<Node>,
    comps: &mut Vec<Vec<u8>>,
    f: &mut AliasFn<'_>,
) -> Result<()> {
    let mut entries = full.merged_entries(node, false)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        let Lookup::Found(found) = full.resolve(node, &e.name)? else {
            continue;
        };
        let indexed = found.indexed && !found.in_upper;
        let child = full.instantiate(node, &e.name, *found);
        comps.push(e.name.clone());
        if indexed {
            let (dir, name) = full.real_loc(&child)?;
            f(comps, dir, name)?;
        } else if child.is_dir() {
            visit_index_aliases(full, &child, comps, f)?;
        }
        comps.pop();
    }
    Ok(())
}

/// Is `path` (components) visible in the lower layers alone?
pub(crate) fn in_lowers(lower_ov: &Overlay, comps: &[Vec<u8>]) -> Option<u32> {
    let mut node = lower_ov.root();
    let mut kind = libc::S_IFDIR;
    for c in comps {
        match lower_ov.resolve(&node, c).ok()? {
            Lookup::Found(f) => {
                kind = f.st.kind();
                node = lower_ov.instantiate(&node, c, *f);
            }
            _ => return None,
        }
    }
    Some(kind)
}

fn diff(lowerdir: &str, upperdir: PathBuf, workdir: Option<PathBuf>, json: bool) -> Result<i32> {
    let (lower_ov, full_ov) = match (
        open_stack(lowerdir, None, None),
        open_stack(lowerdir, Some(upperdir), workdir.as_deref()),
    ) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("layerfs diff: {e}");
            return Ok(2);
        }
    };
    let mut changes: Vec<(char, String)> = Vec::new();
    let upper = full_ov
        .layers
        .upper
        .as_ref()
        .map(|u| u.root.clone())
        .expect("upper");
    walk_upper(&full_ov, &lower_ov, &upper, &mut Vec::new(), &mut changes)?;
    index_aliases(&full_ov, &mut |comps, _, _| {
        changes.push(('C', show(comps)));
        Ok(())
    })?;
    changes.sort_by(|a, b| a.1.cmp(&b.1));
    changes.dedup();
    if json {
        let items: Vec<String> = changes
            .iter()
            .map(|(k, p)| format!("{{\"kind\":\"{k}\",\"path\":{}}}", json_str(p)))
            .collect();
        println!("[{}]", items.join(","));
    } else {
        for (k, p) in &changes {
            println!("{k} {p}");
        }
    }
    Ok(0)
}

/// `a/b/c` (bytes, no leading slash) for tar paths.
pub(crate) fn show_rel(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

pub(crate) fn show(comps: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(&bstr(c));
    }
    s
}

fn walk_upper(
    full: &Overlay,
    lower: &Overlay,
    dir: &std::os::fd::OwnedFd,
    comps: &mut Vec<Vec<u8>>,
    out: &mut Vec<(char, String)>,
) -> Result<()> {
    for e in sys::read_dir(dir.as_fd())? {
        if e.name == whiteout::OPAQUE_MARKER {
            continue;
        }
        if let Some(t) = whiteout::whiteout_target(&e.name) {
            comps.push(t.to_vec());
            if in_lowers(lower, comps).is_some() {
                out.push(('D', show(comps)));
            }
            comps.pop();
            continue;
        }
        let st = sys::fstatat(dir.as_fd(), &e.name)?;
        comps.push(e.name.clone());
        if whiteout::is_whiteout_stat(&st) {
            if in_lowers(lower, comps).is_some() {
                out.push(('D', show(comps)));
            }
        } else if st.is_dir() {
            let sub = sys::open_subdir(dir.as_fd(), &e.name)?;
            let redirected = full.dir_redirect(&sub).is_some();
            let opaque = full.dir_opaque(&sub) == whiteout::OpaqueValue::Yes;
            match in_lowers(lower, comps) {
                Some(libc::S_IFDIR) if !redirected => {
                    out.push(('C', show(comps)));
                    if opaque {
                        // everything the lower had below is gone
                        list_union(lower, comps, 'D', out)?;
                    }
                }
                Some(_) => {
                    out.push(('C', show(comps)));
                    if redirected {
                        list_union(full, comps, 'A', out)?;
                    }
                }
                None => {
                    out.push(('A', show(comps)));
                    if redirected {
                        list_union(full, comps, 'A', out)?;
                    }
                }
            }
            walk_upper(full, lower, &sub, comps, out)?;
        } else {
            let k = if in_lowers(lower, comps).is_some() {
                'C'
            } else {
                'A'
            };
            out.push((k, show(comps)));
        }
        comps.pop();
    }
    Ok(())
}

/// Every object below `comps` in the union of `ov`, tagged `k`.
fn list_union(
    ov: &Overlay,
    comps: &mut Vec<Vec<u8>>,
    k: char,
    out: &mut Vec<(char, String)>,
) -> Result<()> {
    let mut node = ov.root();
    for c in comps.iter() {
        match ov.resolve(&node, c)? {
            Lookup::Found(f) => node = ov.instantiate(&node, c, *f),
            _ => return Ok(()),
        }
    }
    if !node.is_dir() {
        return Ok(());
    }
    for e in ov.merged_entries(&node, false)? {
        comps.push(e.name.clone());
        out.push((k, show(comps)));
        if e.kind == libc::S_IFDIR {
            list_union(ov, comps, k, out)?;
        }
        comps.pop();
    }
    Ok(())
}
