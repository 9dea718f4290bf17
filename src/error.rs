//! The one error type of layerfs, and the one place where errors become errno values.

use std::fmt;

/// An error from an overlay operation: an errno plus context for the log.
#[derive(Debug)]
pub struct Error {
    errno: i32,
    context: Option<String>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An error with a bare errno value.
    pub const fn from_errno(errno: i32) -> Self {
        Error {
            errno,
            context: None,
        }
    }

    /// Attach a description of what was being done (for the debug log).
    pub fn context(mut self, what: impl Into<String>) -> Self {
        if self.context.is_none() {
            self.context = Some(what.into());
        }
        self
    }

    /// The errno value handed to the kernel. This is the only errno mapping in layerfs:
    /// every failure is an errno by the time it reaches here, and unknown/zero values
    /// become EIO so the kernel never sees "success" for a failed request.
    pub fn errno(&self) -> i32 {
        if self.errno > 0 {
            self.errno
        } else {
            libc::EIO
        }
    }

    /// Put `outer` (typically the option and path being prepared) in front of the context,
    /// for a one-line message that names what failed.
    pub fn within(mut self, outer: impl fmt::Display) -> Self {
        self.context = Some(match self.context.take() {
            Some(c) => format!("{outer}: {c}"),
            None => outer.to_string(),
        });
        self
    }

    pub fn is(&self, errno: i32) -> bool {
        self.errno == errno
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // strerror's text, without std's " (os error N)": messages reach podman's users
        let desc = nix::errno::Errno::from_raw(self.errno()).desc();
        match &self.context {
            Some(c) => write!(f, "{c}: {desc}"),
            None => write!(f, "{desc}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<nix::errno::Errno> for Error {
    fn from(e: nix::errno::Errno) -> Self {
        Error::from_errno(e as i32)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::from_errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

/// Shorthand: `err(libc::ENOENT)`.
pub fn err<T>(errno: i32) -> Result<T> {
    Err(Error::from_errno(errno))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_errno_maps_to_eio() {
        assert_eq!(Error::from_errno(0).errno(), libc::EIO);
        assert_eq!(Error::from_errno(-3).errno(), libc::EIO);
        assert_eq!(Error::from_errno(libc::ENOENT).errno(), libc::ENOENT);
    }

    #[test]
    fn display_names_context_without_os_error_suffix() {
        let e = Error::from_errno(libc::ENOTDIR)
            .context("open work")
            .within("workdir /w");
        assert_eq!(e.to_string(), "workdir /w: open work: Not a directory");
        assert_eq!(
            Error::from_errno(libc::EROFS).within("x").to_string(),
            "x: Read-only file system"
        );
    }

    #[test]
    fn io_error_keeps_errno() {
        let e: Error = std::io::Error::from_raw_os_error(libc::EXDEV).into();
        assert!(e.is(libc::EXDEV));
        let e: Error = std::io::Error::other("x").into();
        assert_eq!(e.errno(), libc::EIO);
    }
}
