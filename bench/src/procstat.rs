//! Reading a process's CPU time and resident memory, the TCP sockets established on a local
//! port, and the kernel's TCP counters (retransmissions, memory pressure, drops), from `/proc`.

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

/// CPU seconds of this process's children that have been waited for (cutime + cstime).
pub fn self_children_cpu_seconds() -> f64 {
    fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_ticks(&s, 13))
        .unwrap_or(0.0)
}

fn parse_cpu(stat: &str) -> Option<f64> {
    parse_ticks(stat, 11)
}

/// The sum of two consecutive clock-tick fields, `at` and `at + 1` counted from field 3,
/// in seconds.
fn parse_ticks(stat: &str, at: usize) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15 (at = 11), cutime
    // and cstime 16 and 17 (at = 13).
    let utime: u64 = f.get(at)?.parse().ok()?;
    let stime: u64 = f.get(at + 1)?.parse().ok()?;
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

/// TCP sockets (IPv4 and IPv6) in state ESTABLISHED whose *local* port is `port`: the
/// server side of the connections a target on that port still holds. `None` if
/// `/proc/net/tcp` cannot be read.
pub fn established_on_port(port: u16) -> Option<usize> {
    let v4 = fs::read_to_string("/proc/net/tcp").ok()?;
    let v6 = fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    Some(count_established(&v4, port) + count_established(&v6, port))
}

fn count_established(table: &str, port: u16) -> usize {
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let mut f = l.split_whitespace();
            let local = f.nth(1).unwrap_or("");
            let state = f.nth(1).unwrap_or("");
            // "0100007F:4A69": the port is the hex after the colon; state 01 is ESTABLISHED.
            let lport = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            lport == Some(port) && state == "01"
        })
        .count()
}

/// Kernel TCP counters (this network namespace, every process in it) that show when a run was
/// shaped by the host rather than by the target: loopback retransmits, tail-loss probes and
/// timeouts (a receiver that did not run in time), receive-queue pruning and drops, and TCP
/// memory pressure (socket buffers over `net.ipv4.tcp_mem`).
pub const TCP_COUNTERS: [(&str, &str); 8] = [
    ("Tcp", "RetransSegs"),
    ("TcpExt", "TCPLossProbes"),
    ("TcpExt", "TCPTimeouts"),
    ("TcpExt", "PruneCalled"),
    ("TcpExt", "RcvPruned"),
    ("TcpExt", "TCPRcvQDrop"),
    ("TcpExt", "TCPBacklogDrop"),
    ("TcpExt", "TCPMemoryPressures"),
];

/// The [`TCP_COUNTERS`] now, in that order (0 where the kernel lacks one).
pub fn tcp_counters() -> [u64; TCP_COUNTERS.len()] {
    let mut text = fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    text += &fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    parse_counters(&text)
}

/// Parses the "Prefix: names" / "Prefix: values" line pairs of /proc/net/snmp and netstat.
fn parse_counters(text: &str) -> [u64; TCP_COUNTERS.len()] {
    let mut out = [0u64; TCP_COUNTERS.len()];
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.windows(2) {
        let (Some((p1, names)), Some((p2, values))) =
            (pair[0].split_once(':'), pair[1].split_once(':'))
        else {
            continue;
        };
        if p1 != p2 || names.trim_start().starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Some(i) = TCP_COUNTERS.iter().position(|&(p, n)| p == p1 && n == name) {
                out[i] = value.parse().unwrap_or(0);
            }
        }
    }
    out
}

/// The counters' growth from `before` to now, as a JSON object keyed by counter name.
pub fn tcp_counters_since(before: &[u64; TCP_COUNTERS.len()]) -> serde_json::Value {
    let now = tcp_counters();
    let map: serde_json::Map<String, serde_json::Value> = TCP_COUNTERS
        .iter()
        .zip(now.iter().zip(before))
        .map(|(&(_, name), (a, b))| (name.to_owned(), a.saturating_sub(*b).into()))
        .collect();
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsafe_free_clk_tck() -> f64 {
        // The tick rate parse_ticks divides by, recovered from a known value.
        1.0 / parse_ticks("1 (x) S 0 0 0 0 0 0 0 0 0 0 1 0 0 0", 11).unwrap()
    }

    #[test]
    fn parses_self() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(rss_bytes(pid).unwrap() > 0);
        let fake = "1 (a) b) S 0 0 0 0 0 0 0 0 0 0 250 150 7 3";
        let tck = unsafe_free_clk_tck();
        assert_eq!(parse_cpu(fake).unwrap(), 400.0 / tck);
        assert_eq!(parse_ticks(fake, 13).unwrap(), 10.0 / tck);
    }

    #[test]
    fn counts_established_by_local_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4A68 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:4A68 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:4A68 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0100007F:4A68 0100007F:9C41 06 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
";
        // 0x4A68 = 19048: one listener (0A), one established (01), one TIME_WAIT (06).
        assert_eq!(count_established(table, 19048), 1);
        assert_eq!(count_established(table, 40000), 1);
        assert_eq!(count_established(table, 1), 0);
    }

    #[test]
    fn parses_snmp_and_netstat_counters() {
        let text = "Tcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 42 0\n\
                    Udp: InDatagrams\nUdp: 5\n\
                    TcpExt: SyncookiesSent PruneCalled TCPMemoryPressures TCPRcvQDrop\n\
                    TcpExt: 0 7 2 3\n";
        let c = parse_counters(text);
        assert_eq!(c[0], 42, "RetransSegs");
        assert_eq!(c[3], 7, "PruneCalled");
        assert_eq!(c[5], 3, "TCPRcvQDrop");
        assert_eq!(c[7], 2, "TCPMemoryPressures");
        assert_eq!(c[1], 0, "absent counters stay 0");
        // The real files parse, and counters only grow.
        let a = tcp_counters();
        assert!(tcp_counters().iter().zip(a).all(|(x, y)| *x >= y));
    }
}
