//! The waitprof command: parse flags, run the pipeline, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use waitprof::cli::{Args, Config};
use waitprof::signals::Interrupted;

fn main() -> ExitCode {
    // one malloc arena: the session end's threads (a view each, a file each) live a moment,
    // and with an arena of their own each kept what it freed: 30-40 MB more at the peak of
    // a 40,000-stack profile, for no time saved (BENCHMARKS.md)
    // SAFETY: mallopt with a valid parameter, before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let result = if waitprof::diff::is_diff(&args) {
        // `waitprof diff OLD NEW`: the arguments after `diff`, as a command of their own
        waitprof::diff::run(args.into_iter().skip(1))
    } else {
        Config::from_args(Args::parse_from(&args)).and_then(waitprof::run)
    };
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
