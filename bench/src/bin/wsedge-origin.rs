//! `wsedge-origin`: the fast echo origin used by every benchmark run and the demo origin of
//! the README quick start. `GET /` serves a page that opens a WebSocket back to the same host;
//! upgrades on any path are echo WebSockets.

use std::net::SocketAddr;

use clap::Parser;

/// Fast WebSocket echo origin and demo page.
#[derive(Debug, Parser)]
#[command(name = "wsedge-origin", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Worker threads (default: online CPUs). 1 runs a single-threaded event loop.
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    rt.block_on(wsedge_bench::origin::run(args.listen))?;
    Ok(())
}
