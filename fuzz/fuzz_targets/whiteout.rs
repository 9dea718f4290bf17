//! Whiteout and opaque detection: `.wh.` names, the opaque marker, new-name checks, and
//! whiteout devices from arbitrary stat fields.
#![no_main]

use layerfs::sys::Stat;
use layerfs::whiteout::{
    check_new_name, is_hidden_name, is_whiteout_stat, valid_new_name, whiteout_name,
    whiteout_target, OPAQUE_MARKER,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(t) = whiteout_target(data) {
        assert!(!t.is_empty());
        assert_eq!(whiteout_name(t), data);
        assert!(is_hidden_name(data));
    }
    if data == OPAQUE_MARKER {
        assert!(whiteout_target(data).is_none());
    }
    let ok = valid_new_name(data);
    assert_eq!(ok, check_new_name(data).is_none());
    if ok {
        assert!(!data.contains(&b'/') && !data.contains(&0) && !data.starts_with(b".wh."));
        assert!(data != b"." && data != b".." && !data.is_empty());
    }
    if data.len() >= 12 {
        let mode = u32::from_le_bytes(data[0..4].try_into().unwrap());
        let rdev = u64::from_le_bytes(data[4..12].try_into().unwrap());
        let st = Stat {
            mode,
            rdev,
            ..Default::default()
        };
        let wh = is_whiteout_stat(&st);
        assert_eq!(wh, mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0);
    }
});
