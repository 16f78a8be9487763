//! The waitprof command: parse flags, run the pipeline, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use waitprof::cli::{Args, Config};
use waitprof::signals::Interrupted;

fn main() -> ExitCode {
    let result = Config::from_args(Args::parse()).and_then(waitprof::run);
    match result {
        Ok(code) => code,
        Err(err) if err.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("waitprof: {err:#}");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("waitprof: error: {err:#}");
            ExitCode::from(2)
        }
    }
}
