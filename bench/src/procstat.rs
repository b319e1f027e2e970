//! Reading a process's CPU time and resident memory from `/proc`.

use std::fs;

/// CPU seconds (user + system, all threads) of `pid` so far; `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    parse_cpu(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of this process so far.
pub fn self_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_cpu(&s))
        .unwrap_or(0.0)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some((utime + stime) as f64 / tck)
}

/// Resident set size of `pid` in bytes (VmRSS); `None` if it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Sum of CPU seconds over `pids` (missing processes count as 0).
pub fn cpu_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_seconds(p)).sum()
}

/// Sum of RSS bytes over `pids` (missing processes count as 0).
pub fn rss_sum(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&p| rss_bytes(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_self() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
        let fake = "1 (a) b) S 0 0 0 0 0 0 0 0 0 0 250 150 0 0";
        assert!(parse_cpu(fake).unwrap() > 0.0);
    }
}
