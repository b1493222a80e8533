//! Arbitrary bytes as an img2dataset Parquet shard, through `parquet_reader::ParquetShardReader`
//! (footer, schema check, column projection, row extraction) and `parquet_num_rows` (the
//! `status`-column count used for epoch lengths), both over an in-memory `ObjectStore`.
//!
//! The reader streams, so memory is bounded by one row group; a tiny file may still declare
//! millions of (null) rows, so at most `MAX_ROWS` rows are pulled per input to keep each run
//! short. `parquet_num_rows` reads the whole `status` column, so it only runs when the footer
//! declares at most `MAX_ROWS` rows.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use clipfleet_dataloader::parquet_reader::{parquet_num_rows, ParquetReadOptions, ParquetShardReader};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const MAX_ROWS: u64 = 100_000;
const URL: &str = "memory:///shard-000000.parquet";

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("tokio runtime"))
}

async fn read(data: &[u8]) {
    let path = Path::from("shard-000000.parquet");
    let memory = InMemory::new();
    memory.put(&path, PutPayload::from(Bytes::copy_from_slice(data))).await.expect("in-memory put");
    let store: Arc<dyn ObjectStore> = Arc::new(memory);

    let options = ParquetReadOptions::default();
    let Ok(mut reader) = ParquetShardReader::open(Arc::clone(&store), path.clone(), URL, &options).await else {
        return;
    };
    let _ = reader.projected_schema();
    let declared = reader.num_rows();
    let mut pulled = 0u64;
    while pulled < MAX_ROWS {
        match reader.next_row().await {
            Ok(Some(row)) => {
                pulled += 1;
                if let Ok(pair) = row {
                    // Documented: the caption is valid UTF-8 (a String) and not blank.
                    assert!(!pair.caption.trim().is_empty(), "blank caption returned as a pair");
                    assert_eq!(pair.image_format, "jpg");
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    assert!(reader.not_downloaded() <= reader.rows_read());
    if declared <= MAX_ROWS {
        let _ = parquet_num_rows(store, path, URL).await;
    }
}

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    runtime().block_on(read(data));
}
