//! The `lockstep` CLI: parse, run, exit with bbr's exit-code bits.
use clap::Parser;

fn main() {
    lockstep::tune_allocator();
    lockstep::install_panic_hook();
    let cli = lockstep::frontend::cli::Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(lockstep::frontend::cli::run(cli));
    std::process::exit(code);
}
