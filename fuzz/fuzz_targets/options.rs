//! The command line and `-o` option parser: arbitrary argv (NUL-separated arguments) must
//! parse or give an error message, never panic; validation (which only reads the
//! filesystem) must not panic either.
#![no_main]

use layerfs::options::{escape_lowerdir, parse_args, validate, Command};
use libfuzzer_sys::fuzz_target;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

fuzz_target!(|data: &[u8]| {
    let argv: Vec<OsString> = data
        .split(|&b| b == 0)
        .map(|a| OsString::from_vec(a.to_vec()))
        .collect();
    match parse_args(argv) {
        Ok(Command::Mount(o)) => {
            assert!(o.lowerdirs.iter().all(|p| p.is_absolute()), "{:?}", o.lowerdirs);
            let _ = validate(&o);
        }
        Ok(_) => {}
        Err(msg) => assert!(!msg.is_empty()),
    }
    // A lowerdir escaped with escape_lowerdir reads back as the same path.
    let path = data.split(|&b| b == 0 || b == b',').next().unwrap_or(b"");
    if path.starts_with(b"/") && !path.ends_with(b"/") {
        let esc = escape_lowerdir(OsStr::from_bytes(path));
        let mut opt = b"lowerdir=".to_vec();
        opt.extend_from_slice(esc.as_bytes());
        let argv = vec![
            OsString::from("-o"),
            OsString::from_vec(opt),
            OsString::from("/mnt"),
        ];
        if let Ok(Command::Mount(o)) = parse_args(argv) {
            assert_eq!(o.lowerdirs.len(), 1, "{:?} -> {:?}", esc, o.lowerdirs);
        }
    }
});
