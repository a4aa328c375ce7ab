//! /opt/resource/in: the Concourse resource's `in` (see `lockstep::concourse`).
fn main() {
    lockstep::tune_allocator();
    std::process::exit(lockstep::concourse::main(lockstep::concourse::Kind::In));
}
