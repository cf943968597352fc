//! A Nix remote builder reached over SSH at 127.0.0.1, for tests: an `sshd` started on a free port with a
//! throw-away host key and user key, whose `nix-store --serve` works on a store of its own (a chroot store,
//! `local?root=<dir>/builder`), so paths really travel both ways. Dropping it stops sshd and removes both.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::tools;

/// The builder; stops sshd and removes its files when dropped (also when a test fails).
#[derive(Debug)]
pub struct SshBuilder {
    dir: tempfile::TempDir,
    sshd: Child,
    port: u16,
}

impl SshBuilder {
    /// Starts sshd on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// A missing tool, or an sshd that does not accept connections within 10 s.
    pub fn start() -> Result<Self> {
        let sshd = tools::require("sshd", "openssh-server");
        let keygen = tools::require("ssh-keygen", "openssh-client");
        tools::require("ssh", "openssh-client");
        let dir = tempfile::tempdir().context("creating the builder's directory")?;
        let d = dir.path();
        for key in ["host_key", "user_key"] {
            tools::run_ok(
                Command::new(&keygen).args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"]).arg(d.join(key)),
            );
        }
        std::fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).context("authorized_keys")?;
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr()?.port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\nPermitRootLogin \
             prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nStrictModes no\nUsePAM \
             no\nPidFile {pid}\n",
            host = d.join("host_key").display(),
            keys = d.join("authorized_keys").display(),
            pid = d.join("sshd.pid").display()
        );
        std::fs::write(d.join("sshd_config"), config)?;
        // The builder's side of `ssh://`: nix-store --serve on its own chroot store, building in Nix's sandbox
        // as root without build users (Debian's nix-bin has no nixbld group), offline.
        let wrapper = format!(
            "#!/bin/sh\nexport NIX_CONFIG='build-users-group =\ngc-reserved-space = 0\nsandbox = true\nsubstituters \
             ='\nexec nix-store --store 'local?root={}' \"$@\"\n",
            d.join("builder").display()
        );
        let program = d.join("remote-nix-store");
        std::fs::write(&program, wrapper)?;
        std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        // sshd wants its privilege-separation directory.
        std::fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let log = std::fs::File::create(d.join("sshd.log"))?;
        let child = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting sshd")?;
        let builder = Self { dir, sshd: child, port };
        let start = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("sshd did not listen on 127.0.0.1:{port}: {}", builder.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(builder)
    }

    /// sshd's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The `--builders` value for `system` (e.g. `x86_64-linux`).
    #[must_use]
    pub fn builders(&self, system: &str) -> String {
        format!(
            "ssh://root@127.0.0.1?remote-program={}&ssh-key={} {system}",
            self.dir.path().join("remote-nix-store").display(),
            self.dir.path().join("user_key").display()
        )
    }

    /// `NIX_SSHOPTS` for the client: the port, and no host key checks (the key is made up for the test).
    #[must_use]
    pub fn ssh_opts(&self) -> String {
        format!("-p {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR", self.port)
    }

    /// Where the builder's store keeps logical path `/nix/store/<base>`.
    #[must_use]
    pub fn physical(&self, logical: &Path) -> PathBuf {
        self.dir.path().join("builder").join(logical.strip_prefix("/").unwrap_or(logical))
    }

    /// Whether the builder's own Nix database has `logical` as a valid path.
    ///
    /// # Errors
    /// When nix-store cannot run.
    pub fn has_valid(&self, logical: &Path) -> Result<bool> {
        let out = Command::new(self.dir.path().join("remote-nix-store"))
            .arg("--check-validity")
            .arg(logical)
            .output()
            .context("running nix-store on the builder's store")?;
        Ok(out.status.success())
    }
}

impl Drop for SshBuilder {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        // Store paths are read-only: make them removable.
        let _ = Command::new("chmod").arg("-R").arg("u+w").arg(self.dir.path()).status();
    }
}

/// Fails unless `path` exists in the builder's store directory (the copy arrived there).
///
/// # Errors
/// When it does not.
pub fn ensure_copied(b: &SshBuilder, logical: &Path) -> Result<()> {
    ensure!(
        b.physical(logical).exists() && b.has_valid(logical)?,
        "{} is not in the builder's store",
        logical.display()
    );
    Ok(())
}
