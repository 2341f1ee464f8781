//! SIPp user agents (Debian `sip-tester`) on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{scenarios, wait_exit, workdir};

/// A running SIPp, killed (and reaped) when dropped.
pub struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    /// Starts `sipp -sf scenario [127.0.0.1:target] -i 127.0.0.1 -p port
    /// -nostdin -trace_err args...` in `workdir(name)`, output discarded.
    /// A UAS has no `target`; a UAC's `args` carry its call count, rate,
    /// `-timeout` and the like.
    pub fn start(name: &str, scenario: &Path, port: u16, target: Option<u16>, args: &[&str]) -> Sipp {
        let dir = workdir(name);
        let mut c = Command::new("sipp");
        c.current_dir(&dir).arg("-sf").arg(scenario);
        if let Some(t) = target {
            c.arg(format!("127.0.0.1:{t}"));
        }
        c.args(["-i", "127.0.0.1", "-p", &port.to_string(), "-nostdin", "-trace_err"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = c.spawn().expect("start sipp");
        Sipp { child, dir }
    }

    /// Waits up to `limit` for SIPp to exit; true when it exited with
    /// success (for a UAC: every call succeeded). Says where its files
    /// are when it failed.
    pub fn finished(&mut self, limit: Duration) -> bool {
        match self.exit(limit) {
            Some(st) if st.success() => true,
            Some(st) => {
                eprintln!("sipp failed ({st}); see {}", self.dir.display());
                false
            }
            None => {
                eprintln!("sipp still running after {limit:?}; see {}", self.dir.display());
                false
            }
        }
    }

    /// Waits up to `limit` for SIPp to exit: its status, `None` while it
    /// still runs.
    pub fn exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    /// Sends `sig` to SIPp (SIGUSR1: stop and write the final counts).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// The directory SIPp runs in (its trace files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The reload tests' backend: `uas.xml` on `port`.
pub fn uas(name: &str, port: u16) -> Sipp {
    Sipp::start(name, &scenarios().join("uas.xml"), port, None, &[])
}

/// The reload tests' caller: `calls` calls from `port` to `target`,
/// started all at once (50/s) and held `hold_ms` each.
pub fn uac(name: &str, target: u16, port: u16, calls: u32, hold_ms: u32) -> Sipp {
    let (calls, hold) = (calls.to_string(), hold_ms.to_string());
    let args = [
        "-s",
        "1234",
        "-m",
        &calls,
        "-r",
        "50",
        "-d",
        &hold,
        "-timeout",
        "50",
        "-timeout_error",
    ];
    Sipp::start(name, &scenarios().join("uac.xml"), port, Some(target), &args)
}
