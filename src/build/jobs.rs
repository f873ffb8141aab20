//! Picks the number of parallel make jobs.

use std::path::Path;

use anyhow::Context;

use crate::project::Project;

/// Memory set aside for one make job, in bytes.
///
/// Measured on x86_64 with gcc 12 and Linux 6.1: `/usr/bin/time -v make
/// <file>.o` in a defconfig build folder reported a "Maximum resident set
/// size" of 168 MB for `kernel/sched/core.o` and 195 MB for `net/core/dev.o`,
/// and 208 MB and 253 MB with `CONFIG_DEBUG_INFO` on, as distro configs have.
/// A whole tinyconfig build peaked at 171 MB. 512 MiB is twice the largest
/// figure, which leaves room for larger files. The final link runs alone.
pub const PER_JOB_BYTES: u64 = 512 * 1024 * 1024;

/// Computes `make -j` from CPUs and memory: one job per CPU, but no more jobs
/// than fit in `available_memory_bytes` at `per_job_bytes` each, and at least one.
pub fn job_count(cpus: u32, available_memory_bytes: u64, per_job_bytes: u64) -> u32 {
    let by_memory = available_memory_bytes
        .checked_div(per_job_bytes)
        .unwrap_or(u64::MAX);
    let by_memory = u32::try_from(by_memory).unwrap_or(u32::MAX);
    cpus.min(by_memory).max(1)
}

/// Resolves the job count: the command line, then the project file, then
/// [`job_count`] on this machine's CPUs and `MemAvailable`.
pub fn resolve(project: &Project, jobs_override: Option<u32>) -> anyhow::Result<u32> {
    if let Some(jobs) = jobs_override.or(project.build.jobs) {
        return Ok(jobs.max(1));
    }
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let available = available_memory(Path::new("/proc/meminfo"))?;
    Ok(job_count(cpus, available, PER_JOB_BYTES))
}

/// Reads `MemAvailable` from a meminfo file, in bytes.
fn available_memory(meminfo: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(meminfo)
        .with_context(|| format!("reading {}", meminfo.display()))?;
    parse_mem_available(&text).with_context(|| {
        format!(
            "no MemAvailable line in {}; set [build] jobs in the project file",
            meminfo.display()
        )
    })
}

/// Parses `MemAvailable:   123456 kB` into bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo
        .lines()
        .find(|line| line.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1024 * 1024 * 1024;

    #[test]
    fn job_count_limited_by_cpus() {
        assert_eq!(job_count(2, 24 * GIB, GIB / 2), 2);
    }

    #[test]
    fn job_count_limited_by_memory() {
        assert_eq!(job_count(16, 3 * GIB, GIB), 3);
    }

    #[test]
    fn job_count_at_least_one() {
        assert_eq!(job_count(8, 100, GIB), 1);
    }

    #[test]
    fn job_count_zero_cpus_gives_one() {
        assert_eq!(job_count(0, 8 * GIB, GIB), 1);
    }

    #[test]
    fn job_count_zero_per_job_uses_cpus() {
        assert_eq!(job_count(4, GIB, 0), 4);
    }

    #[test]
    fn mem_available_parsed_as_bytes() {
        let meminfo = "MemTotal:       24576000 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(2048 * 1024));
    }

    #[test]
    fn mem_available_missing() {
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
    }
}
