//! Owner translation between the ids stored in the layers and the ids the union shows:
//! `uidmapping=`/`gidmapping=` triples, `squash_to_root`/`squash_to_uid`/`squash_to_gid`, and
//! `xattr_permissions` where owner and mode live in an override xattr
//! (`uid:gid:octalmode[:type]`, holding stored ids).
//!
//! A triple `C:H:S` is containers/storage's `ContainerID:HostID:Size`: the layers hold the
//! image's own (container) ids `C..C+S-1`, and the mount shows them as the ids `H..H+S-1` of
//! the namespace the daemon runs in, which the container's user namespace maps back to `C`.
//! So stored `C+k` is shown as `H+k`, and chown/create to shown `H+k` stores `C+k` — the same
//! direction as fuse-overlayfs (measured with 1.10: `uidmapping=0:1000:100` shows a stored
//! uid 0 as 1000).

use crate::options::{map_id, IdMap, Options};

/// The overflow id shown for host ids that no mapping covers.
pub const OVERFLOW_ID: u32 = 65534;

/// xattrs that hold an override of owner and mode.
pub const OVERRIDE_XATTRS: [&[u8]; 2] = [
    b"security.fuseoverlayfs.override_stat",
    b"user.containers.override_stat",
];

#[derive(Debug, Clone, Default)]
pub struct IdMapper {
    uids: Vec<IdMap>,
    gids: Vec<IdMap>,
    squash_uid: Option<u32>,
    squash_gid: Option<u32>,
    /// 0 = off; 1 = security.fuseoverlayfs.override_stat; 2 = user.containers.override_stat.
    pub xattr_permissions: u8,
}

/// A parsed override_stat value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverrideStat {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (07777).
    pub mode: u32,
    /// S_IFMT bits when the value names a type.
    pub kind: Option<u32>,
}

pub fn parse_override(v: &[u8]) -> Option<OverrideStat> {
    let s = std::str::from_utf8(v).ok()?.trim_end_matches('\0');
    let mut it = s.split(':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    let kind = match it.next() {
        None => None,
        Some(t) => Some(match t {
            "file" | "reg" => libc::S_IFREG,
            "dir" => libc::S_IFDIR,
            "symlink" | "lnk" => libc::S_IFLNK,
            "pipe" | "fifo" => libc::S_IFIFO,
            "socket" | "sock" => libc::S_IFSOCK,
            "char" | "chr" => libc::S_IFCHR,
            "block" | "blk" => libc::S_IFBLK,
            _ => return None,
        }),
    };
    if it.next().is_some() {
        return None;
    }
    Some(OverrideStat {
        uid,
        gid,
        mode: mode & 0o7777,
        kind,
    })
}

pub fn format_override(o: &OverrideStat) -> Vec<u8> {
    let kind = match o.kind {
        Some(libc::S_IFDIR) => ":dir",
        Some(libc::S_IFLNK) => ":symlink",
        Some(libc::S_IFIFO) => ":pipe",
        Some(libc::S_IFSOCK) => ":socket",
        Some(libc::S_IFCHR) => ":char",
        Some(libc::S_IFBLK) => ":block",
        Some(_) => ":file",
        None => "",
    };
    format!("{}:{}:{:o}{}", o.uid, o.gid, o.mode & 0o7777, kind).into_bytes()
}

fn shown(maps: &[IdMap], squash: Option<u32>, stored: u32) -> u32 {
    match squash {
        Some(s) => s,
        None if maps.is_empty() => stored,
        None => map_id(maps, stored, true).unwrap_or(OVERFLOW_ID),
    }
}

fn stored(maps: &[IdMap], shown: u32) -> Option<u32> {
    if maps.is_empty() {
        Some(shown)
    } else {
        map_id(maps, shown, false)
    }
}

impl IdMapper {
    pub fn from_options(o: &Options) -> IdMapper {
        IdMapper {
            uids: o.uid_mappings.clone(),
            gids: o.gid_mappings.clone(),
            squash_uid: if o.squash_to_root {
                Some(0)
            } else {
                o.squash_to_uid
            },
            squash_gid: if o.squash_to_root {
                Some(0)
            } else {
                o.squash_to_gid
            },
            xattr_permissions: o.xattr_permissions,
        }
    }

    pub fn is_identity(&self) -> bool {
        self.uids.is_empty()
            && self.gids.is_empty()
            && self.squash_uid.is_none()
            && self.squash_gid.is_none()
    }

    /// Stored uid (a triple's container side) → shown uid (its host side); squashing wins,
    /// unmapped ids show as [`OVERFLOW_ID`].
    pub fn shown_uid(&self, stored: u32) -> u32 {
        shown(&self.uids, self.squash_uid, stored)
    }

    pub fn shown_gid(&self, stored: u32) -> u32 {
        shown(&self.gids, self.squash_gid, stored)
    }

    /// Shown uid → stored uid; None when no triple covers it (EINVAL for chown).
    pub fn stored_uid(&self, shown: u32) -> Option<u32> {
        stored(&self.uids, shown)
    }

    pub fn stored_gid(&self, shown: u32) -> Option<u32> {
        stored(&self.gids, shown)
    }

    /// The override xattr name in use, if any.
    pub fn override_xattr(&self) -> Option<&'static [u8]> {
        match self.xattr_permissions {
            1 => Some(OVERRIDE_XATTRS[0]),
            2 => Some(OVERRIDE_XATTRS[1]),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_triple_direction() {
        // uidmapping=0:1000:100: stored 0..99 show as 1000..1099 (fuse-overlayfs 1.10 agrees).
        let o = Options {
            uid_mappings: vec![m(0, 1000, 100)],
            gid_mappings: vec![m(0, 2000, 10)],
            ..Default::default()
        };
        let im = IdMapper::from_options(&o);
        assert_eq!(im.shown_uid(0), 1000);
        assert_eq!(im.shown_uid(5), 1005);
        assert_eq!(im.shown_uid(1005), OVERFLOW_ID);
        assert_eq!(im.stored_uid(1007), Some(7));
        assert_eq!(im.stored_uid(7), None);
        assert_eq!(im.shown_gid(9), 2009);
        assert_eq!(im.shown_gid(10), OVERFLOW_ID);
        assert_eq!(im.stored_gid(2000), Some(0));
    }

    fn m(c: u32, h: u32, s: u32) -> IdMap {
        IdMap {
            container: c,
            host: h,
            size: s,
        }
    }

    #[test]
    fn keep_id_style_mapping() {
        // podman --userns=keep-id: :0:1:1001:1001:0:1:1002:1002:64535
        let o = Options {
            uid_mappings: vec![m(0, 1, 1001), m(1001, 0, 1), m(1002, 1002, 64535)],
            ..Default::default()
        };
        let im = IdMapper::from_options(&o);
        // Values measured through fuse-overlayfs 1.10 with the same option on the same files.
        assert_eq!(
            im.shown_uid(0),
            1,
            "image root shows as the first subordinate id"
        );
        assert_eq!(im.shown_uid(1000), 1001);
        assert_eq!(
            im.shown_uid(1001),
            0,
            "the user's container uid shows as the user"
        );
        assert_eq!(im.shown_uid(1002), 1002);
        assert_eq!(im.shown_uid(5000), 5000);
        assert_eq!(im.shown_uid(70000), OVERFLOW_ID);
        assert_eq!(im.stored_uid(1), Some(0));
        assert_eq!(im.stored_uid(0), Some(1001));
        assert_eq!(im.stored_uid(1001), Some(1000));
        assert_eq!(im.stored_uid(70000), None);
        for id in [0, 1, 999, 1000, 1001, 1002, 65536] {
            assert_eq!(
                im.stored_uid(im.shown_uid(id)),
                Some(id),
                "round trip of {id}"
            );
        }
        // gids unmapped: identity
        assert_eq!(im.shown_gid(42), 42);
        assert_eq!(im.stored_gid(42), Some(42));
    }

    #[test]
    fn squash() {
        let o = Options {
            squash_to_root: true,
            ..Default::default()
        };
        let im = IdMapper::from_options(&o);
        assert_eq!(im.shown_uid(1234), 0);
        assert_eq!(im.shown_gid(1234), 0);
        let o = Options {
            squash_to_uid: Some(7),
            squash_to_gid: Some(8),
            ..Default::default()
        };
        let im = IdMapper::from_options(&o);
        assert_eq!(im.shown_uid(1234), 7);
        assert_eq!(im.shown_gid(1234), 8);
    }

    #[test]
    fn override_values() {
        let o = parse_override(b"1000:1000:755:dir").unwrap();
        assert_eq!(
            o,
            OverrideStat {
                uid: 1000,
                gid: 1000,
                mode: 0o755,
                kind: Some(libc::S_IFDIR)
            }
        );
        assert_eq!(parse_override(b"0:0:4755").unwrap().mode, 0o4755);
        assert_eq!(
            parse_override(b"0:0:644:file\0").unwrap().kind,
            Some(libc::S_IFREG)
        );
        assert!(parse_override(b"0:0").is_none());
        assert!(parse_override(b"a:0:644").is_none());
        assert!(parse_override(b"0:0:9").is_none());
        assert!(parse_override(b"0:0:644:weird").is_none());
        assert_eq!(format_override(&o), b"1000:1000:755:dir".to_vec());
        assert_eq!(parse_override(&format_override(&o)), Some(o));
    }
}
