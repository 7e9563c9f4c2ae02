//! What the `bench_*` programs of `ci/bench` share.

use nix::sys::resource::{UsageWho, getrusage};

/// The CPU time (user and system) this process spends from [`CpuClock::start`] on, so that a
/// yardstick reports CPU per message beside its rate, as `ci/bench` does for the service.
pub struct CpuClock {
    started_us: f64,
}

impl CpuClock {
    pub fn start() -> nix::Result<Self> {
        Ok(Self {
            started_us: cpu_micros()?,
        })
    }

    /// Microseconds of CPU spent since the start, by every thread of the process.
    pub fn micros_since(&self) -> nix::Result<f64> {
        Ok(cpu_micros()? - self.started_us)
    }
}

fn cpu_micros() -> nix::Result<f64> {
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let micros = |time: nix::sys::time::TimeVal| time.tv_sec() as f64 * 1e6 + time.tv_usec() as f64;
    Ok(micros(usage.user_time()) + micros(usage.system_time()))
}
