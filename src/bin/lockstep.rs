//! The `lockstep` CLI: parse, run, exit with bbr's exit-code bits.
use clap::Parser;

fn main() {
    lockstep::tune_allocator();
    lockstep::open_files::raise_soft_limit();
    lockstep::install_panic_hook();
    // bbr exits 1 on a usage error (clap: 2), with the usage printed; help and the version
    // are not errors.
    let cli = match lockstep::frontend::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            std::process::exit(match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => 1,
            });
        }
    };
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
