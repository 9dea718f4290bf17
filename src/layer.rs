//! The layer stack: one optional writable upper plus read-only lowers, each held open as a
//! directory fd for the daemon's whole life (so lower dirs may be lazily unmounted by the
//! caller once we are up), and the stable inode-number scheme across them.

use crate::error::{Error, Result};
use crate::sys;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug)]
pub struct Layer {
    /// Position in the stack: 0 = upper (when present), then lowers top first.
    pub index: usize,
    pub path: PathBuf,
    pub root: Arc<OwnedFd>,
    pub dev: u64,
    /// Small number of this layer's filesystem among the distinct filesystems of the
    /// stack (the upper's fs is 0), used for st_ino composition.
    pub fsid: u64,
}

/// All layers. `lowers[0]` is the top lower layer.
#[derive(Debug)]
pub struct Layers {
    pub upper: Option<Layer>,
    pub lowers: Vec<Layer>,
    devs: Vec<u64>,
    pub ino32: bool,
}

/// Bits below the fs id in a composed inode number.
const INO_BITS: u32 = 48;

impl Layers {
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf], ino32: bool) -> Result<Layers> {
        let mut devs: Vec<u64> = Vec::new();
        let mut open = |path: &Path, index: usize| -> Result<Layer> {
            let fd = sys::open_dir_path(path)
                .map_err(|e| e.context(format!("open layer {}", path.display())))?;
            let st = sys::fstat(fd.as_fd())?;
            let fsid = match devs.iter().position(|&d| d == st.dev) {
                Some(i) => i as u64,
                None => {
                    devs.push(st.dev);
                    (devs.len() - 1) as u64
                }
            };
            Ok(Layer {
                index,
                path: path.to_path_buf(),
                root: Arc::new(fd),
                dev: st.dev,
                fsid,
            })
        };
        let upper = match upper {
            Some(u) => Some(open(u, 0)?),
            None => None,
        };
        let base = usize::from(upper.is_some());
        let mut ls = Vec::new();
        for (i, l) in lowers.iter().enumerate() {
            ls.push(open(l, base + i)?);
        }
        if ls.is_empty() {
            return Err(Error::from_errno(libc::EINVAL).context("no lower layer"));
        }
        Ok(Layers {
            upper,
            lowers: ls,
            devs,
            ino32,
        })
    }

    /// The stable st_ino of an object whose real (dev, ino) is given: the real inode number
    /// when every layer shares one filesystem, else the fs id in the high bits (like the
    /// kernel's xino). Never 0 or 1 (1 is FUSE's root node id).
    pub fn compose_ino(&self, dev: u64, ino: u64) -> u64 {
        let fsid = self
            .devs
            .iter()
            .position(|&d| d == dev)
            .unwrap_or(self.devs.len()) as u64;
        let mut v = if self.devs.len() <= 1 {
            ino
        } else if ino < (1u64 << INO_BITS) {
            (fsid << INO_BITS) | ino
        } else {
            // Beyond xino range: fold into the range deterministically.
            let h = ino ^ (ino >> INO_BITS) ^ (fsid.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            (fsid << INO_BITS) | (h & ((1u64 << INO_BITS) - 1))
        };
        if self.ino32 {
            v = (v ^ (v >> 32)) & 0xffff_ffff;
        }
        if v <= 1 {
            v |= 1u64 << 62;
        }
        v
    }

    /// The layer number used in node state for lower `i`.
    pub fn lower(&self, i: usize) -> &Layer {
        &self.lowers[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino_composition_single_fs_is_identity() {
        let d = tempfile::tempdir().unwrap();
        let l = Layers::open(None, &[d.path().to_path_buf()], false).unwrap();
        assert_eq!(l.compose_ino(l.lowers[0].dev, 1234), 1234);
        assert_ne!(l.compose_ino(l.lowers[0].dev, 1), 1);
        assert_ne!(l.compose_ino(l.lowers[0].dev, 0), 0);
    }

    #[test]
    fn ino_composition_multi_fs_distinguishes() {
        let d = tempfile::tempdir().unwrap();
        let mut l = Layers::open(None, &[d.path().to_path_buf()], false).unwrap();
        l.devs.push(9999);
        let a = l.compose_ino(l.devs[0], 77);
        let b = l.compose_ino(9999, 77);
        assert_ne!(a, b);
        assert_eq!(a, l.compose_ino(l.devs[0], 77));
        let big = l.compose_ino(9999, u64::MAX - 5);
        assert_eq!(big >> INO_BITS, 1);
        l.ino32 = true;
        assert!(l.compose_ino(9999, 77) <= u32::MAX as u64);
    }
}
