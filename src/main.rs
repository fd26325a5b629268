//! bottle-init: entry point. Exit-code policy lives here and only here.

fn main() -> std::process::ExitCode {
    eprintln!("bottle-init: not implemented yet");
    std::process::ExitCode::from(70)
}
