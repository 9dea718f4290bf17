//! Command line and `-o` option parsing, compatible with fuse-overlayfs's argv.
//! (Parsing and validation are being written; the struct below is the contract the rest of
//! the daemon uses.)

use std::path::PathBuf;

/// One `container:host:size` id mapping triple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    pub container: u32,
    pub host: u32,
    pub size: u32,
}

/// Everything the daemon needs to know from its command line.
#[derive(Debug, Clone, Default, PartialEq)]
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
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// `ro`: mount read-only even with an upper.
    pub ro: bool,
    pub context: Option<String>,
    /// Warnings to print once logging is set up (unknown/empty options...).
    pub warnings: Vec<String>,
}
