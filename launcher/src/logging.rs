//! Logging set-up: tracing to stderr, human-readable or JSON lines, drawn around the
//! progress bar so that the two never interleave.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Writes log lines to stderr, suspending the progress bar while doing so.
#[derive(Clone)]
struct SuspendingStderr {
    bar: ProgressBar,
}

struct LineWriter {
    bar: ProgressBar,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.bar.suspend(|| {
            let _ = std::io::stderr().write_all(&buf);
        });
    }
}

impl<'a> MakeWriter<'a> for SuspendingStderr {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { bar: self.bar.clone(), buf: Vec::new() }
    }
}

/// Installs the global subscriber and returns the progress bar (hidden unless stderr is a
/// terminal and the format is human). `RUST_LOG` overrides the default `info` filter.
pub(crate) fn init(format: LogFormat) -> ProgressBar {
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let bar = if !json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} steps {elapsed_precise} ETA {eta} {msg}")
        {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = SuspendingStderr { bar: bar.clone() };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    if json {
        builder.json().with_current_span(true).with_span_list(false).init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).with_target(false).init();
    }
    bar
}
