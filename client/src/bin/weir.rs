//! `weir`: the Weir command-line client. See `weir --help`; the commands live in `src/cli/`.

#[path = "../cli/mod.rs"]
mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
