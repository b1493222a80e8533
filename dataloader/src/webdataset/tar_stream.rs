//! A forward-only tar reader: one member at a time from any `Read`, never seeking and
//! never holding more than one member in memory.
//!
//! It follows Python's `tarfile` in stream mode (`r|`), which is what the `webdataset`
//! package reads with: ustar names with their `prefix`, GNU long names (`L`), pax `path`
//! and `size` records (`x`, and `g` for all later members), octal or base-256 sizes,
//! both checksum conventions, and data of non-regular entries ignored. It is stricter
//! than Python at the end: a stream must end with the zero block that closes every tar
//! (Python's `tarfile` stops silently at a short or invalid header, so a shard cut at a
//! member boundary would pass unnoticed).

use std::collections::HashMap;
use std::io::{self, BufReader, Read};

/// One tar block.
const BLOCK: u64 = 512;

/// A regular member, with its data or, past the size cap, only its size.
#[derive(Debug)]
pub(crate) struct Member {
    /// The member's path as Python's `tarfile` reports it (pax or GNU long names applied).
    pub(crate) name: String,
    /// The member's bytes, or `None` when it was larger than the cap and was skipped.
    pub(crate) data: Option<Vec<u8>>,
}

/// Why a tar stream could not be read to its end.
#[derive(Debug)]
pub(crate) enum TarError {
    /// The stream ended early, or holds bytes that are not a tar header.
    Truncated(String),
    /// The underlying reader failed with an error other than an early end.
    Io(io::Error),
}

/// The members of a tar stream, read in order.
#[derive(Debug)]
pub(crate) struct TarStream<R: Read> {
    inner: BufReader<R>,
    /// Bytes consumed so far (the offset of the next header, between members).
    offset: u64,
    /// Members larger than this are skipped, not read into memory.
    max_member_bytes: u64,
    /// pax records from `g` headers, applied to every later member.
    global_pax: HashMap<String, String>,
}

/// A parsed header block.
struct Header {
    name: String,
    size: u64,
    kind: u8,
}

impl<R: Read> TarStream<R> {
    /// Reads members from `reader`; members over `max_member_bytes` are skipped.
    pub(crate) fn new(reader: R, max_member_bytes: u64) -> Self {
        TarStream {
            inner: BufReader::with_capacity(64 * 1024, reader),
            offset: 0,
            max_member_bytes,
            global_pax: HashMap::new(),
        }
    }

    /// Bytes consumed from the stream so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The next regular member, `Ok(None)` at the end-of-archive block. Directories,
    /// links, devices and other non-regular entries are skipped.
    pub(crate) fn next_member(&mut self) -> Result<Option<Member>, TarError> {
        let mut long_name: Option<String> = None;
        let mut pax: HashMap<String, String> = HashMap::new();
        loop {
            let Some(header) = self.read_header()? else {
                return Ok(None);
            };
            let pax_size = pax.get("size").or_else(|| self.global_pax.get("size"));
            let size = match pax_size {
                Some(s) if !matches!(header.kind, b'L' | b'K' | b'x' | b'g') => {
                    s.trim().parse::<u64>().map_err(|_| self.bad(format!("pax size {s:?}")))?
                }
                _ => header.size,
            };
            match header.kind {
                // GNU long name: the data is the next member's name.
                b'L' => {
                    let data = self.read_meta(size)?;
                    long_name = Some(nts(&data));
                }
                // GNU long link name: not needed.
                b'K' => {
                    self.skip_data(size)?;
                }
                b'x' | b'g' => {
                    let data = self.read_meta(size)?;
                    let records = parse_pax(&data).ok_or_else(|| self.bad("malformed pax header".into()))?;
                    if header.kind == b'g' {
                        self.global_pax.extend(records);
                    } else {
                        pax.extend(records);
                    }
                }
                // Regular files (`0`, old-style NUL, contiguous `7`).
                b'0' | 0 | b'7' => {
                    let name = pax
                        .get("path")
                        .or_else(|| self.global_pax.get("path"))
                        .cloned()
                        .or(long_name)
                        .unwrap_or(header.name);
                    let data = if size > self.max_member_bytes {
                        self.skip_data(size)?;
                        None
                    } else {
                        Some(self.read_data(size)?)
                    };
                    return Ok(Some(Member { name, data }));
                }
                // Links, directories, devices and FIFOs carry no data, whatever their
                // size field says (Python's `tarfile` ignores it too).
                b'1'..=b'6' => {
                    self.skip_data(0)?;
                    long_name = None;
                    pax.clear();
                }
                // Anything else (GNU sparse, volume labels, ...) is skipped with its data.
                _ => {
                    self.skip_data(size)?;
                    long_name = None;
                    pax.clear();
                }
            }
        }
    }

    fn bad(&self, what: String) -> TarError {
        TarError::Truncated(format!("invalid tar header at byte {}: {what}", self.offset))
    }

    /// Reads exactly `buf.len()` bytes; an early end is `Truncated`.
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<(), TarError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                Err(TarError::Truncated(format!("stream ended inside {what} after byte {}", self.offset)))
            }
            Err(e) => Err(TarError::Io(e)),
        }
    }

    /// Reads one header block; `None` for the zero block that ends the archive.
    fn read_header(&mut self) -> Result<Option<Header>, TarError> {
        let mut block = [0u8; BLOCK as usize];
        let at = self.offset;
        match self.inner.read(&mut block[..1]) {
            Ok(0) => {
                return Err(TarError::Truncated(format!("stream ended at byte {at} without the end-of-archive block")))
            }
            Ok(_) => self.offset += 1,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return self.read_header(),
            Err(e) => return Err(TarError::Io(e)),
        }
        self.fill(&mut block[1..], "a header")?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let stored = parse_number(&block[148..156]).ok_or_else(|| self.bad("checksum field".into()))?;
        let (unsigned, signed) = checksums(&block);
        if stored != unsigned && i64::try_from(stored).ok() != Some(signed) {
            return Err(TarError::Truncated(format!("not a tar header at byte {at} (bad checksum)")));
        }
        let size = parse_number(&block[124..136]).ok_or_else(|| self.bad("size field".into()))?;
        let mut name = nts(&block[0..100]);
        let prefix = nts(&block[345..500]);
        // An old-style regular file whose name ends with a slash is a directory.
        let kind = if block[156] == 0 && name.ends_with('/') { b'5' } else { block[156] };
        if kind == b'5' {
            name = name.trim_end_matches('/').to_string();
        }
        if !prefix.is_empty() && !matches!(kind, b'L' | b'K' | b'S') {
            name = format!("{prefix}/{name}");
        }
        Ok(Some(Header { name, size, kind }))
    }

    /// Reads a member's data and the padding to the next block.
    fn read_data(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        let len = usize::try_from(size).map_err(|_| self.bad(format!("size {size}")))?;
        let mut data = vec![0u8; len];
        self.fill(&mut data, "a member's data")?;
        self.skip_exact(padding(size), "a member's padding")?;
        Ok(data)
    }

    /// Reads a pax or GNU long-name record (capped like members, as its size is input).
    fn read_meta(&mut self, size: u64) -> Result<Vec<u8>, TarError> {
        if size > self.max_member_bytes.min(1 << 20) {
            return Err(self.bad(format!("extended header of {size} bytes")));
        }
        self.read_data(size)
    }

    /// Skips a member's data and its padding without keeping it.
    fn skip_data(&mut self, size: u64) -> Result<(), TarError> {
        // A size field near 2⁶⁴ (base-256) overflows with its padding: no stream is that long.
        let Some(n) = size.checked_add(padding(size)) else {
            return Err(self.bad(format!("member size of {size} bytes")));
        };
        self.skip_exact(n, "a member's data")
    }

    fn skip_exact(&mut self, n: u64, what: &str) -> Result<(), TarError> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(TarError::Io)?;
        self.offset += copied;
        if copied < n {
            return Err(TarError::Truncated(format!("stream ended inside {what} at byte {}", self.offset)));
        }
        Ok(())
    }
}

/// Bytes of zero padding after `size` bytes of data.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// A NUL-terminated header string, decoded as UTF-8 (invalid bytes replaced).
fn nts(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// A numeric header field: octal text, or GNU base-256 when the first byte is 0x80/0xff.
fn parse_number(field: &[u8]) -> Option<u64> {
    match field.first() {
        Some(0x80) => field[1..].iter().try_fold(0u64, |n, &b| n.checked_mul(256)?.checked_add(u64::from(b))),
        Some(0xff) => None,
        _ => {
            let text = nts(field);
            let text = text.trim_matches(|c: char| c == ' ' || c == '\0');
            if text.is_empty() {
                Some(0)
            } else {
                u64::from_str_radix(text, 8).ok()
            }
        }
    }
}

/// The header checksum with the checksum field read as spaces, unsigned and signed.
fn checksums(block: &[u8; BLOCK as usize]) -> (u64, i64) {
    let mut unsigned = 0u64;
    let mut signed = 0i64;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    (unsigned, signed)
}

/// Parses pax records `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8]) -> Option<HashMap<String, String>> {
    let mut records = HashMap::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..space]).ok()?.parse().ok()?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return None;
        }
        let record = &data[space + 1..len - 1];
        let eq = record.iter().position(|&b| b == b'=')?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        let value = String::from_utf8_lossy(&record[eq + 1..]).into_owned();
        records.insert(key, value);
        data = &data[len..];
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  17 \0\0\0"), Some(0o17));
        assert_eq!(parse_number(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_number(&[0x80, 0, 0, 1, 2]), Some(258));
        assert_eq!(parse_number(b"12x4"), None);
    }

    #[test]
    fn pax_records() {
        let r = parse_pax(b"18 path=a/b/c.jpg\n10 size=7\n").expect("valid pax");
        assert_eq!(r["path"], "a/b/c.jpg");
        assert_eq!(r["size"], "7");
        assert!(parse_pax(b"99 path=x\n").is_none());
    }

    #[test]
    fn empty_stream_is_truncated() {
        let mut t = TarStream::new(&b""[..], 1 << 20);
        assert!(matches!(t.next_member(), Err(TarError::Truncated(_))));
    }
}
