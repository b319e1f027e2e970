//! `sys::alloc::collect` under the dataplane's allocator (mimalloc): memory that frees
//! emptied is resident until collected, and collecting gives it back to the OS.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident set size of this process, in bytes (`/proc/self/statm`, second field, pages).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm resident field");
    pages * 4096
}

#[test]
fn collect_gives_pages_emptied_by_frees_back_to_the_os() {
    // Run on a thread of its own, like a worker: its heap holds only what this test did.
    std::thread::spawn(|| {
        const N: usize = 64 * 1024;
        const SIZE: usize = 1024;
        let before = rss();
        // 64 MiB in small blocks (the size of a handshake's heads), every page touched.
        let blocks: Vec<Box<[u8]>> = (0..N).map(|i| vec![i as u8; SIZE].into()).collect();
        let peak = rss();
        assert!(
            peak >= before + N * SIZE / 2,
            "allocation not resident? before {before}, peak {peak}"
        );
        drop(blocks);
        let freed = rss();
        let took = wsedge_ring::sys::alloc::collect();
        let after = rss();
        eprintln!(
            "rss: before {before}, peak {peak}, after free {freed}, after collect {after} ({took:?})"
        );
        // The premise: frees alone leave the pages resident (else there is nothing to trim).
        assert!(
            freed + N * SIZE / 4 >= peak,
            "frees already gave the pages back: peak {peak}, after free {freed}"
        );
        assert!(
            after + N * SIZE / 2 <= freed,
            "collect gave back less than half of 64 MiB: after free {freed}, after collect {after}"
        );
    })
    .join()
    .expect("test thread");
}
