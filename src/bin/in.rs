//! /opt/resource/in: the Concourse resource's `in` (see `lockstep::frontend::concourse`).
fn main() {
    lockstep::tune_allocator();
    lockstep::open_files::raise_soft_limit();
    lockstep::install_panic_hook();
    std::process::exit(lockstep::frontend::concourse::main(lockstep::frontend::concourse::Kind::In));
}
