//! What the real-socket tests share: the `siplb` binary started on its own
//! loopback ports and driven through its admin API ([`Siplb`]), SIPp user
//! agents ([`Sipp`]), ports, work directories and bounded waiting.
//!
//! Every wait here has a deadline the caller chooses; nothing asserts on
//! how long something took. Processes are stopped when their handle is
//! dropped, also when a test panics.

#![allow(dead_code, unused_macros)]

mod siplb;
mod sipp;

// Not every test file uses both.
#[allow(unused_imports)]
pub use siplb::*;
#[allow(unused_imports)]
pub use sipp::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A test's base port, shifted by `SIPLB_TEST_PORT_OFFSET` so that several
/// checkouts can run the suite on one machine at once without their siplb
/// instances sharing SO_REUSEPORT ports.
pub fn port(base: u16) -> u16 {
    base + std::env::var("SIPLB_TEST_PORT_OFFSET")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// True when `cmd arg` runs; otherwise says that the test skips for want
/// of `cmd` (a Debian package named in `packages`).
pub fn have(cmd: &str, arg: &str, packages: &str) -> bool {
    let ok = Command::new(cmd)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("skipping: {cmd} is not installed (Debian package {packages})");
    }
    ok
}

/// True when SIPp is installed; otherwise says that the test skips.
pub fn sipp_available() -> bool {
    have("sipp", "-v", "sip-tester")
}

/// The SIPp scenario files, `tests/sipp/`.
pub fn scenarios() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sipp")
}

/// A work directory for the test named `name`, created if needed:
/// configs, logs and SIPp's files. The test binary, its pid and the
/// calling thread's name (the test's path, so the epoll and io_uring
/// variants of a test differ) are part of the path.
pub fn workdir(name: &str) -> PathBuf {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let binary = binary.split('-').next().unwrap_or("test").to_string();
    let thread = std::thread::current().name().unwrap_or("t").replace("::", "-");
    let d = std::env::temp_dir().join(format!("siplb-{binary}-{thread}-{name}-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`;
/// panics naming `what` when it never does.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `ok` until it holds, for at most `limit`; panics naming `what`
/// when it never does.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    wait_for(limit, what, || ok().then_some(()))
}

/// Defines, for each `name = base`, a test `$epoll::name` that runs the
/// test body `name("epoll", port(base))` and a test `$uring::name` that
/// runs `name("io_uring", port(base + 50))`; with `, if needs`, both
/// return at once (the body skipped) unless `needs` holds, e.g.
/// `sipp_available()`. The generated modules see the including file's
/// names (`use super::*`). Include the harness with `#[macro_use]`.
macro_rules! both_io {
    ($epoll:ident, $uring:ident; $($name:ident = $base:expr $(, if $needs:expr)?;)*) => {
        mod $epoll {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $(if !$needs { return; })?
                    super::$name("epoll", port($base));
                }
            )*
        }
        mod $uring {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $name() {
                    $(if !$needs { return; })?
                    super::$name("io_uring", port($base + 50));
                }
            )*
        }
    };
}
