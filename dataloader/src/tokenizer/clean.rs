//! OpenCLIP's `_clean_lower`: a port of the parts of `ftfy.fix_text` that
//! matter for captions, then `html.unescape` twice, whitespace collapsing and
//! lowercasing.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

/// Holds the compiled pattern the cleaning needs.
#[derive(Debug)]
pub(crate) struct Cleaner {
    /// ftfy's `ANSI_RE` (`\d` is any Unicode decimal digit, as in Python).
    terminal_escape: Regex,
}

impl Cleaner {
    pub(crate) fn new() -> Result<Self, regex::Error> {
        Ok(Self { terminal_escape: Regex::new(r"\x1b\[[\d;]*[a-zA-Z]")? })
    }

    /// `whitespace_clean(basic_clean(text)).lower()`.
    pub(crate) fn clean_lower(&self, text: &str) -> String {
        let fixed = self.fix_text(text);
        let once = html_unescape(&fixed);
        let twice = html_unescape(&once);
        let mut out = String::with_capacity(twice.len());
        for word in twice.split(is_python_space).filter(|w| !w.is_empty()) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(word);
        }
        out.to_lowercase()
    }

    /// `ftfy.fix_text` with the default config, minus `fix_encoding`.
    ///
    /// Like ftfy, works line by line (each segment keeps its `\n`), and
    /// stops unescaping HTML from the first line containing `<` onwards.
    fn fix_text(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut unescape = true;
        for segment in text.split_inclusive('\n') {
            unescape &= !segment.contains('<');
            out.push_str(&self.fix_segment(segment, unescape));
        }
        out
    }

    /// `ftfy.fix_and_explain`: applies the fixers until nothing changes.
    fn fix_segment(&self, segment: &str, unescape: bool) -> String {
        let mut text = segment.to_owned();
        loop {
            let step = if unescape { ftfy_unescape_html(&text) } else { Cow::Borrowed(text.as_str()) };
            let step = translate_chars(&step);
            let step = fix_line_breaks(&step);
            let step = self.remove_terminal_escapes(&step);
            let step = remove_control_chars(&step);
            let step = nfc(&step);
            if step == text {
                return text;
            }
            text = step.into_owned();
        }
    }

    fn remove_terminal_escapes<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if text.contains('\x1b') {
            self.terminal_escape.replace_all(text, "")
        } else {
            Cow::Borrowed(text)
        }
    }
}

/// Python's `str.isspace`: Unicode `White_Space` plus U+001C..=U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// ftfy's per-character fixers, composed in ftfy's order:
/// `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`,
/// `uncurl_quotes`.
fn translate_chars(text: &str) -> Cow<'_, str> {
    let changes = |c: char| {
        matches!(c, '\u{80}'..='\u{9f}' | '\u{3000}' | '\u{ff01}'..='\u{ffef}')
            || ligature(c).is_some()
            || uncurl(c) != c
    };
    if !text.chars().any(changes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        let c = windows_1252_c1(c);
        match ligature(c) {
            Some(expanded) => expanded.chars().for_each(|c| push_full_width_fixed(c, &mut out)),
            None => push_full_width_fixed(c, &mut out),
        }
    }
    Cow::Owned(out)
}

/// `fix_character_width` (NFKC of U+FF01..=U+FFEF, U+3000 -> space), then
/// `uncurl_quotes`.
fn push_full_width_fixed(c: char, out: &mut String) {
    match c {
        '\u{3000}' => out.push(' '),
        '\u{ff01}'..='\u{ffef}' => out.extend(std::iter::once(c).nfkc().map(uncurl)),
        _ => out.push(uncurl(c)),
    }
}

/// ftfy's `uncurl_quotes`.
fn uncurl(c: char) -> char {
    match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => '\'',
        '\u{201c}'..='\u{201f}' => '"',
        _ => c,
    }
}

/// ftfy's `LIGATURES` table.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// Windows-1252 reading of U+0080..=U+009F, with its five holes kept as
/// they are (ftfy's "sloppy-windows-1252", also Python's `html` table).
const WINDOWS_1252_C1: [char; 32] = [
    '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8d}', 'Ž', '\u{8f}', '\u{90}', '‘', '’',
    '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9d}', 'ž', 'Ÿ',
];

/// ftfy's `fix_c1_controls` for one character.
fn windows_1252_c1(c: char) -> char {
    match c {
        '\u{80}'..='\u{9f}' => WINDOWS_1252_C1[c as usize - 0x80],
        _ => c,
    }
}

/// ftfy's `fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 -> LF.
fn fix_line_breaks(text: &str) -> Cow<'_, str> {
    const BREAKS: [char; 4] = ['\r', '\u{2028}', '\u{2029}', '\u{85}'];
    if !text.contains(BREAKS) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.replace("\r\n", "\n").replace(BREAKS, "\n"))
}

/// ftfy's `remove_control_chars` (keeps tab, LF, form feed and CR).
fn remove_control_chars(text: &str) -> Cow<'_, str> {
    let is_control = |c: char| {
        matches!(
            c,
            '\0'..='\u{8}'
                | '\u{b}'
                | '\u{e}'..='\u{1f}'
                | '\u{7f}'
                | '\u{206a}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffc}'
        )
    };
    if text.contains(is_control) {
        Cow::Owned(text.chars().filter(|&c| !is_control(c)).collect())
    } else {
        Cow::Borrowed(text)
    }
}

fn nfc(text: &str) -> Cow<'_, str> {
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

/// ftfy's `unescape_html`: replaces `&#?[0-9A-Za-z]{1,24};` when it is a
/// known entity (or its upper-cased form) or a numeric reference.
fn ftfy_unescape_html(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let tables = EntityTables::get();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let hash = usize::from(after.starts_with('#'));
        let run = after[hash..].bytes().take_while(u8::is_ascii_alphanumeric).count();
        if !(1..=24).contains(&run) || !after[hash + run..].starts_with(';') {
            out.push('&');
            rest = after;
            continue;
        }
        let entity = &rest[amp..amp + hash + run + 2];
        let name = &after[..hash + run];
        if let Some(value) = tables.named.get(name).copied().or_else(|| tables.upper.get(name).map(String::as_str)) {
            out.push_str(value);
        } else if hash == 1 {
            let unescaped = html_unescape(entity);
            out.push_str(if unescaped.contains(';') { entity } else { &unescaped });
        } else {
            out.push_str(entity);
        }
        rest = &after[hash + run + 1..];
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Python's `html.unescape` (regex `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|
/// [^\t\n\f <&#;]{1,32};?)` and its replacement rules).
fn html_unescape(text: &str) -> Cow<'_, str> {
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let tables = EntityTables::get();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        match charref_len(after) {
            Some(len) => {
                replace_charref(&after[..len], tables, &mut out);
                rest = &after[len..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Byte length of the character reference starting right after a `&`.
fn charref_len(after: &str) -> Option<usize> {
    let bytes = after.as_bytes();
    let semicolon = |end: usize| end + usize::from(bytes.get(end) == Some(&b';'));
    if bytes.first() == Some(&b'#') {
        let digits = |start: usize, hex: bool| {
            bytes[start..].iter().take_while(|b| if hex { b.is_ascii_hexdigit() } else { b.is_ascii_digit() }).count()
        };
        let decimal = digits(1, false);
        if decimal > 0 {
            return Some(semicolon(1 + decimal));
        }
        if matches!(bytes.get(1), Some(b'x' | b'X')) {
            let hex = digits(2, true);
            if hex > 0 {
                return Some(semicolon(2 + hex));
            }
        }
        return None;
    }
    let len: usize = after
        .chars()
        .take_while(|c| !matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';'))
        .take(32)
        .map(char::len_utf8)
        .sum();
    (len > 0).then(|| semicolon(len))
}

/// Python's `html._replace_charref`; `reference` excludes the `&`.
fn replace_charref(reference: &str, tables: &EntityTables, out: &mut String) {
    if let Some(number) = reference.strip_prefix('#') {
        let number = number.strip_suffix(';').unwrap_or(number);
        let (digits, radix) = match number.strip_prefix(['x', 'X']) {
            Some(hex) => (hex, 16),
            None => (number, 10),
        };
        let code = digits
            .chars()
            .filter_map(|d| d.to_digit(radix))
            .fold(0u64, |acc, d| acc.saturating_mul(u64::from(radix)).saturating_add(u64::from(d)));
        match code {
            0 => out.push('\u{fffd}'),
            0x0d => out.push('\r'),
            0x80..=0x9f => out.push(WINDOWS_1252_C1[code as usize - 0x80]),
            0xd800..=0xdfff | 0x11_0000.. => out.push('\u{fffd}'),
            0x1..=0x8 | 0xb | 0xe..=0x1f | 0x7f | 0xfdd0..=0xfdef => {}
            _ if code & 0xfffe == 0xfffe => {}
            _ => out.extend(char::from_u32(code as u32)),
        }
        return;
    }
    if let Some(value) = tables.lookup_html5(reference) {
        out.push_str(value);
        return;
    }
    // The longest legacy (semicolon-less) name that prefixes the reference.
    let boundaries: Vec<usize> = reference.char_indices().map(|(i, _)| i).skip(2).collect();
    for &end in boundaries.iter().rev() {
        if let Some(value) = tables.legacy_value(&reference[..end]) {
            out.push_str(value);
            out.push_str(&reference[end..]);
            return;
        }
    }
    out.push('&');
    out.push_str(reference);
}

/// Named character references (a subset of Python's `html.entities.html5`).
#[derive(Debug)]
struct EntityTables {
    /// Name without `;` -> value, for every known name.
    named: HashMap<&'static str, &'static str>,
    /// Names also valid without `;` (`&amp`, `&copy`, ...).
    legacy: HashSet<&'static str>,
    /// ftfy's upper-cased forms of lower-case names (`EACUTE` -> `É`).
    upper: HashMap<String, String>,
}

impl EntityTables {
    fn get() -> &'static Self {
        static TABLES: OnceLock<EntityTables> = OnceLock::new();
        TABLES.get_or_init(|| {
            let mut tables = EntityTables {
                named: NAMED_ENTITIES.iter().copied().collect(),
                legacy: LEGACY_ENTITIES.split_whitespace().collect(),
                upper: HashMap::new(),
            };
            // ftfy adds `&NAME;` for a lower-case `name;` when Python's
            // `html.unescape` leaves `&NAME;` unchanged.
            let mut upper = HashMap::new();
            for (&name, &value) in &tables.named {
                let name_upper = name.to_uppercase();
                if name != name.to_lowercase() || !name_upper.is_ascii() {
                    continue;
                }
                let reference = format!("{name_upper};");
                let mut unescaped = String::new();
                replace_charref(&reference, &tables, &mut unescaped);
                if unescaped.strip_prefix('&') == Some(reference.as_str()) {
                    upper.insert(name_upper, value.to_uppercase());
                }
            }
            tables.upper = upper;
            tables
        })
    }

    /// `_html5[reference]`: `name;` for any name, bare `name` for legacy.
    fn lookup_html5(&self, reference: &str) -> Option<&'static str> {
        match reference.strip_suffix(';') {
            Some(name) => self.named.get(name).copied(),
            None => self.legacy_value(reference),
        }
    }

    fn legacy_value(&self, name: &str) -> Option<&'static str> {
        self.legacy.contains(name).then(|| self.named.get(name).copied()).flatten()
    }
}

/// Names that Python's `html.unescape` also accepts without `;`.
const LEGACY_ENTITIES: &str = "\
    Aacute aacute Acirc acirc acute AElig aelig Agrave agrave AMP amp Aring aring Atilde atilde \
    Auml auml brvbar Ccedil ccedil cedil cent COPY copy curren deg divide Eacute eacute Ecirc \
    ecirc Egrave egrave ETH eth Euml euml frac12 frac14 frac34 GT gt Iacute iacute Icirc icirc \
    iexcl Igrave igrave iquest Iuml iuml laquo LT lt macr micro middot nbsp not Ntilde ntilde \
    Oacute oacute Ocirc ocirc Ograve ograve ordf ordm Oslash oslash Otilde otilde Ouml ouml \
    para plusmn pound QUOT quot raquo REG reg sect shy sup1 sup2 sup3 szlig THORN thorn times \
    Uacute uacute Ucirc ucirc Ugrave ugrave uml Uuml uuml Yacute yacute yen yuml";

/// The HTML 4 entities plus `apos`, with HTML5's values (`html.entities.html5`).
#[rustfmt::skip]
const NAMED_ENTITIES: &[(&str, &str)] = &[
    ("Aacute", "Á"), ("aacute", "á"), ("Acirc", "Â"), ("acirc", "â"), ("acute", "\u{00b4}"),
    ("AElig", "Æ"), ("aelig", "æ"), ("Agrave", "À"), ("agrave", "à"), ("alefsym", "ℵ"),
    ("Alpha", "Α"), ("alpha", "α"), ("AMP", "&"), ("amp", "&"), ("and", "∧"), ("ang", "∠"),
    ("apos", "'"), ("Aring", "Å"), ("aring", "å"), ("asymp", "≈"), ("Atilde", "Ã"),
    ("atilde", "ã"), ("Auml", "Ä"), ("auml", "ä"), ("bdquo", "„"), ("Beta", "Β"), ("beta", "β"),
    ("brvbar", "¦"), ("bull", "•"), ("cap", "∩"), ("Ccedil", "Ç"), ("ccedil", "ç"),
    ("cedil", "\u{00b8}"), ("cent", "¢"), ("Chi", "Χ"), ("chi", "χ"), ("circ", "ˆ"),
    ("clubs", "♣"), ("cong", "≅"), ("COPY", "©"), ("copy", "©"), ("crarr", "↵"), ("cup", "∪"),
    ("curren", "¤"), ("Dagger", "‡"), ("dagger", "†"), ("dArr", "⇓"), ("darr", "↓"), ("deg", "°"),
    ("Delta", "Δ"), ("delta", "δ"), ("diams", "♦"), ("divide", "÷"), ("Eacute", "É"),
    ("eacute", "é"), ("Ecirc", "Ê"), ("ecirc", "ê"), ("Egrave", "È"), ("egrave", "è"),
    ("empty", "∅"), ("emsp", "\u{2003}"), ("ensp", "\u{2002}"), ("Epsilon", "Ε"), ("epsilon", "ε"),
    ("equiv", "≡"), ("Eta", "Η"), ("eta", "η"), ("ETH", "Ð"), ("eth", "ð"), ("Euml", "Ë"),
    ("euml", "ë"), ("euro", "€"), ("exist", "∃"), ("fnof", "ƒ"), ("forall", "∀"), ("frac12", "½"),
    ("frac14", "¼"), ("frac34", "¾"), ("frasl", "⁄"), ("Gamma", "Γ"), ("gamma", "γ"), ("ge", "≥"),
    ("GT", ">"), ("gt", ">"), ("hArr", "⇔"), ("harr", "↔"), ("hearts", "♥"), ("hellip", "…"),
    ("Iacute", "Í"), ("iacute", "í"), ("Icirc", "Î"), ("icirc", "î"), ("iexcl", "¡"),
    ("Igrave", "Ì"), ("igrave", "ì"), ("image", "ℑ"), ("infin", "∞"), ("int", "∫"), ("Iota", "Ι"),
    ("iota", "ι"), ("iquest", "¿"), ("isin", "∈"), ("Iuml", "Ï"), ("iuml", "ï"), ("Kappa", "Κ"),
    ("kappa", "κ"), ("Lambda", "Λ"), ("lambda", "λ"), ("lang", "⟨"), ("laquo", "«"), ("lArr", "⇐"),
    ("larr", "←"), ("lceil", "⌈"), ("ldquo", "“"), ("le", "≤"), ("lfloor", "⌊"), ("lowast", "∗"),
    ("loz", "◊"), ("lrm", "\u{200e}"), ("lsaquo", "‹"), ("lsquo", "‘"), ("LT", "<"), ("lt", "<"),
    ("macr", "\u{00af}"), ("mdash", "—"), ("micro", "µ"), ("middot", "·"), ("minus", "−"),
    ("Mu", "Μ"), ("mu", "μ"), ("nabla", "∇"), ("nbsp", "\u{00a0}"), ("ndash", "–"), ("ne", "≠"),
    ("ni", "∋"), ("not", "¬"), ("notin", "∉"), ("nsub", "⊄"), ("Ntilde", "Ñ"), ("ntilde", "ñ"),
    ("Nu", "Ν"), ("nu", "ν"), ("Oacute", "Ó"), ("oacute", "ó"), ("Ocirc", "Ô"), ("ocirc", "ô"),
    ("OElig", "Œ"), ("oelig", "œ"), ("Ograve", "Ò"), ("ograve", "ò"), ("oline", "‾"),
    ("Omega", "Ω"), ("omega", "ω"), ("Omicron", "Ο"), ("omicron", "ο"), ("oplus", "⊕"),
    ("or", "∨"), ("ordf", "ª"), ("ordm", "º"), ("Oslash", "Ø"), ("oslash", "ø"), ("Otilde", "Õ"),
    ("otilde", "õ"), ("otimes", "⊗"), ("Ouml", "Ö"), ("ouml", "ö"), ("para", "¶"), ("part", "∂"),
    ("permil", "‰"), ("perp", "⊥"), ("Phi", "Φ"), ("phi", "φ"), ("Pi", "Π"), ("pi", "π"),
    ("piv", "ϖ"), ("plusmn", "±"), ("pound", "£"), ("Prime", "″"), ("prime", "′"), ("prod", "∏"),
    ("prop", "∝"), ("Psi", "Ψ"), ("psi", "ψ"), ("QUOT", "\""), ("quot", "\""), ("radic", "√"),
    ("rang", "⟩"), ("raquo", "»"), ("rArr", "⇒"), ("rarr", "→"), ("rceil", "⌉"), ("rdquo", "”"),
    ("real", "ℜ"), ("REG", "®"), ("reg", "®"), ("rfloor", "⌋"), ("Rho", "Ρ"), ("rho", "ρ"),
    ("rlm", "\u{200f}"), ("rsaquo", "›"), ("rsquo", "’"), ("sbquo", "‚"), ("Scaron", "Š"),
    ("scaron", "š"), ("sdot", "⋅"), ("sect", "§"), ("shy", "\u{00ad}"), ("Sigma", "Σ"),
    ("sigma", "σ"), ("sigmaf", "ς"), ("sim", "∼"), ("spades", "♠"), ("sub", "⊂"), ("sube", "⊆"),
    ("sum", "∑"), ("sup", "⊃"), ("sup1", "¹"), ("sup2", "²"), ("sup3", "³"), ("supe", "⊇"),
    ("szlig", "ß"), ("Tau", "Τ"), ("tau", "τ"), ("there4", "∴"), ("Theta", "Θ"), ("theta", "θ"),
    ("thetasym", "ϑ"), ("thinsp", "\u{2009}"), ("THORN", "Þ"), ("thorn", "þ"),
    ("tilde", "\u{02dc}"), ("times", "×"), ("trade", "™"), ("Uacute", "Ú"), ("uacute", "ú"),
    ("uArr", "⇑"), ("uarr", "↑"), ("Ucirc", "Û"), ("ucirc", "û"), ("Ugrave", "Ù"), ("ugrave", "ù"),
    ("uml", "\u{00a8}"), ("upsih", "ϒ"), ("Upsilon", "Υ"), ("upsilon", "υ"), ("Uuml", "Ü"),
    ("uuml", "ü"), ("weierp", "℘"), ("Xi", "Ξ"), ("xi", "ξ"), ("Yacute", "Ý"), ("yacute", "ý"),
    ("yen", "¥"), ("Yuml", "Ÿ"), ("yuml", "ÿ"), ("Zeta", "Ζ"), ("zeta", "ζ"), ("zwj", "\u{200d}"),
    ("zwnj", "\u{200c}"),
];
