//! layerfs: an overlay (union) filesystem in user space, over FUSE.
//!
//! Module map (after the kernel's fs/overlayfs split):
//! - [`options`]: command line and mount options
//! - [`error`]: the error type and the single errno mapping
//! - [`sys`]: every raw syscall and all `unsafe`
//! - [`layer`]: the layer stack and stable inode numbers
//! - [`whiteout`]: on-disk formats (whiteouts, opaque, redirects, private xattrs)
//! - [`idmap`]: uid/gid mapping, squashing and override_stat
//! - [`inode`]: overlay inodes and the inode table
//! - [`overlay`]: the filesystem object and lookup through the stack (namei)
//! - [`readdir`]: merged directory listing
//! - [`copy_up`]: copy-up staged in the workdir
//! - [`dir`]: create, link, unlink, rmdir, rename
//! - [`attr`]: setattr and xattrs
//! - [`file`]: open files and directories, I/O
//! - [`ino_io`]: regular-file I/O by inode (`noopen`)
//! - [`fuse`]: the thin `fuser::Filesystem` adapter
//! - [`daemon`]: mounting, daemonizing, signals, the log
//! - [`counters`]: requests-by-type counters
//! - [`tools`]: `explain`, `diff`, `export`, `import`, `check` on the daemon's own lookup
#![deny(unsafe_code)]

pub mod attr;
pub mod copy_up;
pub mod counters;
pub mod daemon;
pub mod dir;
pub mod error;
pub mod file;
pub mod fuse;
pub mod idmap;
pub mod ino_io;
pub mod inode;
pub mod layer;
pub mod options;
pub mod overlay;
pub mod readdir;
pub mod sys;
pub mod tools;
pub mod whiteout;
