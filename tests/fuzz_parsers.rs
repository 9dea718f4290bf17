//! Fuzz targets on stable Rust: every parser of untrusted input (the command line, layer
//! xattr values, whiteout names) gets arbitrary bytes and must return, never panic, and
//! keep its invariants. `scripts/fuzz` runs these for a bounded time with many more cases.

use layerfs::idmap::{format_override, parse_override};
use layerfs::options::{parse_args, validate, Command};
use layerfs::whiteout::{
    check_new_name, is_private_xattr, parse_opaque, parse_redirect, whiteout_target, Redirect,
};
use proptest::prelude::*;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn argv_bytes() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let piece = prop_oneof![
        Just(b"-o".to_vec()),
        Just(b"-f".to_vec()),
        Just(b"-d".to_vec()),
        Just(b"lowerdir=/a\\:b:c,upperdir=u,workdir=w,,volatile,".to_vec()),
        Just(b"uidmapping=:0:1:5:".to_vec()),
        Just(b"context=\"a,b".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ];
    proptest::collection::vec(piece, 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn fuzz_command_line(args in argv_bytes()) {
        let argv: Vec<OsString> = args
            .into_iter()
            .map(|a| OsString::from_vec(a.into_iter().filter(|&b| b != 0).collect()))
            .collect();
        if let Ok(Command::Mount(o)) = parse_args(argv) {
            // validation reads the filesystem only; it must not panic either
            let _ = validate(&o);
            prop_assert!(o.lowerdirs.iter().all(|p| p.is_absolute()));
        }
    }

    #[test]
    fn fuzz_xattr_values(v in proptest::collection::vec(any::<u8>(), 0..300)) {
        match parse_redirect(&v) {
            Some(Redirect::Absolute(p)) => {
                prop_assert!(p.starts_with(b"/"));
                prop_assert!(!p.split(|&b| b == b'/').any(|c| c == b".." || c == b"."));
                prop_assert!(!p.contains(&0));
            }
            Some(Redirect::Relative(n)) => {
                prop_assert!(!n.contains(&b'/') && n != b".." && n != b"." && !n.is_empty());
            }
            None => {}
        }
        let _ = parse_opaque(&v);
        if let Some(o) = parse_override(&v) {
            prop_assert!(o.mode <= 0o7777);
            prop_assert_eq!(parse_override(&format_override(&o)), Some(o));
        }
    }

    #[test]
    fn fuzz_names(n in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some(t) = whiteout_target(&n) {
            prop_assert!(!t.is_empty() && n.ends_with(t));
        }
        let _ = is_private_xattr(&n);
        if check_new_name(&n).is_none() {
            prop_assert!(!n.starts_with(b".wh.") && !n.contains(&b'/') && !n.is_empty());
        }
    }
}
