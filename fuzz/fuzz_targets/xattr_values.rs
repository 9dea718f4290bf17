//! Values of layer xattrs: redirect, opaque and override_stat. Parsing never panics, a
//! parsed redirect never escapes the layer, and override_stat round-trips.
#![no_main]

use layerfs::idmap::{format_override, parse_override};
use layerfs::whiteout::{is_private_xattr, parse_opaque, parse_redirect, Redirect};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_redirect(data) {
        Some(Redirect::Absolute(p)) => {
            assert!(p.starts_with(b"/"));
            assert!(!p.contains(&0));
            assert!(!p.split(|&b| b == b'/').any(|c| c == b"." || c == b".."));
            assert!(!p.windows(2).any(|w| w == b"//"));
        }
        Some(Redirect::Relative(n)) => {
            assert!(!n.is_empty() && !n.contains(&b'/') && !n.contains(&0));
            assert!(n != b"." && n != b"..");
        }
        None => {}
    }
    let _ = parse_opaque(data);
    let _ = is_private_xattr(data);
    if let Some(o) = parse_override(data) {
        assert!(o.mode <= 0o7777);
        assert_eq!(parse_override(&format_override(&o)), Some(o));
    }
});
