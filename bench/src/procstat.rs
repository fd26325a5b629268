//! Resident memory and CPU time of a process tree, from /proc.

use std::fs;

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects; _SC_CLK_TCK always exists on Linux.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// (ppid, utime+stime ticks) from /proc/PID/stat; the comm field may contain spaces.
fn stat(pid: i32) -> Option<(i32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the comm: state(0) ppid(1) ... utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ppid, ticks))
}

pub fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok())
                && stat(p).is_some_and(|(pp, _)| pp == pid)
            {
                out.push(p);
            }
        }
    }
    out
}

/// The process and all its descendants.
pub fn tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = children(out[i]);
        out.extend(kids);
        i += 1;
    }
    out
}

pub fn rss_kib(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn cpu_secs(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|p| stat(*p))
        .map(|(_, t)| t)
        .sum::<u64>() as f64
        / clk_tck()
}

pub fn rss_sum_kib(pids: &[i32]) -> u64 {
    pids.iter().map(|p| rss_kib(*p)).sum()
}
