//! Readings from `/proc`: a process's resident memory and CPU time. Linux only, as is the rest.

use std::fs;

/// A process to read: the server under test (by pid) or the bench itself.
#[derive(Debug, Clone)]
pub struct Proc {
    dir: String,
}

impl Proc {
    /// The process `pid`, checked to exist now so a typo fails before the run, not after.
    pub fn pid(pid: u32) -> Result<Proc, String> {
        let p = Proc {
            dir: format!("/proc/{pid}"),
        };
        p.rss_bytes()
            .map(|_| p)
            .ok_or_else(|| format!("cannot read /proc/{pid}/status: is {pid} a running process?"))
    }

    pub fn current() -> Proc {
        Proc {
            dir: "/proc/self".into(),
        }
    }

    /// Resident memory (`VmRSS`), in bytes.
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("{}/status", self.dir)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// Open file descriptors (entries of `fd/`).
    pub fn open_fds(&self) -> Option<u64> {
        Some(fs::read_dir(format!("{}/fd", self.dir)).ok()?.count() as u64)
    }

    /// Threads (`Threads:` of `status`).
    pub fn threads(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("{}/status", self.dir)).ok()?;
        let line = status.lines().find(|l| l.starts_with("Threads:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// CPU time used so far, user + system, in seconds (all threads).
    pub fn cpu_secs(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("{}/stat", self.dir)).ok()?;
        // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
        // What follows starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks_per_sec())
    }
}

/// Said when a CPU reading is small enough for the tick granularity to matter.
pub const TICK_NOTE: &str =
    "server CPU is counted in clock ticks (10 ms): under a second of it, ratios are rough";

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Raises the open-files soft limit to the hard limit (every connection is a descriptor) and
/// returns `(old soft, new soft)`.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((old, lim.rlim_cur))
    }
}
