//! The guest's free disk, memory and CPUs, and what a kernel build needs.

/// Command that prints free KiB in the home folder, total memory in KiB and the CPU count.
pub const PROBE_COMMAND: &str =
    "df -Pk \"$HOME\" | awk 'NR==2 {print $4}'; awk '/^MemTotal:/ {print $2}' /proc/meminfo; nproc";

/// Free disk a kernel source tree plus a small build needs: about 1.5 GiB of
/// source and 1-3 GiB of objects for a tinyconfig or defconfig build. A
/// distribution config with modules needs 15-25 GiB more.
pub const MIN_FREE_DISK_KIB: u64 = 8 * 1024 * 1024;

/// Memory below which a parallel kernel build tends to be killed.
pub const MIN_MEMORY_KIB: u64 = 1536 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestResources {
    pub free_disk_kib: u64,
    pub memory_kib: u64,
    pub cpus: u32,
}

/// Parses the output of `PROBE_COMMAND`.
pub fn parse(output: &str) -> Result<GuestResources, String> {
    let numbers: Vec<u64> = output
        .split_whitespace()
        .map(|word| word.parse::<u64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("unexpected output from the resource probe: {output:?}"))?;
    match numbers.as_slice() {
        [disk, memory, cpus] => Ok(GuestResources {
            free_disk_kib: *disk,
            memory_kib: *memory,
            cpus: u32::try_from(*cpus).unwrap_or(u32::MAX),
        }),
        _ => Err(format!(
            "expected 3 numbers from the resource probe, got {output:?}"
        )),
    }
}

/// Lists what is short for a kernel build, one message per resource.
pub fn shortfalls(resources: &GuestResources) -> Vec<String> {
    let gib = |kib: u64| kib as f64 / (1024.0 * 1024.0);
    let mut short = Vec::new();
    if resources.free_disk_kib < MIN_FREE_DISK_KIB {
        short.push(format!(
            "only {:.1} GiB free in the guest's home folder; a kernel tree and build need at \
             least {:.0} GiB: raise disk_gib in the profile",
            gib(resources.free_disk_kib),
            gib(MIN_FREE_DISK_KIB)
        ));
    }
    if resources.memory_kib < MIN_MEMORY_KIB {
        short.push(format!(
            "the guest has {:.1} GiB of memory; a kernel build needs at least {:.1} GiB: raise \
             memory_mib in the profile",
            gib(resources.memory_kib),
            gib(MIN_MEMORY_KIB)
        ));
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_three_numbers() {
        let resources = parse("15728640\n2030000\n2\n").unwrap();
        assert_eq!(resources.free_disk_kib, 15_728_640);
        assert_eq!(resources.memory_kib, 2_030_000);
        assert_eq!(resources.cpus, 2);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert!(parse("df: no such file\n").is_err());
    }

    #[test]
    fn small_disk_is_named() {
        let resources = GuestResources {
            free_disk_kib: 1024 * 1024,
            memory_kib: 4 << 20,
            cpus: 2,
        };
        let short = shortfalls(&resources);
        assert_eq!(short.len(), 1);
        assert!(short[0].contains("disk_gib"), "{}", short[0]);
    }

    #[test]
    fn enough_resources_pass() {
        let resources = GuestResources {
            free_disk_kib: 20 << 20,
            memory_kib: 2 << 20,
            cpus: 2,
        };
        assert!(shortfalls(&resources).is_empty());
    }
}
