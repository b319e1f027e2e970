//! `pipes::PipePool` against the kernel's per-user pipe limit: a user without
//! CAP_SYS_RESOURCE (and CAP_SYS_ADMIN) whose pipes together pass `fs.pipe-user-pages-soft`
//! gets two-page pipes and cannot grow them. The pool must refuse such a pipe (the splice
//! direction then relays buffered) instead of splicing 8 KiB at a time, and take pipes again
//! once the user holds fewer.
//!
//! Run as root, the test re-runs itself in a child process that drops to uid/gid 65534
//! (`nobody`), since root here has CAP_SYS_ADMIN and the limit does not apply to it.

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

#[test]
fn the_pool_refuses_pipes_the_kernel_shrinks_at_the_users_pipe_limit() {
    // SAFETY: geteuid only reads the calling thread's credentials.
    let root = unsafe { libc::geteuid() } == 0;
    if root && std::env::var_os(CHILD).is_none() {
        let exe = std::env::current_exe().expect("the test binary");
        let mut child = Command::new(exe);
        child
            .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
            .env(CHILD, "1");
        // SAFETY: only async-signal-safe calls between fork and exec; dropping from root to
        // 65534 clears every capability, so the per-user limit applies to the child.
        unsafe {
            child.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = child.output().expect("run the test as uid 65534");
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
    // 1 MiB pipes: 256 pages each, so the limit comes after soft / 256 of them (fewer if
    // this user already holds pipes elsewhere).
    let bound = (soft * 4096 / SIZE as u64) as usize + 2;
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
    assert!(
        !held.is_empty(),
        "the first pipe was refused: this user held pipes already"
    );
    assert!(
        held.iter().all(|p| p.capacity == SIZE),
        "pipes before the limit got what was asked"
    );
    assert_eq!(pool.refused(), 1, "one refusal counted");
    let text = refusal.to_string();
    assert!(
        text.contains("fs.pipe-user-pages-soft") && text.contains("8192-byte pipe"),
        "the error says why: {text}"
    );
    // Below the limit again, pipes come back at full size.
    held.into_iter().for_each(|p| pool.put(p));
    let pipe = pool.take().expect("a pipe once the others are closed");
    assert_eq!(pipe.capacity, SIZE);
    pool.put(pipe);
}
