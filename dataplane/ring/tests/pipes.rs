//! `pipes::PipePool` against the kernel's per-user pipe limit: a user without
//! CAP_SYS_RESOURCE (and CAP_SYS_ADMIN) whose pipes together pass `fs.pipe-user-pages-soft`
//! gets two-page pipes and cannot grow them. The pool must refuse such a pipe (the splice
//! direction then relays buffered) instead of splicing 8 KiB at a time, and take pipes again
//! once the user holds fewer.
//!
//! Run as root, the test re-runs itself in a child process as uid/gid 65534 (`nobody`),
//! since root here has CAP_SYS_ADMIN and the limit does not apply to it. Where the host
//! cannot show the limit (no limit set, descriptors too few to reach it, pages so large
//! that a shrunk pipe is not small, a child that cannot be started as 65534) the test says
//! `NOT TESTED` and why, loudly.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use wsedge_ring::pipes::{MIN_CAPACITY, PipePool};

const CHILD: &str = "WSEDGE_PIPE_LIMIT_CHILD";
const NAME: &str = "the_pool_refuses_pipes_the_kernel_shrinks_at_the_users_pipe_limit";
const SIZE: u32 = 1 << 20;

fn soft_limit_pages() -> u64 {
    std::fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .expect("read /proc/sys/fs/pipe-user-pages-soft")
        .trim()
        .parse()
        .expect("a number of pages")
}

/// The soft `RLIMIT_NOFILE` of this process (`/proc/self/limits`).
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn the_pool_refuses_pipes_the_kernel_shrinks_at_the_users_pipe_limit() {
    let root = std::fs::metadata("/proc/self").expect("/proc/self").uid() == 0;
    if root && std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().expect("the test binary");
        // Dropping from root to 65534 clears every capability (and, in std, the
        // supplementary groups), so the per-user limit applies to the child.
        let out = Command::new(exe)
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1")
            .uid(65534)
            .gid(65534)
            .output();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                eprintln!(
                    "NOT TESTED: cannot run the test binary as uid 65534 ({e}): a private \
                     target directory, or no such uid in this user namespace"
                );
                return;
            }
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "as uid 65534:\n{text}");
        assert!(
            text.contains("1 passed"),
            "the child ran no test (filter?):\n{text}"
        );
        eprint!("{text}");
        return;
    }

    let soft = soft_limit_pages();
    let mut pool = PipePool::new(0, SIZE);
    if soft == 0 {
        // No limit on this host: every pipe gets what was asked, nothing is refused.
        eprintln!("NOTE: fs.pipe-user-pages-soft is 0 here: no per-user pipe limit to hit");
        let held: Vec<_> = (0..8).map(|_| pool.take().expect("a pipe")).collect();
        assert!(held.iter().all(|p| p.capacity == SIZE));
        held.into_iter().for_each(|p| pool.put(p));
        return;
    }
    // SAFETY: sysconf only reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    if 2 * page >= u64::from(MIN_CAPACITY) {
        eprintln!(
            "NOT TESTED: {page}-byte pages: a shrunk pipe (two pages) is not below the floor"
        );
        return;
    }
    // 1 MiB pipes: the limit comes after soft * page / 1 MiB of them (fewer if this user
    // already holds pipes elsewhere).
    let bound = (soft * page / u64::from(SIZE)) as usize + 2;
    let needed = 2 * bound as u64 + 32;
    if needed > open_files_limit() {
        eprintln!(
            "NOT TESTED: reaching fs.pipe-user-pages-soft = {soft} pages takes {needed} \
             descriptors, over this process's limit of {}",
            open_files_limit()
        );
        return;
    }
    let mut held = Vec::new();
    let refusal = loop {
        match pool.take() {
            Ok(pipe) => {
                assert!(
                    pipe.capacity >= MIN_CAPACITY,
                    "a {}-byte pipe was handed out",
                    pipe.capacity
                );
                held.push(pipe);
                assert!(
                    held.len() <= bound,
                    "{} pipes of 1 MiB and no refusal: fs.pipe-user-pages-soft = {soft} pages \
                     does not apply (a privileged user?)",
                    held.len()
                );
            }
            Err(e) => break e,
        }
    };
    // Only the pipe that crossed the limit may have stayed at the kernel's default size.
    let full = held.iter().filter(|p| p.capacity == SIZE).count();
    assert!(
        full + 1 >= held.len() && full > 0,
        "pipes before the limit got what was asked: {full} of {}",
        held.len()
    );
    assert_eq!(pool.refused(), 1, "one refusal counted");
    let text = refusal.to_string();
    assert!(
        text.contains("fs.pipe-user-pages-soft")
            && text.contains(&format!("{}-byte pipe", 2 * page)),
        "the error says why: {text}"
    );
    // Below the limit again, the pool hands out pipes again.
    held.into_iter().for_each(|p| pool.put(p));
    let pipe = pool.take().expect("a pipe once the others are closed");
    assert!(pipe.capacity >= MIN_CAPACITY);
    pool.put(pipe);
}
