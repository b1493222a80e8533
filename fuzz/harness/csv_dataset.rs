//! Arbitrary bytes through the CSV/TSV dataset reader: `csv_dataset::parse_records` (RFC 4180
//! splitting), `count_rows` and `read_rows` (header lookup and row extraction).
//!
//! The first byte picks the separator (tab, comma, `|` or `;`); the rest is the file. `read_rows`
//! gets a non-local URL so that it never looks at the file system to resolve image paths.

use clipfleet_dataloader::csv_dataset::{count_rows, parse_records, read_rows, CsvColumns};

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let sep = ['\t', ',', '|', ';'][usize::from(mode & 3)];
    let text = String::from_utf8_lossy(bytes);
    let records = parse_records(&text, sep);
    // Documented: blank lines are no records.
    assert!(records.iter().all(|r| !(r.len() == 1 && r[0].trim().is_empty())), "a blank record");
    let rows = count_rows(bytes, sep);
    assert_eq!(rows, records.len().saturating_sub(1) as u64, "count_rows disagrees with parse_records");
    let columns = CsvColumns { separator: sep, ..CsvColumns::default() };
    if let Ok(rows_read) = read_rows(bytes, "s3://bucket/train.csv", &columns) {
        assert_eq!(rows_read.len() as u64, rows, "read_rows and count_rows disagree");
    }
}
