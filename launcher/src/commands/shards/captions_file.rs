//! Reading a CC3M-style captions file: a CSV or TSV whose header names `filepath` and
//! `caption` columns (in any order, among others).

use std::io::BufRead;
use std::path::Path;

use anyhow::{bail, Context};

/// One row of the captions file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CaptionRow {
    /// 1-based line number in the file, for errors.
    pub(super) line: usize,
    /// The image path, relative to the images folder.
    pub(super) filepath: String,
    /// The caption (non-empty after trimming).
    pub(super) caption: String,
}

/// Reads every row of `path`: `.tsv`/`.txt` split on tabs (no quoting), anything else as
/// CSV (RFC 4180 quoting, one record per line). Errors name the file and line.
pub(super) fn read(path: &Path) -> anyhow::Result<Vec<CaptionRow>> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let tsv = matches!(ext.as_deref(), Some("tsv" | "txt"));
    let file = std::fs::File::open(path).with_context(|| format!("opening captions file {}", path.display()))?;
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let split = |text: &str, line: usize| -> anyhow::Result<Vec<String>> {
        if tsv {
            Ok(text.split('\t').map(str::to_string).collect())
        } else {
            split_csv(text).with_context(|| format!("{}:{line}: malformed CSV row", path.display()))
        }
    };
    let Some((_, header)) = lines.next() else {
        bail!("{}: empty captions file (expected a header with `filepath` and `caption`)", path.display());
    };
    let header = header.with_context(|| format!("{}:1: unreadable", path.display()))?;
    let header = split(header.trim_start_matches('\u{feff}').trim_end_matches('\r'), 1)?;
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).with_context(|| {
            format!(
                "{}:1: header {header:?} has no `{name}` column (expected `filepath` and `caption`)",
                path.display()
            )
        })
    };
    let (file_col, caption_col) = (column("filepath")?, column("caption")?);
    let mut rows = Vec::new();
    for (index, text) in lines {
        let line = index + 1;
        let text = text.with_context(|| format!("{}:{line}: unreadable (not UTF-8?)", path.display()))?;
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            continue;
        }
        let fields = split(text, line)?;
        if fields.len() != header.len() {
            bail!("{}:{line}: {} fields, the header has {}", path.display(), fields.len(), header.len());
        }
        let filepath = fields[file_col].trim().to_string();
        let caption = fields[caption_col].trim().to_string();
        if filepath.is_empty() {
            bail!("{}:{line}: empty filepath", path.display());
        }
        if caption.is_empty() {
            bail!("{}:{line}: empty caption for {filepath}", path.display());
        }
        rows.push(CaptionRow { line, filepath, caption });
    }
    Ok(rows)
}

/// Splits one CSV record: fields separated by commas, optionally in double quotes with `""`
/// for a quote inside.
fn split_csv(text: &str) -> anyhow::Result<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                '"' => {
                    quoted = false;
                    if !matches!(chars.peek(), None | Some(',')) {
                        bail!("text after a closing quote");
                    }
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if at_start => {
                quoted = true;
                at_start = false;
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                at_start = true;
            }
            c => {
                field.push(c);
                at_start = false;
            }
        }
    }
    if quoted {
        bail!("unterminated quoted field (a caption spanning lines is not supported)");
    }
    fields.push(field);
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::split_csv;

    #[test]
    fn csv_quoting() {
        assert_eq!(split_csv("a.jpg,plain").expect("valid CSV"), ["a.jpg", "plain"]);
        assert_eq!(split_csv(r#"a.jpg,"one, two ""three""""#).expect("valid CSV"), ["a.jpg", r#"one, two "three""#]);
        assert_eq!(split_csv("a,,b").expect("valid CSV"), ["a", "", "b"]);
        assert!(split_csv(r#"a,"open"#).is_err());
        assert!(split_csv(r#"a,"x"y"#).is_err());
    }
}
