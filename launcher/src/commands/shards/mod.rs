//! `clipfleet shards`: make datasets of shards and inspect them.

mod captions_file;
mod inspect;
mod make;

use crate::cli::ShardsCommand;

pub(crate) fn run(command: ShardsCommand) -> anyhow::Result<()> {
    match command {
        ShardsCommand::Make(args) => make::run(args),
        ShardsCommand::Inspect(args) => inspect::run(args),
    }
}
