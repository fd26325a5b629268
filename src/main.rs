//! bottle-init's binary. Everything is in the library: the start-up sequence reads top to
//! bottom in src/start.rs, and the exit-code policy is src/failure.rs.

#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    bottle_init::start::main()
}
