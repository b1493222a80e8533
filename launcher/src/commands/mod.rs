//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod embed;
pub(crate) mod eval;
pub(crate) mod launch;
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

/// `zero-shot top-1 x% top-5 y% over n classes (chance z%); `, or nothing without zero-shot.
pub(crate) fn zero_shot_text(e: &clipfleet_trainer::eval::EvalReport) -> String {
    match (e.zero_shot_top1, e.zero_shot_top5) {
        (Some(top1), Some(top5)) => format!(
            "zero-shot top-1 {:.1}% top-5 {:.1}% over {} classes (chance {:.1}%); ",
            100.0 * top1,
            100.0 * top5,
            e.num_classes,
            100.0 / e.num_classes.max(1) as f64
        ),
        _ => String::new(),
    }
}
