//! layerfs: an overlay (union) filesystem in user space, over FUSE.
//!
//! Module map (after the kernel's fs/overlayfs split):
//! - [`options`]: command line and mount options
//! - [`error`]: the error type and the single errno mapping
//! - [`sys`]: every raw syscall and all `unsafe`

pub mod error;
pub mod options;
