//! /opt/resource/check: the Concourse resource's `check` (see `lockstep::frontend::concourse`).
fn main() {
    lockstep::tune_allocator();
    lockstep::open_files::raise_soft_limit();
    lockstep::install_panic_hook();
    std::process::exit(lockstep::frontend::concourse::main(lockstep::frontend::concourse::Kind::Check));
}
