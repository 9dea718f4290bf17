//! Requests-by-type counters of the daemon (dumped with the other counters on SIGUSR1).

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! ops {
    ($($v:ident => $n:literal),* $(,)?) => {
        /// A FUSE request type.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($v),* }
        /// Names of [`Op`]s, in order.
        pub const OP_NAMES: &[&str] = &[$($n),*];
    };
}

ops! {
    Lookup => "lookup", Forget => "forget", Getattr => "getattr", Setattr => "setattr",
    Readlink => "readlink", Mknod => "mknod", Mkdir => "mkdir", Unlink => "unlink",
    Rmdir => "rmdir", Symlink => "symlink", Rename => "rename", Link => "link",
    Open => "open", Read => "read", Write => "write", Flush => "flush",
    Release => "release", Fsync => "fsync", Opendir => "opendir", Readdir => "readdir",
    Readdirplus => "readdirplus", Releasedir => "releasedir", Fsyncdir => "fsyncdir",
    Statfs => "statfs", Setxattr => "setxattr", Getxattr => "getxattr",
    Listxattr => "listxattr", Removexattr => "removexattr", Create => "create",
    Fallocate => "fallocate", Lseek => "lseek",
}

/// One counter per request type.
#[derive(Debug)]
pub struct Requests {
    counts: Vec<AtomicU64>,
}

impl Default for Requests {
    fn default() -> Self {
        Requests {
            counts: OP_NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Requests {
    pub fn count(&self, op: Op) {
        self.counts[op as usize].fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }
    /// `name=count` for every type seen at least once, plus the total.
    pub fn summary(&self) -> String {
        let mut total = 0;
        let mut parts = Vec::new();
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            total += n;
            if n > 0 {
                parts.push(format!("{}={n}", OP_NAMES[i]));
            }
        }
        format!("total={total} {}", parts.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_type() {
        let r = Requests::default();
        assert_eq!(OP_NAMES.len(), Op::Lseek as usize + 1);
        r.count(Op::Lookup);
        r.count(Op::Lookup);
        r.count(Op::Write);
        assert_eq!(r.get(Op::Lookup), 2);
        assert_eq!(r.summary(), "total=3 lookup=2 write=1");
    }
}
