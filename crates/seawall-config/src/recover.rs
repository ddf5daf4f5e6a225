//! Reads as much of a broken file as can be read, so that `seawall check` lists every problem in
//! one run instead of one per run.
//!
//! serde stops at the first unknown key, mistyped value or missing key. Each time it does, the error
//! is recorded, the key (or array element) it names is overwritten with spaces in a copy of the
//! source, and the copy is read again. Newlines are kept, so every other byte keeps its offset, line
//! and column, and the spans the raw model carries still point into the user's file. `toml_edit`
//! finds the span of the key and value a serde path names. What is left when serde succeeds goes on
//! to validation; the errors of both stages are then sorted into file order.

use std::fmt::Write as _;
use std::ops::Range;

use serde_path_to_error::Segment;
use toml_edit::{Array, ArrayOfTables, ImDocument, InlineTable, Item, Key, Table, Value};

use crate::error::ConfigError;
use crate::raw::RawConfig;

/// Beyond this many, a file is most likely not a Seawall configuration at all, and a longer list
/// would only bury the first errors.
const MAX_ERRORS: usize = 100;

/// What serde could read of a file, and what it could not.
pub(crate) struct Reading {
    /// The raw model of what is left once every bad key is taken out; `None` after a syntax error
    /// or when there were too many errors to go on.
    pub raw: Option<RawConfig>,
    /// One error per key taken out, in the order they were found.
    pub errors: Vec<ConfigError>,
    /// Array elements taken out: the key path of the array and the element's index, both numbered
    /// as in the file. Later paths count elements in the shortened array and are mapped back.
    removed: Vec<(String, usize)>,
}

impl Reading {
    /// Adds the errors of validation, which numbered array elements after removals.
    pub fn add_validation_errors(&mut self, errors: Vec<ConfigError>) {
        for mut e in errors {
            e.key = renumber(&self.removed, &e.key);
            self.errors.push(e);
        }
    }
}

/// Reads `source` into the raw model, taking out each key serde refuses until the rest reads.
pub(crate) fn read(source: &str, file: &str) -> Reading {
    let mut reading = Reading { raw: None, errors: Vec::new(), removed: Vec::new() };
    let mut text = source.to_string();
    loop {
        let deserializer = toml::Deserializer::new(&text);
        let err = match serde_path_to_error::deserialize::<_, RawConfig>(deserializer) {
            Ok(raw) => {
                reading.raw = Some(raw);
                return reading;
            }
            Err(err) => err,
        };
        let path = segments(err.path());
        let inner = err.into_inner();
        let serde_offset = inner.span().map_or(0, |s| s.start);
        let Ok(doc) = ImDocument::parse(text.as_str()) else {
            // Invalid TOML: nothing after it can be read. Blanking whole keys and values keeps valid
            // TOML valid, so this only happens on the first round.
            if reading.errors.is_empty() {
                let message = inner.message().to_string();
                reading.errors.push(ConfigError::at(file, source, serde_offset, "", message));
            }
            return reading;
        };
        let (place, depth) = locate(doc.as_table(), &path);
        let key = renumber(&reading.removed, &render(&path));
        let unknown = inner.message().starts_with("unknown field `");
        let spans = if unknown {
            [place.key_span(), place.span()]
        } else {
            [place.span(), place.key_span()]
        };
        // A path that leads only part of the way names a parent; serde's own span is closer then.
        let offset = match spans.into_iter().flatten().next() {
            Some(span) if depth == path.len() => span.start,
            _ => serde_offset,
        };
        if reading.errors.len() >= MAX_ERRORS {
            let message = format!("stopped reading here after {MAX_ERRORS} errors");
            reading.errors.push(ConfigError::at(file, source, offset, &key, message));
            return reading;
        }
        let mut message = inner.message().to_string();
        if let Some(near) = unknown.then(|| suggestion(&message)).flatten() {
            let _ = write!(message, "; did you mean `{near}`?");
        }
        let error = ConfigError::at(file, source, offset, &key, message);
        if reading.errors.contains(&error) {
            // Taking the key out did not change what serde sees; going on would repeat it.
            return reading;
        }
        reading.errors.push(error);
        let mut bytes = text.as_bytes().to_vec();
        erase(&mut bytes, &place);
        if bytes == text.as_bytes() {
            return reading;
        }
        if let (true, Some(last)) = (is_element(&place), depth.checked_sub(1)) {
            if let Some(Step::Index(index)) = path.get(last) {
                let array = renumber(&reading.removed, &render(&path[..last]));
                let index = original_index(&reading.removed, &array, *index);
                reading.removed.push((array, index));
            }
        }
        drop(doc);
        text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => return reading,
        };
    }
}

/// The span of the last key of `path` where the file first spells it, e.g. `app` in
/// `[upstreams.app]`, for an error about a table that is missing a key.
pub(crate) fn key_span(source: &str, path: &[&str]) -> Option<Range<usize>> {
    let doc = ImDocument::parse(source).ok()?;
    let steps: Vec<Step> = path.iter().map(|k| Step::Key((*k).to_string())).collect();
    match locate(doc.as_table(), &steps) {
        (place, depth) if depth == steps.len() => place.key_span(),
        _ => None,
    }
}

/// Sorts errors by line then column (discovery order within one position) and drops repeats.
pub(crate) fn in_file_order(mut errors: Vec<ConfigError>) -> Vec<ConfigError> {
    errors.sort_by_key(|e| (e.line, e.column));
    let mut out: Vec<ConfigError> = Vec::with_capacity(errors.len());
    for e in errors {
        let mut same_place =
            out.iter().rev().take_while(|o| (o.line, o.column) == (e.line, e.column));
        if !same_place.any(|o| *o == e) {
            out.push(e);
        }
    }
    out
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// The steps of serde's path, without the ones `Spanned` adds (its value lives under a private key).
fn segments(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|s| match s {
            Segment::Map { key } if key.starts_with("$__serde_spanned_private") => None,
            Segment::Map { key } => Some(Step::Key(key.clone())),
            Segment::Seq { index } => Some(Step::Index(*index)),
            Segment::Enum { variant } => Some(Step::Key(variant.clone())),
            Segment::Unknown => Some(Step::Key("?".to_string())),
        })
        .collect()
}

/// `upstreams.app.servers[1]`, the form validation uses too.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Step::Index(i) => {
                let _ = write!(out, "[{i}]");
            }
        }
    }
    out
}

/// The index in the file of element `current` of `array` after the removals so far.
fn original_index(removed: &[(String, usize)], array: &str, current: usize) -> usize {
    let mut gone: Vec<usize> =
        removed.iter().filter(|(a, _)| a == array).map(|(_, i)| *i).collect();
    gone.sort_unstable();
    let mut index = current;
    for g in gone {
        if g <= index {
            index += 1;
        }
    }
    index
}

/// Maps every `[N]` of a key path from the shortened arrays back to the file's numbering.
fn renumber(removed: &[(String, usize)], key: &str) -> String {
    if removed.is_empty() {
        return key.to_string();
    }
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let inside = &rest[open + 1..];
        let Some(close) = inside.find(']') else {
            rest = &rest[open..];
            break;
        };
        match inside[..close].parse::<usize>() {
            Ok(index) => {
                let index = original_index(removed, &out, index);
                let _ = write!(out, "[{index}]");
            }
            Err(_) => out.push_str(&rest[open..open + close + 2]),
        }
        rest = &inside[close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where a key path leads in the document.
enum Place<'a> {
    /// The whole file: there is nothing to take out.
    Root,
    /// `key = value`, or a `[table]`, in a table.
    TableEntry(&'a Key, &'a Item),
    /// `key = value` between `{` and `}`.
    InlineEntry(&'a Key, &'a Item),
    /// One `[[table]]` of an array of tables.
    AotEntry(&'a Table),
    /// One element between `[` and `]`.
    Element(&'a Value),
}

impl Place<'_> {
    fn key_span(&self) -> Option<Range<usize>> {
        match self {
            Place::TableEntry(key, _) | Place::InlineEntry(key, _) => key.span(),
            _ => None,
        }
    }

    fn span(&self) -> Option<Range<usize>> {
        match self {
            Place::Root => None,
            Place::TableEntry(_, item) | Place::InlineEntry(_, item) => item.span(),
            Place::AotEntry(table) => table.span(),
            Place::Element(value) => value.span(),
        }
    }
}

fn is_element(place: &Place<'_>) -> bool {
    matches!(place, Place::AotEntry(_) | Place::Element(_))
}

/// What a step can go into.
enum Node<'a> {
    Table(&'a Table),
    Inline(&'a InlineTable),
    Tables(&'a ArrayOfTables),
    Array(&'a Array),
    Leaf,
}

fn item_node(item: &Item) -> Node<'_> {
    match item {
        Item::Table(t) => Node::Table(t),
        Item::ArrayOfTables(a) => Node::Tables(a),
        Item::Value(v) => value_node(v),
        Item::None => Node::Leaf,
    }
}

fn value_node(value: &Value) -> Node<'_> {
    match value {
        Value::InlineTable(t) => Node::Inline(t),
        Value::Array(a) => Node::Array(a),
        _ => Node::Leaf,
    }
}

/// Follows `path` as far as the document goes; returns the place reached and how many steps it
/// took.
fn locate<'a>(root: &'a Table, path: &[Step]) -> (Place<'a>, usize) {
    let mut place = Place::Root;
    let mut node = Node::Table(root);
    let mut depth = 0;
    for step in path {
        let next = match (step, &node) {
            (Step::Key(k), Node::Table(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (Place::TableEntry(key, item), item_node(item))),
            (Step::Key(k), Node::Inline(t)) => t
                .get_key_value(k)
                .map(|(key, item)| (Place::InlineEntry(key, item), item_node(item))),
            (Step::Index(i), Node::Tables(a)) => {
                a.get(*i).map(|t| (Place::AotEntry(t), Node::Table(t)))
            }
            (Step::Index(i), Node::Array(a)) => {
                a.get(*i).map(|v| (Place::Element(v), value_node(v)))
            }
            _ => None,
        };
        let Some((p, n)) = next else { break };
        place = p;
        node = n;
        depth += 1;
    }
    (place, depth)
}

/// Overwrites the place with spaces, with whatever else must go for the rest to stay valid TOML.
fn erase(buf: &mut [u8], place: &Place<'_>) {
    match place {
        Place::Root => {}
        Place::TableEntry(key, item) => erase_table_entry(buf, key, item),
        Place::InlineEntry(key, item) => erase_inline_entry(buf, key, item),
        Place::AotEntry(table) => erase_table(buf, table),
        Place::Element(value) => {
            if let Some(span) = value.span() {
                blank(buf, span.clone());
                drop_following_comma(buf, span.end);
            }
        }
    }
}

fn erase_table_entry(buf: &mut [u8], key: &Key, item: &Item) {
    match item {
        Item::None => {}
        Item::Value(value) => {
            if let (Some(k), Some(v)) = (key.span(), value.span()) {
                blank(buf, dotted_key_start(buf, k.start)..v.end);
            }
        }
        Item::Table(table) => erase_table(buf, table),
        Item::ArrayOfTables(tables) => tables.iter().for_each(|t| erase_table(buf, t)),
    }
}

fn erase_table(buf: &mut [u8], table: &Table) {
    // The span of a `[table]` covers its header and body; a dotted or implicit table has none.
    // Tables further down (`[a.b]` after `[a]`) and dotted keys are reached through the entries.
    if !table.is_dotted() {
        if let Some(span) = table.span() {
            blank(buf, span);
        }
    }
    for (name, _) in table.iter() {
        if let Some((key, item)) = table.get_key_value(name) {
            erase_table_entry(buf, key, item);
        }
    }
}

fn erase_inline_entry(buf: &mut [u8], key: &Key, item: &Item) {
    match item.as_value() {
        // `{ a.b = 1, a.c = 2 }`: `a` has no span of its own; each of its keys goes.
        Some(Value::InlineTable(table)) if table.is_dotted() => {
            for (name, _) in table.iter() {
                if let Some((key, item)) = table.get_key_value(name) {
                    erase_inline_entry(buf, key, item);
                }
            }
        }
        Some(value) => {
            if let (Some(k), Some(v)) = (key.span(), value.span()) {
                let span = dotted_key_start(buf, k.start)..v.end;
                blank(buf, span.clone());
                drop_inline_comma(buf, span);
            }
        }
        None => {}
    }
}

/// Spaces over `range`, newlines kept; widened to whole characters so the text stays UTF-8.
fn blank(buf: &mut [u8], range: Range<usize>) {
    let is_continuation = |b: u8| b & 0xC0 == 0x80;
    let mut start = range.start.min(buf.len());
    let mut end = range.end.min(buf.len());
    while start > 0 && start < buf.len() && is_continuation(buf[start]) {
        start -= 1;
    }
    while end < buf.len() && is_continuation(buf[end]) {
        end += 1;
    }
    for b in &mut buf[start..end] {
        if *b != b'\n' && *b != b'\r' {
            *b = b' ';
        }
    }
}

/// Where the whole key of `a.b.c = 1` starts, given where `c` starts: the document records only
/// the span of the last part, and leaving `a.b.` behind would be a syntax error.
fn dotted_key_start(buf: &[u8], leaf: usize) -> usize {
    let is_space = |b: u8| b == b' ' || b == b'\t';
    let is_bare = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'-';
    let mut start = leaf.min(buf.len());
    loop {
        let mut i = start;
        while i > 0 && is_space(buf[i - 1]) {
            i -= 1;
        }
        if i == 0 || buf[i - 1] != b'.' {
            return start;
        }
        i -= 1;
        while i > 0 && is_space(buf[i - 1]) {
            i -= 1;
        }
        match i.checked_sub(1).map(|j| buf[j]) {
            Some(quote @ (b'"' | b'\'')) => match buf[..i - 1].iter().rposition(|&b| b == quote) {
                Some(open) => i = open,
                None => return start,
            },
            Some(b) if is_bare(b) => {
                while i > 0 && is_bare(buf[i - 1]) {
                    i -= 1;
                }
            }
            _ => return start,
        }
        start = i;
    }
}

/// After an array element goes, the comma after it goes too (`[1, , 2]` is not TOML); comments and
/// newlines may stand between them.
fn drop_following_comma(buf: &mut [u8], mut i: usize) {
    while i < buf.len() {
        match buf[i] {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'#' => {
                while i < buf.len() && buf[i] != b'\n' {
                    i += 1;
                }
            }
            b',' => {
                buf[i] = b' ';
                return;
            }
            _ => return,
        }
    }
}

/// After `key = value` goes from an inline table, one comma next to it goes too: TOML allows
/// neither `{ , a = 1 }` nor `{ a = 1, }`.
fn drop_inline_comma(buf: &mut [u8], span: Range<usize>) {
    let is_space = |b: u8| b == b' ' || b == b'\t';
    let mut i = span.end;
    while i < buf.len() && is_space(buf[i]) {
        i += 1;
    }
    if buf.get(i) == Some(&b',') {
        buf[i] = b' ';
        return;
    }
    let mut i = span.start.min(buf.len());
    while i > 0 && is_space(buf[i - 1]) {
        i -= 1;
    }
    if i > 0 && buf[i - 1] == b',' {
        buf[i - 1] = b' ';
    }
}

/// The nearest expected key to an unknown one, from serde's "unknown field `x`, expected one of
/// `a`, `b`" (the expected keys are only known to serde's derived code, which writes them there).
fn suggestion(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let (_, expected) = rest.split_once("expected")?;
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|known| (edit_distance(unknown, known), known))
        .filter(|&(d, _)| d <= 2)
        .min_by_key(|&(d, _)| d)
        .map(|(_, known)| known.to_string())
}

/// Levenshtein distance in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_character_edits() {
        assert_eq!(edit_distance("timeout", "timeout"), 0);
        assert_eq!(edit_distance("timout", "timeout"), 1);
        assert_eq!(edit_distance("lisen", "listen"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn suggestion_picks_the_nearest_expected_key_within_two_edits() {
        let m = "unknown field `timout`, expected one of `timeout`, `read_timeout`";
        assert_eq!(suggestion(m).as_deref(), Some("timeout"));
        let m = "unknown field `wieght`, expected `address` or `weight`";
        assert_eq!(suggestion(m).as_deref(), Some("weight"));
        let m = "unknown field `retries`, expected `address` or `weight`";
        assert_eq!(suggestion(m), None);
    }

    #[test]
    fn renumber_maps_indices_back_past_removed_elements() {
        let removed = vec![("routes".to_string(), 1), ("routes[2].methods".to_string(), 0)];
        assert_eq!(renumber(&removed, "routes[0].name"), "routes[0].name");
        assert_eq!(renumber(&removed, "routes[1].name"), "routes[2].name");
        assert_eq!(renumber(&removed, "routes[1].methods[0]"), "routes[2].methods[1]");
        assert_eq!(renumber(&removed, "upstreams.a[b"), "upstreams.a[b");
    }

    #[test]
    fn dotted_keys_are_taken_out_whole() {
        let src = b"a . \"b c\".d = 1";
        assert_eq!(dotted_key_start(src, 10), 0);
        assert_eq!(dotted_key_start(b"x = 1", 0), 0);
        assert_eq!(dotted_key_start(b"{ p = 1, q.r = 2 }", 11), 9);
    }
}
