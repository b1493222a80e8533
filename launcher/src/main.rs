//! `clipfleet-core`: the worker binary behind the `clipfleet` front end. It parses the
//! command line and dispatches to the library crates, which hold all the logic.

mod cli;
mod commands;
mod logging;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let bar = logging::init(cli.log_format);
    // Every log line carries the rank, as the worker derives it from its environment
    // (torchrun's RANK, mpirun, Slurm, Kubernetes; 0 for a single process).
    let rank = clipfleet_trainer::dist::env::detect(&std::env::vars().collect()).map(|w| w.rank).unwrap_or(0);
    // The launcher is no worker: its lines carry no rank.
    let is_launch = matches!(cli.command, cli::Command::Launch(_));
    let _span = (!is_launch).then(|| tracing::info_span!("worker", rank).entered());
    let result = match cli.command {
        // A run stopped on request exits 75 ("checkpointed, requeue me").
        cli::Command::Train(args) => match commands::train::run(*args, bar) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
        cli::Command::Eval(args) => commands::eval::run(args),
        cli::Command::Embed(args) => commands::embed::run(args),
        cli::Command::Mim(args) => commands::mim::run(args),
        cli::Command::Caption(args) => commands::caption::run(args),
        cli::Command::Bench(cli::BenchCommand::Train(args)) => commands::bench::train(args),
        cli::Command::Bench(cli::BenchCommand::Data(args)) => commands::bench::data::run(args),
        cli::Command::Bench(cli::BenchCommand::Loss(args)) => commands::bench::loss::run(args),
        cli::Command::Tokenize(args) => commands::tokenize::run(args),
        cli::Command::Shards(command) => commands::shards::run(command),
        // The launcher exits with its workers' status, not just 0 or 1.
        cli::Command::Launch(args) => match commands::launch::run(args) {
            Ok(code) => return code,
            Err(err) => Err(err),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (e.g. `| head`) is not a failure.
            if err
                .chain()
                .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe))
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            if !is_launch {
                // Tells `clipfleet launch`, when it started this worker, why it failed.
                let message = err.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ");
                clipfleet_trainer::dist::error_file::record(rank, &message);
            }
            ExitCode::FAILURE
        }
    }
}
