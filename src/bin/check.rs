//! /opt/resource/check: the Concourse resource's `check` (see `lockstep::concourse`).
fn main() {
    lockstep::tune_allocator();
    std::process::exit(lockstep::concourse::main(lockstep::concourse::Kind::Check));
}
