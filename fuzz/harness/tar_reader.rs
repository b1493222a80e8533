//! Arbitrary bytes as a WebDataset tar shard, through `webdataset::TarSamples` (the streaming
//! tar reader and sample grouping) and `webdataset::to_pair` for every sample.
//!
//! Each input is read twice: as given, and (when at least one block long) with a valid header
//! checksum written into every 512-byte block, so that the fuzzer gets past the checksum check
//! and reaches the size, name, pax and GNU long-name parsing. The member size cap is the
//! library's default (64 MiB), so no allocation is larger than that, whatever a header says.

use clipfleet_dataloader::webdataset::{to_pair, CaptionSource, TarSamples};

const BLOCK: usize = 512;

fn read_shard(bytes: &[u8]) {
    let captions = [CaptionSource::Txt, CaptionSource::Json { field: "caption".to_string() }];
    let mut samples = TarSamples::new(bytes, "fuzz://shard.tar");
    let mut errors = 0;
    for item in samples.by_ref() {
        match item {
            Ok(sample) => {
                // A sample always has a key (possibly empty) and no duplicate extensions.
                for (i, (ext, _)) in sample.members.iter().enumerate() {
                    assert!(
                        !sample.members[..i].iter().any(|(e, _)| e == ext),
                        "duplicate extension {ext:?} in one sample"
                    );
                }
                for caption in &captions {
                    let _ = to_pair(sample.clone(), "fuzz://shard.tar", caption);
                }
            }
            Err(_) => errors += 1,
        }
    }
    // Documented: at most one `Err`, and it is the last item.
    assert!(errors <= 1, "{errors} errors from one shard");
    assert!(samples.next().is_none(), "iterator yielded again after its end");
    assert!(samples.offset() <= bytes.len() as u64, "offset past the end of the input");
}

/// Writes a valid (unsigned) ustar checksum into every 512-byte block.
fn fix_checksums(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for block in out.chunks_exact_mut(BLOCK) {
        if block.iter().all(|&b| b == 0) {
            continue; // keep end-of-archive blocks
        }
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        let field = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(field.as_bytes());
    }
    out
}

/// Runs one input; panics on a finding.
pub(crate) fn run(data: &[u8]) {
    read_shard(data);
    if data.len() >= BLOCK {
        read_shard(&fix_checksums(data));
    }
}
