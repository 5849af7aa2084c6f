//! The serial line frames are written to ([`SerialLine`]): a pseudo-terminal pair the
//! simulator creates or an existing device or file, put in raw mode, written without blocking
//! the runtime, and drained before it closes.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::termios::{self, BaudRate, SetArg};
use tokio::io::unix::AsyncFd;
use tokio::io::AsyncWriteExt;

use super::SerialError;

/// Where a serial simulation writes its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialTarget {
    /// A new pseudo-terminal pair: the simulator writes to the controller side and the
    /// gateway opens the follower, whose path (`/dev/pts/N`) [`SerialLine::path`] gives.
    Pty,
    /// An existing path: a real serial device (put in raw mode at the given baud rate), a
    /// pseudo-terminal someone else made, a FIFO, or a plain file (for tests). It is not
    /// created if missing.
    Path(PathBuf),
}

/// How frames reach the line.
#[derive(Debug)]
enum Writer {
    /// Terminals, pseudo-terminals and FIFOs: non-blocking writes driven by readiness.
    Fd(AsyncFd<File>),
    /// Plain files, which have no readiness.
    File(tokio::fs::File),
}

/// An open serial line that frames are written to.
#[derive(Debug)]
pub struct SerialLine {
    /// The path the gateway opens (the follower of a pty pair) or the target path.
    path: PathBuf,
    writer: Writer,
    /// The follower side of our own pty, held open so that its raw settings stay and the
    /// line is not hung up while the gateway closes and reopens it.
    _follower: Option<OwnedFd>,
}

impl SerialLine {
    /// Opens `target`. Terminals are put in raw mode (no echo, no line editing, no CR/LF
    /// translation) and, for [`SerialTarget::Path`], set to `baud`. Must be called inside a
    /// Tokio runtime.
    pub fn open(target: &SerialTarget, baud: u32) -> Result<SerialLine, SerialError> {
        match target {
            SerialTarget::Pty => {
                let pty = nix::pty::openpty(None, None).map_err(SerialError::Pty)?;
                let path = nix::unistd::ttyname(&pty.slave).map_err(SerialError::Pty)?;
                make_raw(&pty.slave, None).map_err(|source| SerialError::Configure {
                    path: path.clone(),
                    source,
                })?;
                set_nonblocking(&pty.master).map_err(SerialError::Pty)?;
                let writer =
                    register(File::from(pty.master))
                        .map(Writer::Fd)
                        .map_err(|source| SerialError::Open {
                            path: path.clone(),
                            source,
                        })?;
                Ok(SerialLine {
                    path,
                    writer,
                    _follower: Some(pty.slave),
                })
            }
            SerialTarget::Path(path) => {
                let open_err = |source| SerialError::Open {
                    path: path.clone(),
                    source,
                };
                let file = OpenOptions::new()
                    .write(true)
                    .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
                    .open(path)
                    .map_err(open_err)?;
                if nix::unistd::isatty(&file).unwrap_or(false) {
                    let speed = BaudRate::try_from(baud).map_err(|_| SerialError::Baud(baud))?;
                    make_raw(&file, Some(speed)).map_err(|source| SerialError::Configure {
                        path: path.clone(),
                        source,
                    })?;
                }
                let is_file = file.metadata().map_err(open_err)?.is_file();
                let writer = if is_file {
                    Writer::File(tokio::fs::File::from_std(file))
                } else {
                    Writer::Fd(register(file).map_err(open_err)?)
                };
                Ok(SerialLine {
                    path: path.clone(),
                    writer,
                    _follower: None,
                })
            }
        }
    }

    /// The path the gateway should open: `/dev/pts/N` for a pty, else the target path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For a pty made by [`SerialTarget::Pty`]: waits until the gateway has read everything
    /// written (the follower's input queue is empty), at most `timeout`; returns whether it
    /// did. Call it before dropping the line: closing the controller side hangs the
    /// follower up and the kernel discards what was not yet read. Other targets return
    /// `true` at once (a real tty's driver sends its buffer on close by itself).
    pub async fn drain(&self, timeout: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let Some(follower) = &self._follower else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut empty_checks = 0;
        loop {
            let mut fds = [PollFd::new(follower.as_fd(), PollFlags::POLLIN)];
            let pending = match poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) => n > 0,
                Err(_) => false,
            };
            // Twice empty, a little apart: bytes in flight inside the pty have landed too.
            empty_checks = if pending { 0 } else { empty_checks + 1 };
            if empty_checks >= 2 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes all of `buf`. Cancel-safe only in the sense that dropping the future stops
    /// writing; part of `buf` may have been written.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        match &mut self.writer {
            Writer::File(f) => {
                f.write_all(buf).await?;
                f.flush().await
            }
            Writer::Fd(fd) => {
                while !buf.is_empty() {
                    let mut ready = fd.writable().await?;
                    match ready.try_io(|inner| {
                        let mut f: &File = inner.get_ref();
                        f.write(buf)
                    }) {
                        Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(Ok(n)) => buf = &buf[n..],
                        Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                        Ok(Err(e)) => return Err(e),
                        // Not writable after all; readiness was cleared, wait again.
                        Err(_would_block) => {}
                    }
                }
                Ok(())
            }
        }
    }
}

/// Registers `file` with the runtime for readiness-driven writes.
fn register(file: File) -> io::Result<AsyncFd<File>> {
    // SAFETY: a `File` owns its descriptor, which stays open and the same until the
    // `AsyncFd` (which then owns the `File`) is dropped.
    unsafe { AsyncFd::register(file) }.map_err(io::Error::from)
}

/// Raw mode (and a baud rate) on a terminal.
fn make_raw(fd: impl AsFd, speed: Option<BaudRate>) -> nix::Result<()> {
    let mut t = termios::tcgetattr(&fd)?;
    termios::cfmakeraw(&mut t);
    if let Some(speed) = speed {
        termios::cfsetspeed(&mut t, speed)?;
    }
    termios::tcsetattr(&fd, SetArg::TCSANOW, &t)
}

fn set_nonblocking(fd: impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}
