//! The reference table of every config key, as `docs/configuration.md` shows it, generated
//! from the keys' declarations so that the docs cannot drift from the code.

use super::{TrainConfig, KEYS};

/// The kind of value a Rust type holds, in TOML's words.
fn value_type(rust: &str) -> &'static str {
    match rust {
        "i64" | "u64" | "usize" | "u16" => "integer",
        "f64" => "float",
        "bool" => "bool",
        "PathBuf" => "path",
        _ => "string",
    }
}

/// The markdown table of every key: its TOML name, type, default, allowed values and meaning
/// (its doc), and its flag.
pub fn reference_table() -> String {
    let defaults = toml::Value::try_from(TrainConfig::default()).unwrap_or(toml::Value::Boolean(false));
    let mut out = String::from("| key | type | default | allowed values | flag |\n|---|---|---|---|---|\n");
    for (key, ty, doc) in KEYS {
        let default = match defaults.get(key) {
            Some(toml::Value::String(s)) => format!("`\"{s}\"`"),
            Some(v) => format!("`{v}`"),
            None => "unset".to_owned(),
        };
        let doc = doc.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        let doc = doc.replace('|', "\\|");
        let flag = key.replace('_', "-");
        out.push_str(&format!("| `{key}` | {} | {default} | {doc} | `--{flag}` |\n", value_type(ty)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEGIN: &str = "<!-- BEGIN generated: config keys (cargo test -p clipfleet-trainer config_reference) -->\n";
    const END: &str = "<!-- END generated: config keys -->";

    /// docs/configuration.md holds the generated table between its markers; with
    /// `CLIPFLEET_BLESS=1` the test rewrites it.
    #[test]
    fn config_reference_table_in_the_docs_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let table = reference_table();
        let (start, end) = match (text.find(BEGIN), text.find(END)) {
            (Some(s), Some(e)) => (s + BEGIN.len(), e),
            _ => panic!("{} lacks the markers {BEGIN:?} … {END:?}", path.display()),
        };
        if text[start..end] != table {
            if std::env::var_os("CLIPFLEET_BLESS").is_some() {
                std::fs::write(&path, format!("{}{table}{}", &text[..start], &text[end..])).unwrap();
            } else {
                panic!("docs/configuration.md's key table is stale: rerun with CLIPFLEET_BLESS=1");
            }
        }
    }

    #[test]
    fn every_key_has_a_doc() {
        for (key, _, doc) in KEYS {
            assert!(!doc.trim().is_empty(), "{key} has no doc");
        }
    }
}
