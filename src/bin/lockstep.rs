//! The `lockstep` CLI: parse, run, exit with bbr's exit-code bits.
use clap::Parser;

fn main() {
    // Multipart part buffers (16 MiB) come from mmap and return to the system when freed;
    // otherwise glibc's growing mmap threshold keeps freed parts in per-thread arenas and
    // the process's RSS creeps far above what it holds.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1024 * 1024);
    }
    let cli = lockstep::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(lockstep::cli::run(cli));
    std::process::exit(code);
}
