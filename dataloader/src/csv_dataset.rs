//! CSV (or TSV) datasets, as OpenCLIP's `--dataset-type csv` reads them: a header row, an image
//! path column (`--csv-img-key`, default `filepath`) and a caption column (`--csv-caption-key`,
//! default `title`), separated by `--csv-separator` (default a tab). Fields may be quoted
//! (`"a, b"`, `""` for a quote, line breaks inside quotes), as pandas reads them.
//!
//! A CSV file is read like a shard whose samples are its rows: each row is one sample position.
//! The image files are read by the decode threads, not by the partition reader, so a partition
//! that starts in the middle of a CSV passes over the rows before it without touching their
//! images. A relative image path is taken relative to the CSV's folder, and, when no such file
//! exists there, relative to the working directory (where OpenCLIP resolves it).

use std::path::{Path, PathBuf};

use crate::DataError;

/// Which CSV columns hold the image path and the caption, and what separates fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvColumns {
    /// The image path column (OpenCLIP's `--csv-img-key`).
    pub image: String,
    /// The caption column (OpenCLIP's `--csv-caption-key`).
    pub caption: String,
    /// The field separator (OpenCLIP's `--csv-separator`).
    pub separator: char,
}

impl Default for CsvColumns {
    fn default() -> Self {
        CsvColumns { image: "filepath".into(), caption: "title".into(), separator: '\t' }
    }
}

/// Whether `url` names a CSV or TSV file (by its extension).
pub fn is_csv(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    path.ends_with(".csv") || path.ends_with(".tsv")
}

/// One row of a CSV dataset: where its image is, and its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvRow {
    /// The image path, resolved (see the [module docs](self)).
    pub image: PathBuf,
    /// The caption as written (possibly empty: the sample is then skipped).
    pub caption: String,
}

/// Splits `text` into records of fields (RFC 4180, with `sep`): quoted fields may hold `sep`,
/// line breaks and `""`. Blank lines are no records; a trailing `\r` is dropped.
pub fn parse_records(text: &str, sep: char) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record: Vec<String> = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let end_record = |record: &mut Vec<String>, field: &mut String, records: &mut Vec<Vec<String>>| {
        record.push(std::mem::take(field));
        let r = std::mem::take(record);
        if !(r.len() == 1 && r[0].trim().is_empty()) {
            records.push(r);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            '"' if quoted => quoted = false,
            '"' if field.is_empty() => quoted = true,
            c if quoted => field.push(c),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => end_record(&mut record, &mut field, &mut records),
            c if c == sep => record.push(std::mem::take(&mut field)),
            c => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        end_record(&mut record, &mut field, &mut records);
    }
    records
}

/// The rows of a CSV dataset read from `url` (its bytes `bytes`).
///
/// # Errors
/// [`DataError::Schema`] naming the columns found when the header lacks the image or caption
/// column, or the file is not UTF-8.
pub fn read_rows(bytes: &[u8], url: &str, columns: &CsvColumns) -> Result<Vec<CsvRow>, DataError> {
    let schema = |reason: String| DataError::Schema { url: url.to_owned(), reason };
    let text = std::str::from_utf8(bytes).map_err(|e| schema(format!("not UTF-8 text: {e}")))?;
    let mut records = parse_records(text, columns.separator).into_iter();
    let header = records.next().unwrap_or_default();
    let find = |name: &str, flag: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            schema(format!(
                "no column `{name}` ({flag}) in the header {header:?}, split on {:?} (csv_separator)",
                columns.separator
            ))
        })
    };
    let image = find(&columns.image, "csv_img_key")?;
    let caption = find(&columns.caption, "csv_caption_key")?;
    let base = local_folder(url);
    Ok(records
        .map(|r| CsvRow {
            image: resolve(base.as_deref(), r.get(image).map(String::as_str).unwrap_or_default()),
            caption: r.get(caption).cloned().unwrap_or_default(),
        })
        .collect())
}

/// Rows of a CSV file with separator `sep` (records less the header), for the epoch length.
pub fn count_rows(bytes: &[u8], sep: char) -> u64 {
    let text = String::from_utf8_lossy(bytes);
    parse_records(&text, sep).len().saturating_sub(1) as u64
}

/// The local folder of a CSV given by path or `file://` URL.
fn local_folder(url: &str) -> Option<PathBuf> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return None;
    }
    Path::new(path).parent().map(Path::to_path_buf)
}

fn resolve(base: Option<&Path>, image: &str) -> PathBuf {
    let p = Path::new(image.trim());
    match base {
        Some(base) if p.is_relative() => {
            let beside = base.join(p);
            if beside.exists() || !p.exists() {
                beside
            } else {
                p.to_path_buf()
            }
        }
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_follow_rfc_4180() {
        let text = "filepath\ttitle\r\na.jpg\ta dog\n\n\"b\tc.jpg\"\t\"say \"\"hi\"\"\nto all\"\nd.png\t\n";
        let r = parse_records(text, '\t');
        assert_eq!(r.len(), 4);
        assert_eq!(r[1], ["a.jpg", "a dog"]);
        assert_eq!(r[2], ["b\tc.jpg", "say \"hi\"\nto all"]);
        assert_eq!(r[3], ["d.png", ""]);
        assert_eq!(count_rows(text.as_bytes(), '\t'), 3);
        let rows = read_rows(text.as_bytes(), "/data/x/train.tsv", &CsvColumns::default()).expect("rows");
        assert_eq!(rows[0].image, PathBuf::from("/data/x/a.jpg"));
        let err = read_rows(b"path,caption\na,b\n", "t.csv", &CsvColumns { separator: ',', ..CsvColumns::default() })
            .expect_err("no filepath column");
        assert!(err.to_string().contains("filepath") && err.to_string().contains("csv_img_key"), "{err}");
    }
}
