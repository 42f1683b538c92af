//! Processes the harness owns: WebDriver servers and Xvfb. Each runs in its own process group and is
//! killed with all its children (the browsers) when its guard drops, also on error and on Ctrl-C.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::products::{which, LocalDriver};

pub struct Proc {
    child: Child,
    pub what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, what: &str, log: &Path) -> Result<Proc> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().with_context(|| format!("starting {what}"))?;
        Ok(Proc {
            child,
            what: what.to_string(),
        })
    }

    /// Whether it has exited (a crashed driver).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(s)) => Some(format!("{} exited ({s})", self.what)),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // The whole group: the driver and the browser it launched.
        #[cfg(unix)]
        {
            let pgid = self.child.id();
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn wait_port(port: u16, proc: &mut Proc, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if let Some(e) = proc.exited() {
            bail!("{e} before it was ready");
        }
        if start.elapsed() > timeout {
            bail!(
                "{} did not listen on port {port} within {timeout:?}",
                proc.what
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An X server for browsers without a headless mode.
pub struct Xvfb {
    pub display: String,
    _proc: Proc,
}

pub async fn start_xvfb(logs: &Path) -> Result<Xvfb> {
    let bin = which("Xvfb").context("Xvfb is not installed (apt-get install xvfb xauth)")?;
    let n = (90..200)
        .find(|&n| display_free(Path::new("/tmp"), n))
        .context("no free X display number (displays :90 to :199 are held by live X servers)")?;
    let display = format!(":{n}");
    let mut cmd = Command::new(bin);
    cmd.args([&display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"]);
    let mut proc = Proc::spawn(cmd, "Xvfb", &logs.join(format!("xvfb-{n}.log")))?;
    let start = Instant::now();
    while !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
        if let Some(e) = proc.exited() {
            bail!("{e}");
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("Xvfb {display} did not start within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(Xvfb {
        display,
        _proc: proc,
    })
}

/// Whether X display `n` is free under `tmp`: no lock and no socket, or a lock whose process is
/// gone (left by a killed run), which is then removed with its socket, as an X server would itself;
/// the socket must go first, since the harness waits for it to appear. Where processes cannot be
/// looked up (no /proc), a lock holds.
fn display_free(tmp: &Path, n: u32) -> bool {
    let lock = tmp.join(format!(".X{n}-lock"));
    let sock = tmp.join(format!(".X11-unix/X{n}"));
    if !lock.exists() {
        return !sock.exists();
    }
    let pid = std::fs::read_to_string(&lock).ok();
    let pid = pid.and_then(|p| p.trim().parse::<u32>().ok());
    let gone =
        |pid| Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists();
    match pid {
        Some(pid) if gone(pid) => {
            let _ = std::fs::remove_file(&sock);
            std::fs::remove_file(&lock).is_ok() && !sock.exists()
        }
        _ => false,
    }
}

/// Starts the local driver `bin` at a free port and waits until it listens; answers its URL.
pub async fn start_driver(
    name: &str,
    d: &LocalDriver,
    bin: &Path,
    display: Option<&str>,
    logs: &Path,
) -> Result<(Proc, String)> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    for a in d.args {
        cmd.arg(a.replace("{port}", &port.to_string()));
    }
    // The preset's environment (a Vulkan ICD for software WebGPU) applies only where its file exists
    // and the user chose no driver of their own: a GPU machine keeps its hardware ICD.
    let user_icd = ["VK_ICD_FILENAMES", "VK_DRIVER_FILES"]
        .iter()
        .any(|k| std::env::var_os(k).is_some());
    for (k, v) in d.env {
        let icd = k.starts_with("VK_");
        if !icd || (!user_icd && Path::new(v).exists()) {
            cmd.env(k, v);
        }
    }
    if let Some(disp) = display {
        cmd.env("DISPLAY", disp);
    }
    let label = bin.file_name().map_or(name.into(), |f| f.to_string_lossy());
    let mut proc = Proc::spawn(cmd, &label, &logs.join(format!("{name}-driver.log")))?;
    wait_port(port, &mut proc, Duration::from_secs(30)).await?;
    Ok((proc, format!("http://127.0.0.1:{port}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A display is taken by a live server's lock or a socket; a dead server's lock and socket are
    /// cleared and the display reused; an unreadable lock holds.
    #[test]
    fn stale_x_locks_are_reclaimed_live_ones_kept() {
        let tmp = std::env::temp_dir().join(format!("nibble-xlocks-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join(".X11-unix")).unwrap();
        let lock =
            |n: u32, body: &str| std::fs::write(tmp.join(format!(".X{n}-lock")), body).unwrap();
        let sock = |n: u32| std::fs::write(tmp.join(format!(".X11-unix/X{n}")), "").unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        assert!(display_free(&tmp, 1), "nothing there");
        lock(2, &format!("{:>10}\n", std::process::id()));
        sock(2);
        assert!(!display_free(&tmp, 2), "a live server's display");
        lock(3, &format!("{dead:>10}\n"));
        sock(3);
        assert!(display_free(&tmp, 3), "a dead server's display");
        assert!(!tmp.join(".X3-lock").exists() && !tmp.join(".X11-unix/X3").exists());
        sock(4);
        assert!(!display_free(&tmp, 4), "a socket without a lock");
        lock(5, "garbage");
        assert!(!display_free(&tmp, 5), "an unreadable lock");
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
