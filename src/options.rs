//! Command line and `-o` option parsing, compatible with fuse-overlayfs's argv.
//!
//! Accepted argv (arguments after argv\[0\]): `-o OPTS` / `-oOPTS` (several groups merge, later
//! wins), `-f`, `-d`, `-s`, `-V`/`--version`, `-h`/`--help`, `--`, and exactly one MOUNTPOINT,
//! in any order. Inside an `-o` group options are comma-separated; `\,` is a literal comma,
//! `\"` a literal quote, and a value starting with `"` (as in `context="a,b"`) may hold commas
//! up to the closing quote (the quotes are stripped). Any other backslash is kept for the
//! option itself: `lowerdir=` understands `\:` (literal colon) and `\\` (literal backslash).
//! Paths are handled as bytes and may be non-UTF-8.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// One `container:host:size` id mapping triple (containers/storage's
/// `ContainerID:HostID:Size`): `container` ids are the ones stored in the layers, `host` ids
/// the ones the mount shows (see `idmap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// Everything the daemon needs to know from its command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Lower layers, top first (L1 of `lowerdir=L1:L2`), absolute paths.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub mountpoint: PathBuf,
    /// `-f`: stay in the foreground.
    pub foreground: bool,
    /// `-d` or `debug`: log every request.
    pub debug: bool,
    pub uid_mappings: Vec<IdMap>,
    pub gid_mappings: Vec<IdMap>,
    pub squash_to_root: bool,
    pub squash_to_uid: Option<u32>,
    pub squash_to_gid: Option<u32>,
    pub static_nlink: bool,
    pub noacl: bool,
    /// `fsync=0` sets this false; `volatile` also sets it false.
    pub fsync: bool,
    pub volatile: bool,
    /// `threaded=N` / `threads=N` (0 = default).
    pub threads: usize,
    /// Entry/attr timeout in seconds (`timeout=`), None = default.
    pub timeout: Option<f64>,
    pub writeback: bool,
    /// `passthrough=all|upper|off`: which files FUSE passthrough may be used for.
    pub passthrough: Passthrough,
    /// `noopen`: the kernel opens regular files without asking the daemon (OPEN answered
    /// ENOSYS); reads and writes come by inode, FUSE passthrough is off.
    pub noopen: bool,
    pub fast_ino: bool,
    pub noxattrs: bool,
    /// `xattr_permissions=0|1|2`.
    pub xattr_permissions: u8,
    pub ino32: bool,
    pub xino: Option<String>,
    /// false after `redirect_dir=off`.
    pub redirect_dir: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    /// `nosuid`/`suid` as given; None: decided at mount (see `daemon::fuse_config`).
    pub nosuid: Option<bool>,
    /// `nodev`/`dev` as given; None: decided at mount.
    pub nodev: Option<bool>,
    pub noexec: bool,
    pub noatime: bool,
    /// `ro`: mount read-only even with an upper.
    pub ro: bool,
    pub context: Option<String>,
    /// `log=FILE`: append the daemon's log (warnings, SIGUSR1 counters, `-d` requests) here.
    pub log_file: Option<PathBuf>,
    /// Warnings to print once logging is set up (unknown/empty options...).
    pub warnings: Vec<String>,
}

impl Default for Options {
    /// Defaults: `fsync` and `redirect_dir` on, everything else off/empty.
    fn default() -> Self {
        Options {
            lowerdirs: Vec::new(),
            upperdir: None,
            workdir: None,
            mountpoint: PathBuf::new(),
            foreground: false,
            debug: false,
            uid_mappings: Vec::new(),
            gid_mappings: Vec::new(),
            squash_to_root: false,
            squash_to_uid: None,
            squash_to_gid: None,
            static_nlink: false,
            noacl: false,
            fsync: true,
            volatile: false,
            threads: 0,
            timeout: None,
            writeback: false,
            passthrough: Passthrough::Upper,
            noopen: false,
            fast_ino: false,
            noxattrs: false,
            xattr_permissions: 0,
            ino32: false,
            xino: None,
            redirect_dir: true,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            nosuid: None,
            nodev: None,
            noexec: false,
            noatime: false,
            ro: false,
            log_file: None,
            context: None,
            warnings: Vec::new(),
        }
    }
}

/// Which regular files FUSE passthrough (where the kernel and privileges allow it) is used
/// for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passthrough {
    /// Upper files, and lower files opened read-only (such an open keeps reading the lower
    /// file after a copy-up, as the kernel overlay before 4.19 did).
    All,
    /// Upper files (and every file of a read-only mount) only: lower files of a writable
    /// mount go through the daemon, and an fd opened before a copy-up reads the copy.
    Upper,
    /// Never: all file I/O goes through the daemon.
    Off,
}

impl Options {
    /// True when nothing may be written: no upper layer, or `ro`.
    pub fn read_only(&self) -> bool {
        self.upperdir.is_none() || self.ro
    }
}

/// What the command line asks for.
// Built once per run; boxing `Options` would only complicate the callers.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Mount(Options),
    Version,
    Help,
}

/// `--version` output. `podman info` shows the first line.
pub const VERSION_TEXT: &str = concat!(
    "layerfs: version ",
    env!("CARGO_PKG_VERSION"),
    "\nFUSE library version: fuser 0.18\n"
);

/// `--version` output (see [`VERSION_TEXT`]).
pub fn version_text() -> &'static str {
    VERSION_TEXT
}

/// `--help` output.
pub fn help_text() -> &'static str {
    concat!(
        "usage: layerfs [-f] [-d] -o lowerdir=L1[:L2...][,upperdir=U,workdir=W][,OPTION...] MOUNTPOINT\n",
        "       layerfs --version | --help\n",
        "       layerfs explain|diff|export|import|check ...   (layerfs COMMAND --help)\n",
        "\n",
        "Command-line options:\n",
        "    -o OPTS, -oOPTS          comma-separated mount options (several -o groups merge, later wins)\n",
        "    -f                       stay in the foreground\n",
        "    -d                       debug: log every request (implies -f)\n",
        "    -s                       accepted and ignored\n",
        "    -V, --version            print the version and exit\n",
        "    -h, --help               print this help and exit\n",
        "\n",
        "Mount options (-o):\n",
        "    lowerdir=L1:L2:...       read-only layers, L1 on top; '\\:' is a literal colon, '\\\\' a backslash\n",
        "    upperdir=DIR             writable layer (requires workdir)\n",
        "    workdir=DIR              scratch dir on the same filesystem as upperdir\n",
        "    log=FILE                 append the daemon's log here (default: stderr in the foreground, syslog in the background)\n",
        "    uidmapping=C:H:N[:...]   uid map, container:host:size triples (a leading ':' is allowed);\n",
        "                             stored id C shows as H\n",
        "    gidmapping=C:H:N[:...]   gid map, container:host:size triples (a leading ':' is allowed)\n",
        "    squash_to_root           show every file as owned by root\n",
        "    squash_to_uid=N          show every file as owned by uid N\n",
        "    squash_to_gid=N          show every file as owned by gid N\n",
        "    static_nlink             report directory link count 1 instead of computing it\n",
        "    noacl                    disable POSIX ACL support\n",
        "    fsync=0|1                honour fsync requests (default 1)\n",
        "    volatile                 skip all syncs (implies fsync=0)\n",
        "    threaded=N, threads=N    number of FUSE worker threads (0 = default)\n",
        "    timeout=SECS             entry/attribute cache timeout in seconds (fractional allowed)\n",
        "    writeback=0|1            enable the kernel writeback cache\n",
        "    passthrough=all|upper|off  FUSE passthrough for upper and read-only-opened lower\n",
        "                             files / upper files only / never (default upper)\n",
        "    noopen[=0|1]             the kernel opens regular files without asking layerfs\n",
        "                             (no OPEN/RELEASE round trips; no passthrough; copy-up\n",
        "                             at the first write instead of at open)\n",
        "    fast_ino[=0|1]           faster, less stable inode numbers\n",
        "    noxattrs[=0|1]           disable extended attributes\n",
        "    plugins=...              not supported; ignored with a warning\n",
        "    xattr_permissions=0|1|2  1/2: keep owner and mode in an xattr instead of chown/chmod\n",
        "    ino32_t                  keep inode numbers within 32 bits\n",
        "    xino=off|auto|on         inode number composition\n",
        "    redirect_dir=off|on|follow|nofollow  directory rename redirects (default on)\n",
        "    context=\"LABEL\"          SELinux label (accepted and ignored)\n",
        "    metacopy=, index=, userxattr, nfs_export=  kernel overlay options, accepted and ignored\n",
        "    allow_other, allow_root  let other users (or root) access the mount\n",
        "    default_permissions      let the kernel check permissions\n",
        "    suid/nosuid, dev/nodev, exec/noexec  usual mount flags\n",
        "    atime/noatime/relatime/strictatime   access time updates\n",
        "    ro, rw                   mount read-only / read-write\n",
        "    debug                    same as -d\n",
        "    private                  accepted and ignored\n",
        "Unknown options are ignored with a warning.\n",
    )
}

/// Maps `id` through `maps`: container -> host (stored -> shown) when `to_host`, host ->
/// container (shown -> stored) otherwise.
/// `None` when no mapping covers `id`.
pub fn map_id(maps: &[IdMap], id: u32, to_host: bool) -> Option<u32> {
    maps.iter().find_map(|m| {
        let (from, to) = if to_host {
            (m.container, m.host)
        } else {
            (m.host, m.container)
        };
        let off = u64::from(id).checked_sub(u64::from(from))?;
        if off < u64::from(m.size) {
            u32::try_from(u64::from(to) + off).ok()
        } else {
            None
        }
    })
}

/// Escapes one path for use inside `-o lowerdir=...`: `\`, `:`, `,` and `"` get a backslash.
pub fn escape_lowerdir(path: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(path.len());
    for &b in path.as_bytes() {
        if matches!(b, b'\\' | b':' | b',' | b'"') {
            out.push(b'\\');
        }
        out.push(b);
    }
    OsString::from_vec(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Parses the command line (`args` excludes argv\[0\]).
///
/// `--help`/`--version` win over everything else, even over errors elsewhere on the line.
pub fn parse_args<I: IntoIterator<Item = OsString>>(args: I) -> Result<Command, String> {
    let mut opts = Options::default();
    let mut mountpoint: Option<OsString> = None;
    let mut error: Option<String> = None;
    let mut only_positional = false;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let b = arg.as_bytes();
        let res: Result<(), String> = if only_positional || b == b"-" || !b.starts_with(b"-") {
            if mountpoint.is_some() {
                Err(format!(
                    "unexpected extra argument '{}' (only one mountpoint is allowed)",
                    lossy(b)
                ))
            } else {
                mountpoint = Some(arg.clone());
                Ok(())
            }
        } else {
            match b {
                b"--" => {
                    only_positional = true;
                    Ok(())
                }
                b"-h" | b"--help" => return Ok(Command::Help),
                b"-V" | b"--version" => return Ok(Command::Version),
                b"-f" => {
                    opts.foreground = true;
                    Ok(())
                }
                b"-d" => {
                    opts.debug = true;
                    opts.foreground = true;
                    Ok(())
                }
                b"-s" => Ok(()),
                b"-o" => match it.next() {
                    Some(group) => apply_group(&mut opts, group.as_bytes()),
                    None => Err("option '-o' requires an argument".to_string()),
                },
                _ if b.starts_with(b"-o") => apply_group(&mut opts, &b[2..]),
                _ => Err(format!("unknown command-line option '{}'", lossy(b))),
            }
        };
        if let Err(e) = res {
            error.get_or_insert(e);
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let mp = mountpoint.ok_or_else(|| {
        "missing mountpoint (usage: layerfs -o lowerdir=DIR[:DIR...] MOUNTPOINT)".to_string()
    })?;
    if mp.is_empty() {
        return Err("mountpoint: empty argument".to_string());
    }
    opts.mountpoint = absolute(mp, "mountpoint")?;
    Ok(Command::Mount(opts))
}

/// Splits one `-o` group into options (see the module doc for quoting and escapes).
/// Empty options are dropped.
fn split_group(group: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut in_quote = false;
    let mut i = 0;
    while i < group.len() {
        let c = group[i];
        if c == b'\\' && i + 1 < group.len() {
            let n = group[i + 1];
            if n == b',' || n == b'"' {
                cur.push(n);
            } else {
                cur.push(c);
                cur.push(n);
            }
            i += 2;
            continue;
        }
        if in_quote {
            if c == b'"' {
                in_quote = false;
            } else {
                cur.push(c);
            }
        } else if c == b',' {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if c == b'"' && at_value_start(&cur) {
            in_quote = true;
        } else {
            cur.push(c);
        }
        i += 1;
    }
    if in_quote {
        return Err(format!("unterminated quote in option '{}'", lossy(&cur)));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// A `"` opens a quoted section at the start of an option or right after its first `=`.
fn at_value_start(cur: &[u8]) -> bool {
    cur.is_empty() || cur.iter().position(|&b| b == b'=') == Some(cur.len() - 1)
}

fn apply_group(opts: &mut Options, group: &[u8]) -> Result<(), String> {
    for opt in split_group(group)? {
        apply_option(opts, &opt)?;
    }
    Ok(())
}

fn need<'a>(name: &str, value: Option<&'a [u8]>) -> Result<&'a [u8], String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(missing(name)),
    }
}

fn missing(name: &str) -> String {
    format!("{name}: missing value ({name}=...)")
}

fn invalid(name: &str, value: &[u8], expected: &str) -> String {
    format!(
        "{name}: invalid value '{}' (expected {expected})",
        lossy(value)
    )
}

/// `None` (bare flag) is true; otherwise 0/1 (also false/true, off/on, no/yes).
fn parse_bool(name: &str, value: Option<&[u8]>) -> Result<bool, String> {
    match value {
        None => Ok(true),
        Some(b"1" | b"true" | b"on" | b"yes") => Ok(true),
        Some(b"0" | b"false" | b"off" | b"no") => Ok(false),
        Some(v) => Err(invalid(name, v, "0 or 1")),
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, value: Option<&[u8]>) -> Result<T, String> {
    let v = need(name, value)?;
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<T>().ok())
        .ok_or_else(|| invalid(name, v, "a non-negative integer"))
}

fn parse_path(name: &str, value: Option<&[u8]>) -> Result<PathBuf, String> {
    let v = need(name, value)?;
    absolute(OsString::from_vec(v.to_vec()), name)
}

/// Makes `p` absolute against the current directory (`.` components dropped); absolute
/// paths are kept byte for byte.
fn absolute(p: OsString, what: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        return Ok(p);
    }
    let cwd = std::env::current_dir().map_err(|e| {
        format!(
            "{what}: cannot resolve relative path {}: current directory: {}",
            p.display(),
            io_msg(&e)
        )
    })?;
    Ok(cwd.join(&p).components().collect())
}

/// Splits a `lowerdir=` value at unescaped colons; a backslash makes the next byte literal.
/// Empty entries are returned as empty vectors.
fn split_lowerdir(value: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut it = value.iter().copied();
    while let Some(c) = it.next() {
        match c {
            b'\\' => cur.push(it.next().unwrap_or(b'\\')),
            b':' => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// Parses `uidmapping=`/`gidmapping=`: colon-separated `container:host:size` triples,
/// optionally with a leading colon.
fn parse_mappings(name: &str, value: Option<&[u8]>) -> Result<Vec<IdMap>, String> {
    let v = need(name, value)?;
    let body = v.strip_prefix(b":").unwrap_or(v);
    let mut nums = Vec::new();
    for field in body.split(|&b| b == b':') {
        let n = std::str::from_utf8(field)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .ok_or_else(|| {
                format!(
                    "{name}: invalid value '{}' ('{}' is not a number)",
                    lossy(v),
                    lossy(field)
                )
            })?;
        nums.push(n);
    }
    if nums.len() % 3 != 0 {
        return Err(format!(
            "{name}: invalid value '{}' (expected container:host:size triples, got {} numbers)",
            lossy(v),
            nums.len()
        ));
    }
    let maps: Vec<IdMap> = nums
        .chunks(3)
        .map(|t| IdMap {
            container: t[0],
            host: t[1],
            size: t[2],
        })
        .collect();
    for m in &maps {
        check_map(name, m)?;
    }
    Ok(maps)
}

fn check_map(name: &str, m: &IdMap) -> Result<(), String> {
    let end = u64::from(u32::MAX) + 1;
    if m.size == 0 {
        return Err(format!(
            "{name}: mapping {}:{}:{} has size 0",
            m.container, m.host, m.size
        ));
    }
    if u64::from(m.container) + u64::from(m.size) > end
        || u64::from(m.host) + u64::from(m.size) > end
    {
        return Err(format!(
            "{name}: mapping {}:{}:{} goes beyond id 4294967295",
            m.container, m.host, m.size
        ));
    }
    Ok(())
}

fn apply_option(opts: &mut Options, opt: &[u8]) -> Result<(), String> {
    let (name_b, value) = match opt.iter().position(|&b| b == b'=') {
        Some(i) => (&opt[..i], Some(&opt[i + 1..])),
        None => (opt, None),
    };
    let name = match std::str::from_utf8(name_b) {
        Ok(n) => n,
        Err(_) => {
            opts.warnings
                .push(format!("unknown option '{}' ignored", lossy(opt)));
            return Ok(());
        }
    };
    match name {
        "lowerdir" => {
            let v = need(name, value)?;
            let mut dirs = Vec::new();
            for entry in split_lowerdir(v) {
                if entry.is_empty() {
                    opts.warnings
                        .push("lowerdir: empty path in the list ignored".to_string());
                    continue;
                }
                dirs.push(absolute(OsString::from_vec(entry), name)?);
            }
            if dirs.is_empty() {
                return Err(format!("lowerdir: no directory in '{}'", lossy(v)));
            }
            opts.lowerdirs = dirs;
        }
        "upperdir" => opts.upperdir = Some(parse_path(name, value)?),
        "workdir" => opts.workdir = Some(parse_path(name, value)?),
        "log" => opts.log_file = Some(parse_path(name, value)?),
        "uidmapping" => opts.uid_mappings = parse_mappings(name, value)?,
        "gidmapping" => opts.gid_mappings = parse_mappings(name, value)?,
        "squash_to_root" => opts.squash_to_root = parse_bool(name, value)?,
        "squash_to_uid" => opts.squash_to_uid = Some(parse_num(name, value)?),
        "squash_to_gid" => opts.squash_to_gid = Some(parse_num(name, value)?),
        "static_nlink" => opts.static_nlink = parse_bool(name, value)?,
        "noacl" => opts.noacl = parse_bool(name, value)?,
        "fsync" => opts.fsync = parse_bool(name, value)?,
        "volatile" => {
            if parse_bool(name, value)? {
                opts.volatile = true;
                opts.fsync = false;
            } else {
                opts.volatile = false;
            }
        }
        "threaded" | "threads" => opts.threads = parse_num(name, value)?,
        "timeout" => {
            let v = need(name, value)?;
            let t = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<f64>().ok())
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| invalid(name, v, "a number of seconds, e.g. 1.5"))?;
            opts.timeout = Some(t);
        }
        "writeback" => opts.writeback = parse_bool(name, value)?,
        "passthrough" => {
            let v = need(name, value)?;
            opts.passthrough = match v {
                b"all" => Passthrough::All,
                b"upper" => Passthrough::Upper,
                b"off" => Passthrough::Off,
                _ => return Err(invalid(name, v, "all, upper or off")),
            };
        }
        "noopen" => opts.noopen = parse_bool(name, value)?,
        "fast_ino" => opts.fast_ino = parse_bool(name, value)?,
        "noxattrs" => opts.noxattrs = parse_bool(name, value)?,
        "plugins" => opts.warnings.push(format!(
            "plugins are not supported; option '{}' ignored",
            lossy(opt)
        )),
        "xattr_permissions" => {
            opts.xattr_permissions = match value {
                Some(b"0") => 0,
                Some(b"1") => 1,
                Some(b"2") => 2,
                Some(v) => return Err(invalid(name, v, "0, 1 or 2")),
                None => return Err(missing(name)),
            }
        }
        "ino32_t" => opts.ino32 = parse_bool(name, value)?,
        "xino" => {
            let v = need(name, value)?;
            match v {
                b"off" | b"auto" | b"on" => opts.xino = Some(lossy(v)),
                _ => return Err(invalid(name, v, "off, auto or on")),
            }
        }
        "redirect_dir" => {
            let v = need(name, value)?;
            opts.redirect_dir = match v {
                b"on" | b"follow" => true,
                b"off" | b"nofollow" => false,
                _ => return Err(invalid(name, v, "off, on, follow or nofollow")),
            };
        }
        "context" => opts.context = Some(lossy(value.unwrap_or_default())),
        "allow_other" => opts.allow_other = parse_bool(name, value)?,
        "allow_root" => opts.allow_root = parse_bool(name, value)?,
        "default_permissions" => opts.default_permissions = parse_bool(name, value)?,
        "suid" => opts.nosuid = Some(false),
        "nosuid" => opts.nosuid = Some(true),
        "dev" => opts.nodev = Some(false),
        "nodev" => opts.nodev = Some(true),
        "exec" => opts.noexec = false,
        "noexec" => opts.noexec = true,
        "atime" | "relatime" | "strictatime" => opts.noatime = false,
        "noatime" => opts.noatime = true,
        "ro" => opts.ro = true,
        "rw" => opts.ro = false,
        "debug" => {
            // As in libfuse, `-o debug` also keeps the daemon in the foreground.
            opts.debug = true;
            opts.foreground = true;
        }
        // Kernel overlay and libfuse options with nothing to do here.
        "private" | "metacopy" | "index" | "userxattr" | "nfs_export" | "fsname" | "subtype"
        | "diratime" | "nodiratime" => {}
        _ => opts
            .warnings
            .push(format!("unknown option '{}' ignored", lossy(opt))),
    }
    Ok(())
}

/// The message of an I/O error without Rust's " (os error N)" suffix.
pub(crate) fn io_msg(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_string(),
        None => e.to_string(),
    }
}

/// `stat`s a layer/mountpoint directory: "`what`PATH: reason" on failure.
/// `what` is the message prefix, e.g. `"lowerdir: "` or `"mountpoint "`.
fn check_dir(what: &str, p: &Path) -> Result<std::fs::Metadata, String> {
    let md = std::fs::metadata(p).map_err(|e| format!("{what}{}: {}", p.display(), io_msg(&e)))?;
    if !md.is_dir() {
        return Err(format!("{what}{}: not a directory", p.display()));
    }
    Ok(md)
}

fn canon(what: &str, p: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(p).map_err(|e| format!("{what}: {}: {}", p.display(), io_msg(&e)))
}

/// Checks the options against the filesystem before anything is mounted or written.
/// Writes nothing.
pub fn validate(opts: &Options) -> Result<(), String> {
    if opts.lowerdirs.is_empty() {
        return Err("lowerdir: missing (lowerdir= is required)".to_string());
    }
    let mut lowers = Vec::with_capacity(opts.lowerdirs.len());
    for l in &opts.lowerdirs {
        check_dir("lowerdir: ", l)?;
        lowers.push((l, canon("lowerdir", l)?));
    }
    match (&opts.upperdir, &opts.workdir) {
        (Some(_), None) => return Err("upperdir given without workdir".to_string()),
        (None, Some(_)) => return Err("workdir given without upperdir".to_string()),
        (None, None) => {}
        (Some(u), Some(w)) => {
            let umd = check_dir("upperdir: ", u)?;
            let wmd = check_dir("workdir: ", w)?;
            if umd.dev() != wmd.dev() {
                return Err(format!(
                    "workdir {} is on a different filesystem than upperdir {}",
                    w.display(),
                    u.display()
                ));
            }
            let uc = canon("upperdir", u)?;
            let wc = canon("workdir", w)?;
            if uc.starts_with(&wc) || wc.starts_with(&uc) {
                return Err(format!(
                    "upperdir {} and workdir {} must not be nested inside each other",
                    u.display(),
                    w.display()
                ));
            }
            for (what, p, pc) in [("upperdir", u, &uc), ("workdir", w, &wc)] {
                for (l, lc) in &lowers {
                    if pc.starts_with(lc) {
                        return Err(format!(
                            "{what} {} is inside lowerdir {}",
                            p.display(),
                            l.display()
                        ));
                    }
                    if lc.starts_with(pc) {
                        return Err(format!(
                            "lowerdir {} is inside {what} {}",
                            l.display(),
                            p.display()
                        ));
                    }
                }
            }
        }
    }
    for (name, maps) in [
        ("uidmapping", &opts.uid_mappings),
        ("gidmapping", &opts.gid_mappings),
    ] {
        for m in maps {
            check_map(name, m)?;
        }
    }
    if let Some(t) = opts.timeout {
        if !t.is_finite() || t < 0.0 {
            return Err(format!(
                "timeout: invalid value '{t}' (expected a number of seconds, e.g. 1.5)"
            ));
        }
    }
    if opts.xattr_permissions > 2 {
        return Err(format!(
            "xattr_permissions: invalid value '{}' (expected 0, 1 or 2)",
            opts.xattr_permissions
        ));
    }
    if opts.mountpoint.as_os_str().is_empty() {
        return Err("mountpoint: missing".to_string());
    }
    check_dir("mountpoint ", &opts.mountpoint)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn mount(v: &[&str]) -> Options {
        match parse_args(args(v)) {
            Ok(Command::Mount(o)) => o,
            other => panic!("{v:?}: expected Mount, got {other:?}"),
        }
    }

    fn err(v: &[&str]) -> String {
        match parse_args(args(v)) {
            Err(e) => e,
            other => panic!("{v:?}: expected an error, got {other:?}"),
        }
    }

    fn pb(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn m(container: u32, host: u32, size: u32) -> IdMap {
        IdMap {
            container,
            host,
            size,
        }
    }

    #[test]
    fn defaults() {
        let o = Options::default();
        assert!(o.fsync);
        assert!(o.redirect_dir);
        assert!(!o.volatile && !o.ro && !o.foreground && !o.debug);
        assert_eq!(o.threads, 0);
        assert_eq!(o.timeout, None);
        assert_eq!(o.xattr_permissions, 0);
        let o = mount(&["-o", "lowerdir=/l", "/m"]);
        assert!(o.fsync && o.redirect_dir);
        assert!(o.warnings.is_empty());
        assert_eq!(o.lowerdirs, vec![pb("/l")]);
        assert_eq!(o.mountpoint, pb("/m"));
        assert!(o.read_only());
    }

    #[test]
    fn podman_read_write_trailing_comma() {
        let g = "/var/lib/containers/storage/overlay";
        let o = mount(&[
            "-o",
            &format!("lowerdir={g}/l/AAA:{g}/l/BBB,upperdir={g}/id/diff,workdir={g}/id/work,"),
            &format!("{g}/id/merged"),
        ]);
        assert_eq!(
            o.lowerdirs,
            vec![pb(&format!("{g}/l/AAA")), pb(&format!("{g}/l/BBB"))]
        );
        assert_eq!(o.upperdir, Some(pb(&format!("{g}/id/diff"))));
        assert_eq!(o.workdir, Some(pb(&format!("{g}/id/work"))));
        assert_eq!(o.mountpoint, pb(&format!("{g}/id/merged")));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(o.fsync && !o.volatile && !o.read_only());
    }

    #[test]
    fn podman_volatile_after_empty_option() {
        let o = mount(&[
            "-o",
            "lowerdir=/g/l/A,upperdir=/g/i/diff,workdir=/g/i/work,,volatile",
            "/g/i/merged",
        ]);
        assert!(o.volatile);
        assert!(!o.fsync);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        // Lots of empty options, leading and trailing.
        let o = mount(&["-o", ",,lowerdir=/a,,,", "-o", ",", "-o", "", "/m"]);
        assert_eq!(o.lowerdirs, vec![pb("/a")]);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn podman_read_only_base_layer() {
        let o = mount(&["-o", "lowerdir=/g/id/diff:/g/id/empty", "/g/id/merged"]);
        assert_eq!(o.lowerdirs, vec![pb("/g/id/diff"), pb("/g/id/empty")]);
        assert_eq!(o.upperdir, None);
        assert!(o.read_only());
    }

    #[test]
    fn podman_keep_id_mappings() {
        let o = mount(&[
            "-o",
            "lowerdir=/l,upperdir=/u,workdir=/w,uidmapping=:0:1:1001:1001:0:1:1002:1002:64535,gidmapping=:0:1:1001:1001:0:1:1002:1002:64535,",
            "/m",
        ]);
        let want = vec![m(0, 1, 1001), m(1001, 0, 1), m(1002, 1002, 64535)];
        assert_eq!(o.uid_mappings, want);
        assert_eq!(o.gid_mappings, want);
        // Without the leading colon.
        let o = mount(&["-o", "lowerdir=/l,uidmapping=0:1000:1:1:100000:65536", "/m"]);
        assert_eq!(o.uid_mappings, vec![m(0, 1000, 1), m(1, 100000, 65536)]);
        assert!(o.gid_mappings.is_empty());
    }

    #[test]
    fn mapping_errors_name_the_option() {
        let e = err(&["-o", "lowerdir=/l,uidmapping=0:1:2:3", "/m"]);
        assert!(e.starts_with("uidmapping: "), "{e}");
        assert!(e.contains("triples") && e.contains("4 numbers"), "{e}");
        let e = err(&["-o", "lowerdir=/l,gidmapping=0:x:1", "/m"]);
        assert!(
            e.starts_with("gidmapping: ") && e.contains("'x' is not a number"),
            "{e}"
        );
        let e = err(&["-o", "lowerdir=/l,gidmapping=0:1:-1", "/m"]);
        assert!(e.starts_with("gidmapping: "), "{e}");
        let e = err(&["-o", "lowerdir=/l,uidmapping=::0:1:1", "/m"]);
        assert!(e.starts_with("uidmapping: "), "{e}");
        let e = err(&["-o", "lowerdir=/l,uidmapping=0:1:0", "/m"]);
        assert_eq!(e, "uidmapping: mapping 0:1:0 has size 0");
        let e = err(&["-o", "lowerdir=/l,uidmapping=4294967295:0:2", "/m"]);
        assert!(e.starts_with("uidmapping: ") && e.contains("beyond"), "{e}");
        let e = err(&["-o", "lowerdir=/l,uidmapping=", "/m"]);
        assert_eq!(e, "uidmapping: missing value (uidmapping=...)");
        let e = err(&["-o", "lowerdir=/l,uidmapping=99999999999:0:1", "/m"]);
        assert!(e.starts_with("uidmapping: "), "{e}");
    }

    #[test]
    fn podman_squash_and_force_mask() {
        let o = mount(&[
            "-o",
            "lowerdir=/l,squash_to_uid=1000,squash_to_gid=1001,xattr_permissions=2",
            "/m",
        ]);
        assert_eq!(o.squash_to_uid, Some(1000));
        assert_eq!(o.squash_to_gid, Some(1001));
        assert_eq!(o.xattr_permissions, 2);
        assert!(!o.squash_to_root);
        let o = mount(&["-o", "lowerdir=/l,squash_to_root", "/m"]);
        assert!(o.squash_to_root);
        let e = err(&["-o", "lowerdir=/l,squash_to_uid=abc", "/m"]);
        assert_eq!(
            e,
            "squash_to_uid: invalid value 'abc' (expected a non-negative integer)"
        );
        let e = err(&["-o", "lowerdir=/l,squash_to_gid=-1", "/m"]);
        assert!(e.starts_with("squash_to_gid: invalid value '-1'"), "{e}");
        let e = err(&["-o", "lowerdir=/l,squash_to_gid", "/m"]);
        assert_eq!(e, "squash_to_gid: missing value (squash_to_gid=...)");
    }

    #[test]
    fn selinux_context_with_commas() {
        let o = mount(&[
            "-o",
            "lowerdir=/l,upperdir=/u,workdir=/w,context=\"system_u:object_r:container_file_t:s0:c1,c2\",",
            "/m",
        ]);
        assert_eq!(
            o.context.as_deref(),
            Some("system_u:object_r:container_file_t:s0:c1,c2")
        );
        assert_eq!(o.workdir, Some(pb("/w")));
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        // Context first, then more options.
        let o = mount(&["-o", "context=\"a:b,c\",lowerdir=/l,volatile", "/m"]);
        assert_eq!(o.context.as_deref(), Some("a:b,c"));
        assert!(o.volatile);
        assert_eq!(o.lowerdirs, vec![pb("/l")]);
        // Unquoted.
        let o = mount(&["-o", "lowerdir=/l,context=system_u:object_r:x:s0", "/m"]);
        assert_eq!(o.context.as_deref(), Some("system_u:object_r:x:s0"));
        let e = err(&["-o", "lowerdir=/l,context=\"a,b", "/m"]);
        assert!(e.contains("unterminated quote"), "{e}");
    }

    #[test]
    fn lowerdir_escaped_colon_and_private() {
        let o = mount(&[
            "-o",
            r"lowerdir=/vol/a\:b:/vol/c\\d:/e\,f,upperdir=/u,workdir=/w,private",
            "/m",
        ]);
        assert_eq!(
            o.lowerdirs,
            vec![pb("/vol/a:b"), pb(r"/vol/c\d"), pb("/e,f")]
        );
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    }

    #[test]
    fn lowerdir_empty_entries() {
        let o = mount(&["-o", "lowerdir=/a::/b:", "/m"]);
        assert_eq!(o.lowerdirs, vec![pb("/a"), pb("/b")]);
        assert!(!o.warnings.is_empty());
        let e = err(&["-o", "lowerdir=", "/m"]);
        assert_eq!(e, "lowerdir: missing value (lowerdir=...)");
        let e = err(&["-o", "lowerdir=:", "/m"]);
        assert!(e.starts_with("lowerdir: "), "{e}");
    }

    #[test]
    fn several_o_groups_merge_later_wins() {
        let o = mount(&[
            "-o",
            "lowerdir=/a:/b,upperdir=/u1,fsync=0",
            "-olowerdir=/c,workdir=/w",
            "/m",
            "-o",
            "upperdir=/u2,fsync=1,threads=8",
            "-oro",
        ]);
        assert_eq!(o.lowerdirs, vec![pb("/c")]);
        assert_eq!(o.upperdir, Some(pb("/u2")));
        assert_eq!(o.workdir, Some(pb("/w")));
        assert!(o.fsync);
        assert_eq!(o.threads, 8);
        assert!(o.ro && o.read_only());
        assert_eq!(o.mountpoint, pb("/m"));
        // Within one group too.
        let o = mount(&["-o", "rw,ro,rw,lowerdir=/l,noatime,relatime", "/m"]);
        assert!(!o.ro && !o.noatime);
    }

    #[test]
    fn flags_f_d_s() {
        let o = mount(&["-f", "-o", "lowerdir=/l", "/m"]);
        assert!(o.foreground && !o.debug);
        let o = mount(&["-d", "-s", "-o", "lowerdir=/l", "/m"]);
        assert!(o.foreground && o.debug);
        let o = mount(&["-o", "lowerdir=/l,debug", "/m"]);
        assert!(o.foreground && o.debug);
        let o = mount(&["/m", "-o", "lowerdir=/l", "-f"]);
        assert!(o.foreground);
        assert_eq!(o.mountpoint, pb("/m"));
        let o = mount(&["-o", "lowerdir=/l", "--", "-m"]);
        assert!(o.mountpoint.ends_with("-m"));
    }

    #[test]
    fn version_and_help() {
        for a in ["--version", "-V"] {
            assert_eq!(parse_args(args(&[a])), Ok(Command::Version));
        }
        for a in ["--help", "-h"] {
            assert_eq!(parse_args(args(&[a])), Ok(Command::Help));
        }
        // They win over errors elsewhere on the line.
        assert_eq!(
            parse_args(args(&["-o", "fsync=7", "--version"])),
            Ok(Command::Version)
        );
        assert!(version_text()
            .starts_with(&format!("layerfs: version {}\n", env!("CARGO_PKG_VERSION"))));
        assert_eq!(version_text(), VERSION_TEXT);
        let h = help_text();
        for name in [
            "lowerdir",
            "upperdir",
            "workdir",
            "uidmapping",
            "gidmapping",
            "squash_to_root",
            "squash_to_uid",
            "squash_to_gid",
            "static_nlink",
            "noacl",
            "fsync",
            "volatile",
            "threaded",
            "timeout",
            "writeback",
            "passthrough",
            "noopen",
            "fast_ino",
            "noxattrs",
            "plugins",
            "xattr_permissions",
            "ino32_t",
            "xino",
            "redirect_dir",
            "context",
            "allow_other",
            "allow_root",
            "default_permissions",
            "nosuid",
            "nodev",
            "noexec",
            "noatime",
            "ro",
            "debug",
            "private",
            "metacopy",
            "userxattr",
            "nfs_export",
            "--version",
            "--help",
            "-f",
            "-d",
        ] {
            assert!(h.contains(name), "help lacks {name}");
        }
    }

    #[test]
    fn argv_errors() {
        assert!(err(&["-o", "lowerdir=/l"]).starts_with("missing mountpoint"));
        assert_eq!(
            err(&["-o", "lowerdir=/l", "/m", "/n"]),
            "unexpected extra argument '/n' (only one mountpoint is allowed)"
        );
        assert_eq!(err(&["/m", "-o"]), "option '-o' requires an argument");
        assert_eq!(
            err(&["-x", "-o", "lowerdir=/l", "/m"]),
            "unknown command-line option '-x'"
        );
        assert_eq!(
            err(&["-o", "lowerdir=/l", ""]),
            "mountpoint: empty argument"
        );
    }

    #[test]
    fn every_listed_option_is_accepted() {
        let o = mount(&[
            "-o",
            "lowerdir=/l,upperdir=/u,workdir=/w,uidmapping=0:1:1,gidmapping=0:1:1,\
             squash_to_root,squash_to_uid=1,squash_to_gid=2,static_nlink,noacl,fsync=1,\
             threaded=2,timeout=1.5,writeback=1,fast_ino,noxattrs=1,noopen,\
             xattr_permissions=1,ino32_t,xino=auto,redirect_dir=nofollow,context=x,\
             allow_other,allow_root,default_permissions,nosuid,nodev,noexec,noatime,ro,\
             private,metacopy=on,index=off,userxattr,nfs_export=off,suid,dev,exec,atime,\
             strictatime,nosuid,nodev,noexec,noatime",
            "/m",
        ]);
        assert!(o.warnings.is_empty(), "{:?}", o.warnings);
        assert!(o.squash_to_root && o.static_nlink && o.noacl && o.fsync);
        assert_eq!(o.threads, 2);
        assert_eq!(o.timeout, Some(1.5));
        assert!(o.writeback && o.fast_ino && o.noxattrs && o.ino32 && o.noopen);
        assert_eq!(o.xattr_permissions, 1);
        assert_eq!(o.xino.as_deref(), Some("auto"));
        assert!(!o.redirect_dir);
        assert!(o.allow_other && o.allow_root && o.default_permissions);
        assert!(o.nosuid == Some(true) && o.nodev == Some(true));
        assert!(o.noexec && o.noatime && o.ro);
        let o = mount(&[
            "-o",
            "lowerdir=/l,fast_ino=0,noxattrs=0,writeback=0,noopen=0",
            "/m",
        ]);
        assert!(!o.fast_ino && !o.noxattrs && !o.writeback && !o.noopen);
        assert_eq!(o.passthrough, Passthrough::Upper);
        for (v, want) in [
            ("all", Passthrough::All),
            ("upper", Passthrough::Upper),
            ("off", Passthrough::Off),
        ] {
            let o = mount(&["-o", &format!("lowerdir=/l,passthrough={v}"), "/m"]);
            assert_eq!(o.passthrough, want);
        }
        let o = mount(&["-o", "lowerdir=/l,threaded=3,timeout=0", "/m"]);
        assert_eq!(o.threads, 3);
        assert_eq!(o.timeout, Some(0.0));
        for (v, want) in [
            ("off", false),
            ("nofollow", false),
            ("on", true),
            ("follow", true),
        ] {
            let o = mount(&["-o", &format!("lowerdir=/l,redirect_dir={v}"), "/m"]);
            assert_eq!(o.redirect_dir, want, "{v}");
        }
        for v in ["off", "auto", "on"] {
            let o = mount(&["-o", &format!("lowerdir=/l,xino={v}"), "/m"]);
            assert_eq!(o.xino.as_deref(), Some(v));
        }
        // volatile then fsync=1: volatile stays, the daemon skips syncs anyway.
        let o = mount(&["-o", "lowerdir=/l,volatile,fsync=1", "/m"]);
        assert!(o.volatile);
    }

    #[test]
    fn invalid_values() {
        for (opt, want) in [
            ("fsync=2", "fsync: invalid value '2' (expected 0 or 1)"),
            (
                "writeback=x",
                "writeback: invalid value 'x' (expected 0 or 1)",
            ),
            (
                "passthrough=lower",
                "passthrough: invalid value 'lower' (expected all, upper or off)",
            ),
            (
                "fast_ino=2",
                "fast_ino: invalid value '2' (expected 0 or 1)",
            ),
            (
                "xattr_permissions=3",
                "xattr_permissions: invalid value '3' (expected 0, 1 or 2)",
            ),
            (
                "xattr_permissions",
                "xattr_permissions: missing value (xattr_permissions=...)",
            ),
            (
                "xino=maybe",
                "xino: invalid value 'maybe' (expected off, auto or on)",
            ),
            (
                "redirect_dir=false",
                "redirect_dir: invalid value 'false' (expected off, on, follow or nofollow)",
            ),
            (
                "timeout=-1",
                "timeout: invalid value '-1' (expected a number of seconds, e.g. 1.5)",
            ),
            (
                "timeout=inf",
                "timeout: invalid value 'inf' (expected a number of seconds, e.g. 1.5)",
            ),
            (
                "timeout=abc",
                "timeout: invalid value 'abc' (expected a number of seconds, e.g. 1.5)",
            ),
            (
                "threaded=many",
                "threaded: invalid value 'many' (expected a non-negative integer)",
            ),
            ("upperdir=", "upperdir: missing value (upperdir=...)"),
            ("workdir", "workdir: missing value (workdir=...)"),
        ] {
            assert_eq!(err(&["-o", &format!("lowerdir=/l,{opt}"), "/m"]), want);
        }
    }

    #[test]
    fn unknown_and_plugin_options_warn() {
        let o = mount(&[
            "-o",
            "lowerdir=/l,frobnicate,color=blue,plugins=/usr/lib/plugin.so",
            "/m",
        ]);
        assert_eq!(o.warnings.len(), 3, "{:?}", o.warnings);
        assert_eq!(o.warnings[0], "unknown option 'frobnicate' ignored");
        assert_eq!(o.warnings[1], "unknown option 'color=blue' ignored");
        assert!(o.warnings[2].contains("plugins are not supported"));
        assert!(o.warnings[2].contains("ignored"));
    }

    #[test]
    fn relative_paths_resolve_against_cwd() {
        let cwd = std::env::current_dir().unwrap();
        let o = mount(&[
            "-o",
            "lowerdir=l/AAA:./l/BBB:/abs,upperdir=id/diff,workdir=./id/work",
            "id/merged",
        ]);
        assert_eq!(
            o.lowerdirs,
            vec![cwd.join("l/AAA"), cwd.join("l/BBB"), pb("/abs")]
        );
        assert_eq!(o.upperdir, Some(cwd.join("id/diff")));
        assert_eq!(o.workdir, Some(cwd.join("id/work")));
        assert_eq!(o.mountpoint, cwd.join("id/merged"));
        assert!(o.lowerdirs.iter().all(|p| p.is_absolute()));
        let o = mount(&["-o", "lowerdir=.", "."]);
        assert_eq!(o.lowerdirs, vec![cwd.clone()]);
        assert_eq!(o.mountpoint, cwd);
    }

    #[test]
    fn non_utf8_paths() {
        let mut group = b"lowerdir=/a\xff:/b\\:\xfe,upperdir=/u\x80".to_vec();
        group.extend_from_slice(b",workdir=/w");
        let argv = vec![
            OsString::from("-o"),
            OsString::from_vec(group),
            OsString::from_vec(b"/m\xff".to_vec()),
        ];
        let Ok(Command::Mount(o)) = parse_args(argv) else {
            panic!("parse failed")
        };
        assert_eq!(
            o.lowerdirs,
            vec![
                PathBuf::from(OsString::from_vec(b"/a\xff".to_vec())),
                PathBuf::from(OsString::from_vec(b"/b:\xfe".to_vec())),
            ]
        );
        assert_eq!(
            o.upperdir,
            Some(PathBuf::from(OsString::from_vec(b"/u\x80".to_vec())))
        );
        assert_eq!(o.mountpoint.as_os_str().as_bytes(), b"/m\xff");
        // A non-UTF-8 option name is just unknown.
        let argv = vec![
            OsString::from("-o"),
            OsString::from_vec(b"lowerdir=/l,\xff\xfe".to_vec()),
            OsString::from("/m"),
        ];
        let Ok(Command::Mount(o)) = parse_args(argv) else {
            panic!("parse failed")
        };
        assert_eq!(o.warnings.len(), 1);
    }

    #[test]
    fn id_mapping_lookup() {
        let maps = [m(0, 1, 1001), m(1001, 0, 1), m(1002, 1002, 64535)];
        assert_eq!(map_id(&maps, 0, true), Some(1));
        assert_eq!(map_id(&maps, 1000, true), Some(1001));
        assert_eq!(map_id(&maps, 1001, true), Some(0));
        assert_eq!(map_id(&maps, 1002, true), Some(1002));
        assert_eq!(map_id(&maps, 65536, true), Some(65536));
        assert_eq!(map_id(&maps, 65537, true), None);
        assert_eq!(map_id(&maps, 0, false), Some(1001));
        assert_eq!(map_id(&maps, 1, false), Some(0));
        assert_eq!(map_id(&maps, 1001, false), Some(1000));
        assert_eq!(map_id(&maps, 70000, false), None);
        assert_eq!(map_id(&[], 5, true), None);
        let big = [m(u32::MAX, 0, 1)];
        assert_eq!(map_id(&big, u32::MAX, true), Some(0));
        assert_eq!(map_id(&big, 0, false), Some(u32::MAX));
    }

    #[test]
    fn read_only_rules() {
        let mut o = Options {
            lowerdirs: vec![pb("/l")],
            ..Default::default()
        };
        assert!(o.read_only());
        o.upperdir = Some(pb("/u"));
        assert!(!o.read_only());
        o.ro = true;
        assert!(o.read_only());
    }

    /// A real layout: lowers l1, l2, upper, work, mountpoint, and a regular file.
    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Tree {
            let dir = tempfile::tempdir().unwrap();
            for d in ["l1", "l2", "upper", "work", "merged", "upper/sub"] {
                fs::create_dir(dir.path().join(d)).unwrap();
            }
            fs::write(dir.path().join("file"), b"x").unwrap();
            Tree { dir }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn opts(&self) -> Options {
            Options {
                lowerdirs: vec![self.p("l1"), self.p("l2")],
                upperdir: Some(self.p("upper")),
                workdir: Some(self.p("work")),
                mountpoint: self.p("merged"),
                ..Default::default()
            }
        }
    }

    #[test]
    fn validate_ok() {
        let t = Tree::new();
        assert_eq!(validate(&t.opts()), Ok(()));
        let ro = Options {
            upperdir: None,
            workdir: None,
            ..t.opts()
        };
        assert_eq!(validate(&ro), Ok(()));
        // Through the parser, with relative-free absolute paths and a symlinked lower.
        std::os::unix::fs::symlink(t.p("l2"), t.p("link")).unwrap();
        let o = mount(&[
            "-o",
            &format!(
                "lowerdir={}:{},upperdir={},workdir={},",
                t.p("l1").display(),
                t.p("link").display(),
                t.p("upper").display(),
                t.p("work").display()
            ),
            &t.p("merged").display().to_string(),
        ]);
        assert_eq!(validate(&o), Ok(()));
        // Mounting over a lower is fine (as with the kernel).
        let over = Options {
            mountpoint: t.p("l1"),
            ..t.opts()
        };
        assert_eq!(validate(&over), Ok(()));
    }

    #[test]
    fn validate_lowerdir_errors() {
        let t = Tree::new();
        let o = Options {
            lowerdirs: vec![],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            "lowerdir: missing (lowerdir= is required)"
        );
        let o = Options {
            lowerdirs: vec![t.p("l1"), t.p("nope/deeper")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "lowerdir: {}: No such file or directory",
                t.p("nope/deeper").display()
            )
        );
        let o = Options {
            lowerdirs: vec![t.p("file")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!("lowerdir: {}: not a directory", t.p("file").display())
        );
        // A path through a regular file: ENOTDIR from stat.
        let o = Options {
            lowerdirs: vec![t.p("file/x")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!("lowerdir: {}: Not a directory", t.p("file/x").display())
        );
    }

    #[test]
    fn validate_upper_work_errors() {
        let t = Tree::new();
        let o = Options {
            workdir: None,
            ..t.opts()
        };
        assert_eq!(validate(&o).unwrap_err(), "upperdir given without workdir");
        let o = Options {
            upperdir: None,
            ..t.opts()
        };
        assert_eq!(validate(&o).unwrap_err(), "workdir given without upperdir");
        let o = Options {
            upperdir: Some(t.p("file")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!("upperdir: {}: not a directory", t.p("file").display())
        );
        let o = Options {
            upperdir: Some(t.p("missing")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "upperdir: {}: No such file or directory",
                t.p("missing").display()
            )
        );
        let o = Options {
            workdir: Some(t.p("file")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!("workdir: {}: not a directory", t.p("file").display())
        );
        let o = Options {
            workdir: Some(t.p("missing")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "workdir: {}: No such file or directory",
                t.p("missing").display()
            )
        );
    }

    #[test]
    fn validate_nesting_errors() {
        let t = Tree::new();
        let nested = |u: &str, w: &str| {
            let o = Options {
                upperdir: Some(t.p(u)),
                workdir: Some(t.p(w)),
                ..t.opts()
            };
            validate(&o).unwrap_err()
        };
        let want = |u: &str, w: &str| {
            format!(
                "upperdir {} and workdir {} must not be nested inside each other",
                t.p(u).display(),
                t.p(w).display()
            )
        };
        assert_eq!(nested("upper", "upper/sub"), want("upper", "upper/sub"));
        assert_eq!(nested("upper/sub", "upper"), want("upper/sub", "upper"));
        assert_eq!(nested("upper", "upper"), want("upper", "upper"));
        // Equal through a symlink and a `..` path: canonicalized.
        std::os::unix::fs::symlink(t.p("upper"), t.p("ulink")).unwrap();
        assert_eq!(nested("upper", "ulink"), want("upper", "ulink"));
        assert_eq!(
            nested("upper", "work/../upper/sub"),
            want("upper", "work/../upper/sub")
        );
        // Component-wise, not a string prefix: upper vs upper2 is fine.
        fs::create_dir(t.p("upper2")).unwrap();
        let o = Options {
            workdir: Some(t.p("upper2")),
            ..t.opts()
        };
        assert_eq!(validate(&o), Ok(()));
        fs::create_dir(t.p("l10")).unwrap();
        let o = Options {
            upperdir: Some(t.p("l10")),
            ..t.opts()
        };
        assert_eq!(validate(&o), Ok(()));

        // Upper/work vs lowers.
        fs::create_dir(t.p("l1/inner")).unwrap();
        let o = Options {
            upperdir: Some(t.p("l1/inner")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "upperdir {} is inside lowerdir {}",
                t.p("l1/inner").display(),
                t.p("l1").display()
            )
        );
        let o = Options {
            lowerdirs: vec![t.p("l1"), t.p("upper/sub")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "lowerdir {} is inside upperdir {}",
                t.p("upper/sub").display(),
                t.p("upper").display()
            )
        );
        let o = Options {
            lowerdirs: vec![t.p("upper")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "upperdir {} is inside lowerdir {}",
                t.p("upper").display(),
                t.p("upper").display()
            )
        );
        fs::create_dir(t.p("l2/w")).unwrap();
        let o = Options {
            workdir: Some(t.p("l2/w")),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "workdir {} is inside lowerdir {}",
                t.p("l2/w").display(),
                t.p("l2").display()
            )
        );
        fs::create_dir(t.p("work/l")).unwrap();
        let o = Options {
            lowerdirs: vec![t.p("work/l")],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "lowerdir {} is inside workdir {}",
                t.p("work/l").display(),
                t.p("work").display()
            )
        );
    }

    #[test]
    fn validate_different_filesystems() {
        // Needs two directories on different filesystems; /dev/shm is usually its own tmpfs.
        let Ok(shm) = tempfile::tempdir_in("/dev/shm") else {
            eprintln!("skipped: no /dev/shm");
            return;
        };
        let t = Tree::new();
        let dev = |p: &Path| fs::metadata(p).unwrap().dev();
        if dev(shm.path()) == dev(&t.p("upper")) {
            eprintln!("skipped: /dev/shm and the temp dir share a filesystem");
            return;
        }
        let o = Options {
            workdir: Some(shm.path().to_path_buf()),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "workdir {} is on a different filesystem than upperdir {}",
                shm.path().display(),
                t.p("upper").display()
            )
        );
    }

    #[test]
    fn validate_mountpoint_errors() {
        let t = Tree::new();
        let o = Options {
            mountpoint: t.p("nomount"),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!(
                "mountpoint {}: No such file or directory",
                t.p("nomount").display()
            )
        );
        let o = Options {
            mountpoint: t.p("file"),
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            format!("mountpoint {}: not a directory", t.p("file").display())
        );
    }

    #[test]
    fn validate_values_of_hand_built_options() {
        let t = Tree::new();
        let o = Options {
            uid_mappings: vec![m(0, 0, 0)],
            ..t.opts()
        };
        assert_eq!(
            validate(&o).unwrap_err(),
            "uidmapping: mapping 0:0:0 has size 0"
        );
        let o = Options {
            gid_mappings: vec![m(1, u32::MAX, 2)],
            ..t.opts()
        };
        assert!(validate(&o).unwrap_err().starts_with("gidmapping: "));
        let o = Options {
            timeout: Some(f64::NAN),
            ..t.opts()
        };
        assert!(validate(&o).unwrap_err().starts_with("timeout: "));
        let o = Options {
            xattr_permissions: 5,
            ..t.opts()
        };
        assert!(validate(&o).unwrap_err().starts_with("xattr_permissions: "));
    }

    #[test]
    fn validate_writes_nothing() {
        let t = Tree::new();
        let before: Vec<_> = walk(t.dir.path());
        let _ = validate(&t.opts());
        let _ = validate(&Options {
            workdir: Some(t.p("upper/sub")),
            ..t.opts()
        });
        assert_eq!(walk(t.dir.path()), before);
    }

    fn walk(p: &Path) -> Vec<PathBuf> {
        let mut out = vec![p.to_path_buf()];
        if p.is_dir() && !p.is_symlink() {
            let mut ents: Vec<_> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            ents.sort();
            for e in ents {
                out.extend(walk(&e));
            }
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn lowerdir_escaping_round_trips(
            paths in proptest::collection::vec(
                proptest::collection::vec(1u8..=255, 0..12), 1..5)
        ) {
            let paths: Vec<Vec<u8>> = paths
                .into_iter()
                .map(|mut p| { p.insert(0, b'/'); p })
                .collect();
            let mut group = b"lowerdir=".to_vec();
            for (i, p) in paths.iter().enumerate() {
                if i > 0 {
                    group.push(b':');
                }
                group.extend_from_slice(
                    escape_lowerdir(OsStr::from_bytes(p)).as_bytes());
            }
            group.extend_from_slice(b",,volatile,");
            let argv = vec![
                OsString::from("-o"),
                OsString::from_vec(group),
                OsString::from("/m"),
            ];
            let Ok(Command::Mount(o)) = parse_args(argv) else {
                panic!("parse failed");
            };
            let got: Vec<Vec<u8>> = o
                .lowerdirs
                .iter()
                .map(|p| p.as_os_str().as_bytes().to_vec())
                .collect();
            proptest::prop_assert_eq!(got, paths);
            proptest::prop_assert!(o.volatile);
            proptest::prop_assert!(o.warnings.is_empty());
        }
    }
}
