//! `edgesync-chaos`: the replication chaos command (see `edgesync_tests::chaos`).
//!
//! ```text
//! cargo run -p edgesync-tests --bin edgesync-chaos -- --nodes 5 --seconds 600 --seed 42
//! ```
//!
//! Prints the seed, the faults, the checker's counts and the time to converge; exits
//! 1 when a must-be-zero count is not zero or the cluster did not converge, 2 on a
//! usage or harness error. The gateways it starts are this binary too: run as
//! `edgesync-chaos serve …` / `cert …` it is the `edgesync` CLI, so a `cargo run`
//! needs nothing else built (`--gateway PATH` runs another binary instead).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use edgesync_tests::chaos::{self, Options};

const USAGE: &str = "usage: edgesync-chaos [--nodes 3..5] [--seconds N] [--seed N] [--clients N] \
[--converge-secs N] [--gateway PATH] [--keep] [--verbose]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Started by a chaos run as one of its gateways (or to make certificates).
    if args.first().is_some_and(|a| a == "serve" || a == "cert") {
        return edgesync::cli::main();
    }
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("edgesync-chaos: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    println!(
        "chaos: seed {} (replay with --seed {} --nodes {} --seconds {})",
        opts.seed, opts.seed, opts.nodes, opts.seconds
    );
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("edgesync-chaos: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(chaos::run(&opts)) {
        Ok(report) => {
            println!("{}", report.summary());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("edgesync-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: &[String]) -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let mut o = Options::new(exe, seed, 30);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let number = |v: &String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--nodes" => o.nodes = number(value()?)? as usize,
            "--seconds" => o.seconds = number(value()?)?,
            "--seed" => o.seed = number(value()?)?,
            "--clients" => o.clients = number(value()?)?.clamp(1, 16) as usize,
            "--converge-secs" => o.converge_max = Duration::from_secs(number(value()?)?),
            "--gateway" => o.exe = PathBuf::from(value()?),
            "--keep" => o.keep = true,
            "--verbose" => o.verbose = true,
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !(3..=5).contains(&o.nodes) {
        return Err("--nodes takes 3 to 5".into());
    }
    Ok(o)
}
