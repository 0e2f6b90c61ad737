//! A command run at a terminal of its own: a pseudo-terminal whose slave
//! is the command's controlling terminal and standard streams, and whose
//! master a test types into (Ctrl-C is `\x03`, Ctrl-\ is `\x1c`), as a
//! person at a shell would.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::pty::{OpenptyResult, openpty};

pub struct Terminal {
    master: File,
    /// Everything the command wrote to the terminal.
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    /// Starts `cmd` as the leader of a new session whose controlling
    /// terminal is a new pseudo-terminal, so that its process group is the
    /// terminal's foreground group.
    pub fn spawn(mut cmd: Command) -> std::io::Result<(Child, Terminal)> {
        let OpenptyResult { master, slave } = openpty(None, None)?;
        let slave = File::from(slave);
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: setsid and ioctl are async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        jobgate::process::die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        let master = File::from(master);
        // Drained, so that the command never blocks writing to a full
        // terminal.
        let screen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone()?;
        let sink = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok((child, Terminal { master, screen }))
    }

    /// Types `keys` at the terminal.
    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master
            .write_all(keys)
            .unwrap_or_else(|e| panic!("typing at the terminal: {e}"));
    }

    /// What the command has written to the terminal so far.
    pub fn screen(&self) -> String {
        let s = self.screen.lock().map(|s| s.clone()).unwrap_or_default();
        String::from_utf8_lossy(&s).into_owned()
    }
}
