//! `layerfs explain` and `layerfs diff` on layer directories (no mount): every format.

mod common;

use common::sh_ok;
use std::fs;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(common::LAYERFS).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn explain_and_diff_report_every_format() {
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s).display().to_string();
    sh_ok(&format!(
        r#"set -e
mkdir -p {l1}/etc {l1}/usr/share/doc {l1}/var/cache {l0}/etc {l0}/var/cache {u}/etc {u}/opq
echo base > {l1}/etc/os-release; echo base > {l1}/etc/motd; echo doc > {l1}/usr/share/doc/README
echo old > {l1}/var/cache/old; echo x > {l1}/gone; mkdir -p {l1}/opq; echo hidden > {l1}/opq/h
touch {l0}/etc/.wh.os-release {l0}/var/cache/.wh..wh..opq; echo new > {l0}/var/cache/new
echo top > {l0}/etc/motd
echo added > {u}/etc/added; echo changed > {u}/etc/motd; touch {u}/.wh.gone
touch {u}/opq/.wh..wh..opq
"#,
        l0 = p("l0"),
        l1 = p("l1"),
        u = p("u")
    ));
    let lower = format!("{}:{}", p("l0"), p("l1"));
    let (rc, out) = run(&[
        "explain",
        "--lowerdir",
        &lower,
        "--upperdir",
        &p("u"),
        "/etc/os-release",
    ]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("not visible: deleted by a whiteout"), "{out}");
    assert!(out.contains(".wh.os-release file"), "{out}");
    let (rc, out) = run(&[
        "explain",
        "--lowerdir",
        &lower,
        "--upperdir",
        &p("u"),
        "etc/motd",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("/etc/motd: regular file from upper"), "{out}");
    assert!(out.contains("hidden by the non-directory above"), "{out}");
    let (_, out) = run(&["explain", "--lowerdir", &lower, "/var/cache/old"]);
    assert!(out.contains("opaque directory"), "{out}");
    let (rc, out) = run(&[
        "explain",
        "--json",
        "--lowerdir",
        &lower,
        "/usr/share/doc/README",
    ]);
    assert_eq!(rc, 0);
    assert!(
        out.starts_with("{\"path\":") && out.contains("\"visible\":true"),
        "{out}"
    );
    let (rc, out) = run(&["diff", "--lowerdir", &lower, "--upperdir", &p("u")]);
    assert_eq!(rc, 0);
    let lines: Vec<&str> = out.lines().collect();
    for want in [
        "A /etc/added",
        "C /etc/motd",
        "D /gone",
        "C /opq",
        "D /opq/h",
        "C /etc",
    ] {
        assert!(lines.contains(&want), "missing {want:?} in {lines:?}");
    }
    assert!(!out.contains("/usr"), "unchanged /usr listed: {out}");
    // nothing was written to the layers
    assert!(fs::read_dir(d.path().join("u")).unwrap().count() == 3);
}
