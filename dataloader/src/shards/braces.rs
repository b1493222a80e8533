//! Bash-style brace expansion, exactly as the Python `braceexpand` 0.1.7 package that
//! WebDataset and OpenCLIP use to expand shard patterns such as `data-{000000..000999}.tar`.
//!
//! The port follows the Python code step by step, quirks included: integer ranges keep the
//! zero padding of their bounds (`{07..10}` gives `07 08 09 10`), ranges may count down and
//! take a step (`{a..g..2}`), comma lists and groups nest, a group that is neither a range nor
//! a list stays literal (`{a}`), a backslash escapes the next character, and unbalanced braces
//! are an error.

use std::cell::Cell;

use crate::DataError;

/// Every string built while expanding one pattern, intermediate ones included, is charged here:
/// nested groups expand inside-out, so the final limits alone would not bound the work.
struct Budget<'a> {
    whole: &'a str,
    names: Cell<usize>,
    bytes: Cell<usize>,
}

impl Budget<'_> {
    /// Charges `names` strings of `bytes` bytes in all.
    fn charge(&self, names: usize, bytes: usize) -> Result<(), DataError> {
        self.names.set(self.names.get().saturating_add(names));
        self.bytes.set(self.bytes.get().saturating_add(bytes));
        if self.names.get() > WORK_FACTOR * MAX_EXPANSION {
            return Err(too_many(self.whole));
        }
        if self.bytes.get() > WORK_FACTOR * MAX_EXPANSION_BYTES {
            return Err(too_long(self.whole));
        }
        Ok(())
    }
}

/// The strings built on the way may total this many times the limits on the result.
const WORK_FACTOR: usize = 2;

/// The largest number of strings one pattern may expand to; larger ones are refused. (The
/// largest public image–text sets, such as DataComp's 12.8 billion pairs in shards of 10,000,
/// have about 1.3 million shards.)
pub const MAX_EXPANSION: usize = 2_000_000;
/// The largest total length, in bytes, of the strings one pattern may expand to.
pub const MAX_EXPANSION_BYTES: usize = 128 << 20;

const ALPHABET: &[u8; 52] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Expands `pattern` into every string it denotes, in `braceexpand`'s order (the first
/// group varies slowest).
///
/// # Errors
/// [`DataError::ShardPattern`] naming the pattern when its braces are unbalanced, a range
/// bound is too large, or the expansion exceeds [`MAX_EXPANSION`] strings or
/// [`MAX_EXPANSION_BYTES`] bytes.
pub fn brace_expand(pattern: &str) -> Result<Vec<String>, DataError> {
    let chars: Vec<char> = pattern.chars().collect();
    let budget = Budget { whole: pattern, names: Cell::new(0), bytes: Cell::new(0) };
    let raw = expand_pattern(&chars, &budget)?;
    Ok(raw.into_iter().map(|s| if s.contains('\\') { unescape(&s) } else { s }).collect())
}

fn pattern_error(pattern: &str, reason: impl Into<String>) -> DataError {
    DataError::ShardPattern { pattern: pattern.to_owned(), reason: reason.into() }
}

pub(crate) fn too_many(pattern: &str) -> DataError {
    pattern_error(
        pattern,
        format!("expands to more than {MAX_EXPANSION} names; split the dataset into sources joined with ::"),
    )
}

pub(crate) fn too_long(pattern: &str) -> DataError {
    pattern_error(pattern, format!("expands to more than {} MiB of names", MAX_EXPANSION_BYTES >> 20))
}

/// `parse_pattern`: literals and brace groups, combined as a Cartesian product.
fn expand_pattern(p: &[char], b: &Budget<'_>) -> Result<Vec<String>, DataError> {
    let (mut start, mut pos, mut depth) = (0usize, 0usize, 0i64);
    let mut items: Vec<Vec<String>> = Vec::new();
    while pos < p.len() {
        match p[pos] {
            '\\' => {
                pos += 2;
                continue;
            }
            '{' => {
                if depth == 0 && pos > start {
                    items.push(vec![p[start..pos].iter().collect()]);
                    start = pos;
                }
                depth += 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    let expr = &p[(start + 1).min(pos)..pos];
                    match expand_expression(expr, b)? {
                        Some(values) => items.push(values),
                        None => {
                            items.push(vec!["{".to_owned()]);
                            items.push(expand_pattern(expr, b)?);
                            items.push(vec!["}".to_owned()]);
                        }
                    }
                    start = pos + 1;
                }
            }
            _ => {}
        }
        pos += 1;
    }
    if depth != 0 {
        return Err(pattern_error(b.whole, "unbalanced braces"));
    }
    if start < pos && start < p.len() {
        items.push(vec![p[start..].iter().collect()]);
    }
    product(&items, b)
}

/// Every concatenation of one string from each item, the first item varying slowest.
fn product(items: &[Vec<String>], b: &Budget<'_>) -> Result<Vec<String>, DataError> {
    let mut total: usize = 1;
    for item in items {
        total = total.saturating_mul(item.len());
    }
    if total > MAX_EXPANSION {
        return Err(too_many(b.whole));
    }
    // Each string of item i appears in total / len(i) of the results.
    let bytes = items
        .iter()
        .filter(|item| !item.is_empty())
        .map(|item| (item.iter().map(String::len).sum::<usize>() as u128) * (total / item.len()) as u128)
        .fold(0u128, u128::saturating_add);
    if bytes > MAX_EXPANSION_BYTES as u128 {
        return Err(too_long(b.whole));
    }
    b.charge(total, bytes as usize)?;
    let mut out = vec![String::new()];
    for item in items {
        let mut next = Vec::with_capacity(out.len() * item.len());
        for prefix in &out {
            for value in item {
                next.push(format!("{prefix}{value}"));
            }
        }
        out = next;
    }
    Ok(out)
}

/// `parse_expression`: an integer range, a letter range, or a comma list; `None` otherwise.
fn expand_expression(expr: &[char], b: &Budget<'_>) -> Result<Option<Vec<String>>, DataError> {
    let text: String = expr.iter().collect();
    if let Some((lo, hi, step)) = split_range(&text) {
        if is_int(lo) && is_int(hi) {
            return int_range(lo, hi, step, b).map(Some);
        }
        if is_letter(lo) && is_letter(hi) {
            return Ok(Some(char_range(lo, hi, step)));
        }
    }
    expand_sequence(expr, b)
}

/// Splits `lo..hi` or `lo..hi..step` (the step may carry a `-`, which is ignored).
fn split_range(text: &str) -> Option<(&str, &str, usize)> {
    let parts: Vec<&str> = text.split("..").collect();
    let step = match parts.len() {
        2 => 1,
        3 => {
            let digits = parts[2].strip_prefix('-').unwrap_or(parts[2]);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            // `int(step) or 1`: a zero step means 1; a huge one yields just the first value.
            match digits.trim_start_matches('0') {
                "" => 1,
                d => d.parse::<usize>().unwrap_or(usize::MAX),
            }
        }
        _ => return None,
    };
    Some((parts[0], parts[1], step))
}

fn is_int(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_letter(s: &str) -> bool {
    s.len() == 1 && s.bytes().all(|b| b.is_ascii_alphabetic())
}

fn int_range(lo: &str, hi: &str, step: usize, budget: &Budget<'_>) -> Result<Vec<String>, DataError> {
    let padded = [lo, hi].iter().any(|s| *s != "0" && *s != "-0" && (s.starts_with('0') || s.starts_with("-0")));
    let width = if padded { lo.len().max(hi.len()) } else { 0 };
    let parse =
        |s: &str| s.parse::<i128>().map_err(|_| pattern_error(budget.whole, format!("range bound {s} is too large")));
    let (a, b) = (parse(lo)?, parse(hi)?);
    let count = (a.abs_diff(b) / step as u128).saturating_add(1);
    if count > MAX_EXPANSION as u128 {
        return Err(too_many(budget.whole));
    }
    budget.charge(count as usize, count as usize * (lo.len().max(hi.len()).max(width) + 1))?;
    let step = step as i128;
    let values = (0..count as i128).map(|i| if a < b { a + i * step } else { a - i * step });
    Ok(values.map(|v| format!("{v:0width$}")).collect())
}

fn char_range(lo: &str, hi: &str, step: usize) -> Vec<String> {
    let index = |s: &str| ALPHABET.iter().position(|c| s.as_bytes().first() == Some(c));
    let (Some(a), Some(b)) = (index(lo), index(hi)) else {
        return Vec::new();
    };
    let picked: Vec<usize> =
        if a < b { (a..=b).step_by(step).collect() } else { (b..=a).rev().step_by(step).collect() };
    picked.into_iter().map(|i| char::from(ALPHABET[i]).to_string()).collect()
}

/// `parse_sequence`: a comma list at depth 0, or `None` when there is no comma.
fn expand_sequence(seq: &[char], b: &Budget<'_>) -> Result<Option<Vec<String>>, DataError> {
    let (mut start, mut pos, mut depth) = (0usize, 0usize, 0i64);
    let mut out: Vec<String> = Vec::new();
    let mut found_comma = false;
    // The limits on the result, checked as each alternative is added (its bytes counted once).
    let mut bytes = 0usize;
    let mut add = |out: &mut Vec<String>, part: &[char]| -> Result<(), DataError> {
        let values = expand_pattern(part, b)?;
        bytes += values.iter().map(String::len).sum::<usize>();
        out.extend(values);
        if out.len() > MAX_EXPANSION {
            return Err(too_many(b.whole));
        }
        if bytes > MAX_EXPANSION_BYTES {
            return Err(too_long(b.whole));
        }
        Ok(())
    };
    while pos < seq.len() {
        match seq[pos] {
            '\\' => {
                pos += 2;
                continue;
            }
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                add(&mut out, &seq[start..pos])?;
                found_comma = true;
                start = pos + 1;
            }
            _ => {}
        }
        pos += 1;
    }
    if depth != 0 || !found_comma {
        return Ok(None);
    }
    add(&mut out, &seq[start.min(seq.len())..])?;
    Ok(Some(out))
}

/// Removes the escaping backslashes, as `re.sub(r'\\(.)', r'\1', s)`.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('\\', Some(&next)) if next != '\n' => {
                out.push(next);
                chars.next();
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(p: &str) -> Vec<String> {
        brace_expand(p).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    #[test]
    fn docstring_examples_of_braceexpand() {
        assert_eq!(expand("item{1..3}"), ["item1", "item2", "item3"]);
        assert_eq!(expand("{a..c}"), ["a", "b", "c"]);
        assert_eq!(expand("index.html{,.backup}"), ["index.html", "index.html.backup"]);
        assert_eq!(
            expand("python{2.{5..7},3.{2,3}}"),
            ["python2.5", "python2.6", "python2.7", "python3.2", "python3.3"]
        );
        assert_eq!(expand("{07..10}"), ["07", "08", "09", "10"]);
        assert_eq!(expand("{a..g..2}"), ["a", "c", "e", "g"]);
        assert_eq!(expand("{4..1}"), ["4", "3", "2", "1"]);
        assert_eq!(expand("{2..-1}"), ["2", "1", "0", "-1"]);
        assert_eq!(expand(r"{1\{2,3}"), ["1{2", "3"]);
    }

    #[test]
    fn unbalanced_braces_name_the_pattern() {
        let err = brace_expand("{1{2,3}").expect_err("unbalanced");
        assert!(err.to_string().contains("{1{2,3}"), "{err}");
        assert!(err.to_string().contains("unbalanced"), "{err}");
    }

    #[test]
    fn huge_ranges_are_refused() {
        let err = brace_expand("{0..99999999999}").expect_err("too big");
        assert!(err.to_string().contains("more than"), "{err}");
    }
}
