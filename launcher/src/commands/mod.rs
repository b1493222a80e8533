//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod caption;
pub(crate) mod embed;
pub(crate) mod eval;
pub(crate) mod launch;
pub(crate) mod mim;
pub(crate) mod shards;
pub(crate) mod tokenize;
pub(crate) mod train;

use std::io::Write;

/// Prints a value as one JSON line on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
