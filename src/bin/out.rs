//! /opt/resource/out: the Concourse resource's `out` (see `lockstep::concourse`).
fn main() {
    lockstep::tune_allocator();
    std::process::exit(lockstep::concourse::main(lockstep::concourse::Kind::Out));
}
