//! On-disk formats of the overlay: whiteouts, opaque directories, redirects, private xattrs.
//! Pure functions over names, stats and xattr values, so they are unit-testable and shared
//! by the daemon and the offline tools.

use crate::sys::Stat;

/// Prefix of AUFS/OCI-style whiteout files: `.wh.NAME` hides NAME in lower layers.
pub const WH_PREFIX: &[u8] = b".wh.";
/// An entry with this name makes its directory opaque.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// xattrs that mark a directory opaque (value `y`), in every namespace layerfs reads.
pub const OPAQUE_XATTRS: [&[u8]; 3] = [
    b"trusted.overlay.opaque",
    b"user.overlay.opaque",
    b"user.fuseoverlayfs.opaque",
];
/// xattrs that hold a directory redirect (kernel redirect_dir format).
pub const REDIRECT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"user.overlay.redirect"];
/// xattr whiteout marker on a zero-size regular file (newer kernels; parent has opaque=x).
pub const XWHITEOUT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.whiteout", b"user.overlay.whiteout"];

/// Names that are never visible in the union (they are overlay metadata).
pub fn is_hidden_name(name: &[u8]) -> bool {
    name.starts_with(WH_PREFIX)
}

/// For `.wh.NAME` returns NAME (None for the opaque marker and for other names).
pub fn whiteout_target(name: &[u8]) -> Option<&[u8]> {
    if name == OPAQUE_MARKER {
        return None;
    }
    name.strip_prefix(WH_PREFIX).filter(|t| !t.is_empty())
}

/// `.wh.NAME` for NAME.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name);
    v
}

/// A character device 0/0 is a whiteout (the kernel's format).
pub fn is_whiteout_stat(st: &Stat) -> bool {
    st.is_chr() && st.rdev == 0
}

/// Meaning of an opaque xattr value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpaqueValue {
    /// Not opaque.
    No,
    /// `y`: the directory hides everything below it.
    Yes,
    /// `x`: not opaque, but may contain xattr whiteouts.
    XWhiteouts,
}

pub fn parse_opaque(value: &[u8]) -> OpaqueValue {
    match value {
        b"y" | b"y\0" => OpaqueValue::Yes,
        b"x" | b"x\0" => OpaqueValue::XWhiteouts,
        _ => OpaqueValue::No,
    }
}

/// Where a redirect xattr points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `/a/b`: the lower directories are at this path from every lower layer's root.
    Absolute(Vec<u8>),
    /// `name`: the lower directories are at this name in the parent's lower directories.
    Relative(Vec<u8>),
}

/// Parse a redirect value; `None` for values that are malformed or would escape a layer
/// (empty, `.`/`..` components, NUL bytes, relative values with a slash).
pub fn parse_redirect(value: &[u8]) -> Option<Redirect> {
    let v = value.strip_suffix(b"\0").unwrap_or(value);
    if v.is_empty() || v.contains(&0) {
        return None;
    }
    if let Some(abs) = v.strip_prefix(b"/") {
        let comps: Vec<&[u8]> = abs
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        if comps.iter().any(|c| *c == b"." || *c == b"..") {
            return None;
        }
        let mut out = Vec::new();
        for c in comps {
            out.push(b'/');
            out.extend_from_slice(c);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        Some(Redirect::Absolute(out))
    } else if v.contains(&b'/') || v == b"." || v == b".." {
        None
    } else {
        Some(Redirect::Relative(v.to_vec()))
    }
}

/// xattr namespaces that belong to overlay implementations and are never shown to users,
/// copied up, or settable through the mount.
pub fn is_private_xattr(name: &[u8]) -> bool {
    const PRIVATE: [&[u8]; 7] = [
        b"trusted.overlay.",
        b"user.overlay.",
        b"user.fuseoverlayfs.",
        b"trusted.fuseoverlayfs.",
        b"security.fuseoverlayfs.",
        b"user.layerfs.",
        b"trusted.layerfs.",
    ];
    PRIVATE.iter().any(|p| name.starts_with(p)) || name.starts_with(b"user.containers.override_")
}

/// A valid single name component for creation in the union.
pub fn valid_new_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
        && !is_hidden_name(name)
}

/// The errno for a name that cannot be created in the union, if any: `.wh.` names are
/// refused with EPERM, other invalid names with EINVAL.
pub fn check_new_name(name: &[u8]) -> Option<i32> {
    if valid_new_name(name) {
        None
    } else if is_hidden_name(name) {
        Some(libc::EPERM)
    } else {
        Some(libc::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_names() {
        assert_eq!(whiteout_target(b".wh.foo"), Some(&b"foo"[..]));
        assert_eq!(whiteout_target(OPAQUE_MARKER), None);
        assert_eq!(whiteout_target(b".wh."), None);
        assert_eq!(whiteout_target(b"foo"), None);
        assert_eq!(whiteout_name(b"a\xffb"), b".wh.a\xffb".to_vec());
        assert!(is_hidden_name(b".wh.x"));
        assert!(!is_hidden_name(b".whx"));
    }

    #[test]
    fn whiteout_stat() {
        let mut st = Stat {
            mode: libc::S_IFCHR,
            ..Default::default()
        };
        assert!(is_whiteout_stat(&st));
        st.rdev = 1;
        assert!(!is_whiteout_stat(&st));
        st.mode = libc::S_IFREG;
        st.rdev = 0;
        assert!(!is_whiteout_stat(&st));
    }

    #[test]
    fn opaque_values() {
        assert_eq!(parse_opaque(b"y"), OpaqueValue::Yes);
        assert_eq!(parse_opaque(b"x"), OpaqueValue::XWhiteouts);
        assert_eq!(parse_opaque(b"n"), OpaqueValue::No);
        assert_eq!(parse_opaque(b""), OpaqueValue::No);
    }

    #[test]
    fn redirects() {
        assert_eq!(
            parse_redirect(b"/a/b"),
            Some(Redirect::Absolute(b"/a/b".to_vec()))
        );
        assert_eq!(
            parse_redirect(b"//a//b/"),
            Some(Redirect::Absolute(b"/a/b".to_vec()))
        );
        assert_eq!(
            parse_redirect(b"name"),
            Some(Redirect::Relative(b"name".to_vec()))
        );
        assert_eq!(parse_redirect(b"/a/../b"), None);
        assert_eq!(parse_redirect(b"a/b"), None);
        assert_eq!(parse_redirect(b".."), None);
        assert_eq!(parse_redirect(b""), None);
        assert_eq!(parse_redirect(b"/a\0b"), None);
    }

    #[test]
    fn private_xattrs() {
        for n in [
            &b"trusted.overlay.opaque"[..],
            b"user.overlay.redirect",
            b"user.fuseoverlayfs.opaque",
            b"user.containers.override_stat",
            b"user.layerfs.origin",
        ] {
            assert!(is_private_xattr(n), "{:?}", n);
        }
        for n in [
            &b"user.foo"[..],
            b"security.capability",
            b"system.posix_acl_access",
            b"trusted.foo",
        ] {
            assert!(!is_private_xattr(n));
        }
    }

    #[test]
    fn new_names() {
        assert!(valid_new_name(b"a"));
        assert!(valid_new_name(b"\xff\xfe"));
        assert!(!valid_new_name(b".wh.a"));
        assert!(!valid_new_name(b"."));
        assert!(!valid_new_name(b"a/b"));
    }
}
