//! Reference-model test without a mount: an in-memory model of the union (the merged
//! lower trees plus plain POSIX semantics for changes) is driven by random operation
//! sequences alongside the real overlay logic (`Overlay`'s API, the code the FUSE adapter
//! calls). After every step the errno and the whole visible tree must agree, and the tree
//! must read back the same from a fresh `Overlay` over the same layers (a "remount").
//! The layers use the `.wh.NAME` / `.wh..wh..opq` formats, so no privilege is needed.

use layerfs::dir::{Caller, NewKind};
use layerfs::inode::ROOT_ID;
use layerfs::options::Options;
use layerfs::overlay::Overlay;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
enum MNode {
    Dir,
    File(Vec<u8>),
}

type Model = BTreeMap<String, MNode>;

const NAMES: &[&str] = &[
    "a", "b", "d", "d/a", "d/b", "d/c", "e", "e/a", "d/e", "d/e/a", "x",
];

#[derive(Debug, Clone)]
enum Op {
    Write(usize, u8),
    Unlink(usize),
    Mkdir(usize),
    Rmdir(usize),
    Rename(usize, usize, u32),
    Remount,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let p = 0..NAMES.len();
    prop_oneof![
        (p.clone(), any::<u8>()).prop_map(|(a, b)| Op::Write(a, b)),
        p.clone().prop_map(Op::Unlink),
        p.clone().prop_map(Op::Mkdir),
        p.clone().prop_map(Op::Rmdir),
        (p.clone(), p, prop_oneof![Just(0u32), Just(1), Just(2)])
            .prop_map(|(a, b, f)| Op::Rename(a, b, f)),
        Just(Op::Remount),
    ]
}

fn build_layers(root: &Path) -> Model {
    let w = |p: &str, d: &str| {
        let f = root.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(f, d).unwrap();
    };
    for d in ["l1/d/e", "l1/e", "l0/d", "l0/e", "upper", "work"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    w("l1/a", "lower-a");
    w("l1/d/a", "lower-da");
    w("l1/d/b", "lower-db");
    w("l1/e/a", "lower-ea");
    w("l1/e/hidden", "hidden");
    w("l1/d/e/a", "lower-dea");
    w("l0/b", "top-b");
    w("l0/d/c", "top-dc");
    w("l0/d/.wh.b", "");
    w("l0/e/.wh..wh..opq", "");
    w("l0/e/a", "top-ea");
    let mut m = Model::new();
    for (p, c) in [
        ("a", "lower-a"),
        ("b", "top-b"),
        ("d/a", "lower-da"),
        ("d/c", "top-dc"),
        ("d/e/a", "lower-dea"),
        ("e/a", "top-ea"),
    ] {
        m.insert(p.into(), MNode::File(c.as_bytes().to_vec()));
    }
    for d in ["d", "e", "d/e"] {
        m.insert(d.into(), MNode::Dir);
    }
    m
}

fn opts(root: &Path) -> Options {
    Options {
        lowerdirs: vec![root.join("l0"), root.join("l1")],
        upperdir: Some(root.join("upper")),
        workdir: Some(root.join("work")),
        mountpoint: root.join("upper"),
        fsync: false,
        redirect_dir: true,
        ..Default::default()
    }
}

fn model_parent_ok(m: &Model, p: &str) -> Result<(), i32> {
    // Walk every ancestor as path resolution does: a missing one is ENOENT, a
    // non-directory one ENOTDIR.
    let mut prefix = String::new();
    let comps: Vec<&str> = p.split('/').collect();
    for c in &comps[..comps.len() - 1] {
        if !prefix.is_empty() {
            prefix.push('/');
        }
        prefix.push_str(c);
        match m.get(&prefix) {
            Some(MNode::Dir) => {}
            Some(_) => return Err(libc::ENOTDIR),
            None => return Err(libc::ENOENT),
        }
    }
    Ok(())
}

fn children<'a>(m: &'a Model, p: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    m.keys()
        .filter(move |k| k.len() > p.len() + 1 && k.starts_with(p) && k.as_bytes()[p.len()] == b'/')
}

/// POSIX semantics of each op on the model; returns the errno.
fn model_apply(m: &mut Model, op: &Op) -> i32 {
    let r: Result<(), i32> = (|| match *op {
        Op::Write(a, b) => {
            let p = NAMES[a];
            model_parent_ok(m, p)?;
            match m.get(p) {
                Some(MNode::Dir) => Err(libc::EISDIR),
                _ => {
                    m.insert(p.into(), MNode::File(vec![b]));
                    Ok(())
                }
            }
        }
        Op::Unlink(a) => {
            let p = NAMES[a];
            model_parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(MNode::Dir) => Err(libc::EISDIR),
                Some(_) => {
                    m.remove(p);
                    Ok(())
                }
            }
        }
        Op::Mkdir(a) => {
            let p = NAMES[a];
            model_parent_ok(m, p)?;
            if m.contains_key(p) {
                return Err(libc::EEXIST);
            }
            m.insert(p.into(), MNode::Dir);
            Ok(())
        }
        Op::Rmdir(a) => {
            let p = NAMES[a];
            model_parent_ok(m, p)?;
            match m.get(p) {
                None => Err(libc::ENOENT),
                Some(MNode::File(_)) => Err(libc::ENOTDIR),
                Some(MNode::Dir) => {
                    if children(m, p).next().is_some() {
                        return Err(libc::ENOTEMPTY);
                    }
                    m.remove(p);
                    Ok(())
                }
            }
        }
        Op::Rename(a, b, flags) => {
            let (s, d) = (NAMES[a], NAMES[b]);
            model_parent_ok(m, s)?;
            model_parent_ok(m, d)?;
            let Some(sn) = m.get(s).cloned() else {
                return Err(libc::ENOENT);
            };
            let dn = m.get(d).cloned();
            if flags == 1 && dn.is_some() {
                return Err(libc::EEXIST);
            }
            if flags == 2 && dn.is_none() {
                return Err(libc::ENOENT);
            }
            let move_tree = |m: &mut Model, from: &str, to: &str| -> Model {
                let keys: Vec<String> = m
                    .keys()
                    .filter(|k| {
                        *k == from
                            || (k.starts_with(from) && k.as_bytes().get(from.len()) == Some(&b'/'))
                    })
                    .cloned()
                    .collect();
                let mut moved = Model::new();
                for k in keys {
                    let v = m.remove(&k).unwrap();
                    moved.insert(format!("{to}{}", &k[from.len()..]), v);
                }
                moved
            };
            if flags == 2 {
                let ms = move_tree(m, s, d);
                let md = move_tree(m, d, s);
                m.extend(ms);
                m.extend(md);
                return Ok(());
            }
            if let Some(dn) = dn {
                match (&sn, &dn) {
                    (MNode::Dir, MNode::File(_)) => return Err(libc::ENOTDIR),
                    (MNode::File(_), MNode::Dir) => return Err(libc::EISDIR),
                    (MNode::Dir, MNode::Dir) if children(m, d).next().is_some() => {
                        return Err(libc::ENOTEMPTY)
                    }
                    _ => {}
                }
                m.remove(d);
            }
            let moved = move_tree(m, s, d);
            m.extend(moved);
            Ok(())
        }
        Op::Remount => Ok(()),
    })();
    r.err().unwrap_or(0)
}

/// Resolve a union path to a node id through the overlay's lookup.
fn resolve(ov: &Overlay, p: &str) -> Result<u64, i32> {
    let mut id = ROOT_ID;
    for c in p.split('/') {
        if !ov.node(id).map(|n| n.is_dir()).unwrap_or(false) {
            return Err(libc::ENOTDIR);
        }
        id = ov.lookup(id, c.as_bytes()).map_err(|e| e.errno())?.0.id;
    }
    Ok(id)
}

fn split(p: &str) -> (&str, &str) {
    match p.rfind('/') {
        Some(i) => (&p[..i], &p[i + 1..]),
        None => ("", p),
    }
}

fn dir_id(ov: &Overlay, p: &str) -> Result<u64, i32> {
    if p.is_empty() {
        return Ok(ROOT_ID);
    }
    // the VFS walks the parent path and refuses a non-directory before asking the fs
    let id = resolve(ov, p)?;
    if ov.node(id).map(|n| n.is_dir()).unwrap_or(false) {
        Ok(id)
    } else {
        Err(libc::ENOTDIR)
    }
}

fn me() -> Caller {
    Caller {
        uid: unsafe { libc::geteuid() },
        gid: unsafe { libc::getegid() },
        pid: 0,
    }
}

/// The same op through the overlay API; returns the errno.
fn ov_apply(ov: &Overlay, op: &Op) -> i32 {
    let r: Result<(), i32> = (|| match *op {
        Op::Write(a, b) => {
            let (pp, n) = split(NAMES[a]);
            let pid = dir_id(ov, pp)?;
            let id = match ov.lookup(pid, n.as_bytes()) {
                Ok((node, _)) => {
                    if node.is_dir() {
                        return Err(libc::EISDIR);
                    }
                    node.id
                }
                Err(e) if e.errno() == libc::ENOENT => {
                    ov.create_object(pid, n.as_bytes(), NewKind::File { mode: 0o644 }, me())
                        .map_err(|e| e.errno())?
                        .0
                        .id
                }
                Err(e) => return Err(e.errno()),
            };
            let fh = ov
                .open(id, libc::O_WRONLY | libc::O_TRUNC)
                .map_err(|e| e.errno())?;
            let w = ov.write(fh, 0, &[b]);
            ov.release(fh);
            w.map(drop).map_err(|e| e.errno())
        }
        Op::Unlink(a) => {
            let (pp, n) = split(NAMES[a]);
            ov.unlink(dir_id(ov, pp)?, n.as_bytes())
                .map_err(|e| e.errno())
        }
        Op::Mkdir(a) => {
            let (pp, n) = split(NAMES[a]);
            ov.create_object(
                dir_id(ov, pp)?,
                n.as_bytes(),
                NewKind::Dir { mode: 0o755 },
                me(),
            )
            .map(drop)
            .map_err(|e| e.errno())
        }
        Op::Rmdir(a) => {
            let (pp, n) = split(NAMES[a]);
            ov.rmdir(dir_id(ov, pp)?, n.as_bytes())
                .map_err(|e| e.errno())
        }
        Op::Rename(a, b, flags) => {
            let (sp, sn) = split(NAMES[a]);
            let (dp, dn) = split(NAMES[b]);
            let s = dir_id(ov, sp)?;
            let d = dir_id(ov, dp)?;
            ov.rename(s, sn.as_bytes(), d, dn.as_bytes(), flags)
                .map_err(|e| e.errno())
        }
        Op::Remount => Ok(()),
    })();
    r.err().unwrap_or(0)
}

/// The whole visible tree as the overlay shows it.
fn ov_tree(ov: &Overlay) -> Model {
    let mut out = Model::new();
    let mut stack = vec![(ROOT_ID, String::new())];
    while let Some((id, path)) = stack.pop() {
        let node = ov.node(id).unwrap();
        for e in ov.merged_entries(&node, false).unwrap() {
            let name = String::from_utf8(e.name).unwrap();
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            let (child, attr) = ov.lookup(id, name.as_bytes()).unwrap();
            assert_eq!(attr.ino, e.ino, "d_ino != st_ino at {p}");
            if child.is_dir() {
                out.insert(p.clone(), MNode::Dir);
                stack.push((child.id, p));
            } else {
                let fh = ov.open(child.id, libc::O_RDONLY).unwrap();
                let data = ov.read(fh, 0, 4096).unwrap();
                ov.release(fh);
                out.insert(p, MNode::File(data));
            }
        }
    }
    out
}

/// Ops the VFS would reject before the filesystem sees them (rename of a directory into
/// itself or onto itself): the model test skips them, as the kernel never sends them.
fn vfs_filtered(op: &Op) -> bool {
    if let Op::Rename(a, b, _) = *op {
        let (s, d) = (NAMES[a], NAMES[b]);
        return s == d
            || (d.starts_with(s) && d.as_bytes().get(s.len()) == Some(&b'/'))
            || (s.starts_with(d) && s.as_bytes().get(d.len()) == Some(&b'/'));
    }
    false
}

fn run(ops: &[Op]) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let mut model = build_layers(dir.path());
    let mut ov = Overlay::new(&opts(dir.path())).unwrap();
    let t = ov_tree(&ov);
    if t != model {
        return Err(format!("initial tree: overlay {t:?} model {model:?}"));
    }
    for (i, op) in ops.iter().enumerate() {
        if vfs_filtered(op) {
            continue;
        }
        if let Op::Remount = op {
            drop(ov);
            ov = Overlay::new(&opts(dir.path())).unwrap();
        }
        let em = model_apply(&mut model, op);
        let eo = ov_apply(&ov, op);
        if em != eo {
            return Err(format!("step {i} {op:?}: errno model {em} overlay {eo}"));
        }
        let t = ov_tree(&ov);
        if t != model {
            return Err(format!(
                "step {i} {op:?}: tree\n overlay {t:?}\n model   {model:?}"
            ));
        }
    }
    drop(ov);
    let ov = Overlay::new(&opts(dir.path())).unwrap();
    let t = ov_tree(&ov);
    if t != model {
        return Err(format!("after remount: overlay {t:?} model {model:?}"));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]
    #[test]
    fn overlay_matches_reference_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
        if let Err(e) = run(&ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn model_fixed_sequence() {
    use Op::*;
    run(&[
        Rename(2, 6, 0),
        Mkdir(2),
        Rename(6, 8, 2),
        Remount,
        Write(3, 1),
        Rename(1, 7, 0),
        Unlink(0),
        Remount,
    ])
    .unwrap();
}
