//! Code tables for `map` steps: `values:` written in the configuration, or a CSV file of two
//! columns with a header (`from,to`), and an optional `default` for codes not listed.
//!
//! A table is read whole at load: a file that cannot be read, a row without exactly two
//! columns, an empty code or a code listed twice is a load error naming the file and line.
//! Lookups are exact (case and spaces count).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::rules::{Origin, RuleProblem};

/// Where a table's rows come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// A CSV file (relative paths are resolved against the configuration file's directory).
    File(PathBuf),
    /// Rows written in the configuration, in order.
    Values(Vec<(String, String)>),
}

/// A table as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSpec {
    /// Its name, as `map` steps refer to it.
    pub name: String,
    /// Its rows.
    pub source: TableSource,
    /// The value for codes not listed; without one, such a code fails the step.
    pub default: Option<String>,
    /// Where it was written.
    pub origin: Origin,
}

/// A loaded table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    entries: HashMap<String, String>,
    default: Option<String>,
}

impl Table {
    /// The value for `code`: its row, else the default.
    pub fn get(&self, code: &str) -> Option<&str> {
        self.entries
            .get(code)
            .or(self.default.as_ref())
            .map(String::as_str)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when it has no rows.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether codes not listed get a default.
    pub fn has_default(&self) -> bool {
        self.default.is_some()
    }
}

/// Every table, by name.
#[derive(Clone, Debug, Default)]
pub struct Tables(HashMap<String, Arc<Table>>);

impl Tables {
    /// Load every table; report every problem at once. `base` is the directory relative
    /// file names are read from.
    pub fn load(specs: &[TableSpec], base: &Path) -> Result<Self, Vec<RuleProblem>> {
        let (tables, problems) = Self::load_all(specs, base);
        if problems.is_empty() {
            Ok(tables)
        } else {
            Err(problems)
        }
    }

    /// Every table that loads, and the problems of those that do not (each of which stands
    /// in as an empty table, so the steps that name it are not also reported as naming an
    /// unknown table).
    pub fn load_all(specs: &[TableSpec], base: &Path) -> (Self, Vec<RuleProblem>) {
        let mut tables = HashMap::new();
        let mut problems = Vec::new();
        let mut names = std::collections::HashSet::new();
        for spec in specs {
            let subject = format!("table {:?}", spec.name);
            let problem = |detail: String| RuleProblem {
                origin: spec.origin.clone(),
                subject: subject.clone(),
                position: None,
                detail,
            };
            if !names.insert(spec.name.as_str()) {
                problems.push(problem("another table has this name".to_owned()));
                continue;
            }
            let rows = match &spec.source {
                TableSource::Values(rows) => check_rows(
                    rows.iter()
                        .enumerate()
                        .map(|(index, (from, to))| (index + 1, from.clone(), to.clone())),
                    |number| format!("entry {number}"),
                ),
                TableSource::File(file) => read_file(&base.join(file)),
            };
            let entries = rows.unwrap_or_else(|found| {
                problems.extend(found.into_iter().map(problem));
                HashMap::new()
            });
            tables.insert(
                spec.name.clone(),
                Arc::new(Table {
                    entries,
                    default: spec.default.clone(),
                }),
            );
        }
        (Self(tables), problems)
    }

    /// The table named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Table>> {
        self.0.get(name)
    }

    /// The names, sorted (for "known tables are …").
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// Rows `(line or entry number, from, to)` into a map: empty and repeated codes are problems.
fn check_rows(
    rows: impl Iterator<Item = (usize, String, String)>,
    row_name: impl Fn(usize) -> String,
) -> Result<HashMap<String, String>, Vec<String>> {
    let mut entries: HashMap<String, String> = HashMap::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let mut problems = Vec::new();
    for (number, from, to) in rows {
        if from.is_empty() {
            problems.push(format!(
                "{}: the code to map from is empty",
                row_name(number)
            ));
            continue;
        }
        if let Some(first) = first_seen.get(&from) {
            // The code is configuration, not message data: naming it helps the fix.
            problems.push(format!(
                "{}: the code {from:?} is already mapped by {}; each code may be listed once",
                row_name(number),
                row_name(*first)
            ));
            continue;
        }
        first_seen.insert(from.clone(), number);
        entries.insert(from, to);
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

/// A CSV file of two columns with a header line.
fn read_file(path: &Path) -> Result<HashMap<String, String>, Vec<String>> {
    let shown = path.display();
    let text =
        std::fs::read(path).map_err(|error| vec![format!("cannot read {shown}: {error}")])?;
    let text = String::from_utf8(text)
        .map_err(|_| vec![format!("{shown} is not UTF-8 text; save it as UTF-8")])?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let records = parse_csv(text).map_err(|(line, why)| vec![format!("{shown}:{line}: {why}")])?;
    let mut rows = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    let mut records = records.into_iter();
    match records.next() {
        None => {
            return Err(vec![format!(
                "{shown} is empty; it needs a header line (from,to)"
            )]);
        }
        Some((line, header)) if header.len() != 2 => problems.push(format!(
            "{shown}:{line}: the header has {} columns; a table has two (from,to)",
            header.len()
        )),
        Some(_) => {}
    }
    for (line, fields) in records {
        match <[String; 2]>::try_from(fields) {
            Ok([from, to]) => rows.push((line, from, to)),
            Err(fields) if fields.len() == 1 && fields[0].is_empty() => {}
            Err(fields) => problems.push(format!(
                "{shown}:{line}: {} columns; each row has two (from,to)",
                fields.len()
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    check_rows(rows.into_iter(), |line| format!("{shown}:{line}"))
}

/// A CSV record: the line it starts on, and its fields.
type CsvRecord = (usize, Vec<String>);

/// RFC 4180 CSV: records of fields, with their 1-based starting line. Fields may be quoted
/// (`"a,b"`, `""` for a quote); line ends are LF or CRLF.
fn parse_csv(text: &str) -> Result<Vec<CsvRecord>, (usize, String)> {
    let mut records = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut line = 1;
    let mut record_line = 1;
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(character) = chars.next() {
        if quoted {
            match character {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                other => field.push(other),
            }
            continue;
        }
        match character {
            '"' if field.is_empty() && !was_quoted => {
                quoted = true;
                was_quoted = true;
            }
            '"' => {
                return Err((line, "a quote inside an unquoted field; quote the whole field and double the quote (\"a \"\"b\"\"\")".to_owned()));
            }
            ',' => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                fields.push(std::mem::take(&mut field));
                records.push((record_line, std::mem::take(&mut fields)));
                was_quoted = false;
                line += 1;
                record_line = line;
            }
            other if was_quoted => {
                return Err((
                    line,
                    format!("{other:?} after a closing quote; put it inside the quotes"),
                ));
            }
            other => field.push(other),
        }
    }
    if quoted {
        return Err((record_line, "a quoted field is not closed".to_owned()));
    }
    if !field.is_empty() || !fields.is_empty() || was_quoted {
        fields.push(field);
        records.push((record_line, fields));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(name: &str, source: TableSource, default: Option<&str>) -> TableSpec {
        TableSpec {
            name: name.to_owned(),
            source,
            default: default.map(str::to_owned),
            origin: Origin::default(),
        }
    }

    #[test]
    fn values_and_files_load_and_look_up() {
        let directory = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            directory.path().join("lab.csv"),
            "\u{feff}from,to\r\nGLU,2345-7\r\n\"K,serum\",\"2823-3\"\r\n\r\n",
        )
        .expect("write");
        let tables = Tables::load(
            &[
                spec(
                    "sex",
                    TableSource::Values(vec![
                        ("M".to_owned(), "male".to_owned()),
                        ("F".to_owned(), "female".to_owned()),
                    ]),
                    Some("unknown"),
                ),
                spec("lab", TableSource::File("lab.csv".into()), None),
            ],
            directory.path(),
        )
        .expect("loads");
        let sex = tables.get("sex").expect("sex");
        assert_eq!(sex.get("F"), Some("female"));
        assert_eq!(sex.get("X"), Some("unknown"));
        let lab = tables.get("lab").expect("lab");
        assert_eq!(lab.len(), 2);
        assert_eq!(lab.get("K,serum"), Some("2823-3"));
        assert_eq!(lab.get("glu"), None, "lookups are exact");
        assert_eq!(tables.names(), ["lab", "sex"]);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let directory = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            directory.path().join("bad.csv"),
            "from,to\nA,1\nB,2,3\nA,4\n",
        )
        .expect("write");
        std::fs::write(directory.path().join("dup.csv"), "from,to\nA,1\nB,2\nA,4\n")
            .expect("write");
        let problems = Tables::load(
            &[
                spec("bad", TableSource::File("bad.csv".into()), None),
                spec("dup", TableSource::File("dup.csv".into()), None),
                spec("gone", TableSource::File("missing.csv".into()), None),
                spec(
                    "twice",
                    TableSource::Values(vec![
                        ("M".to_owned(), "a".to_owned()),
                        ("M".to_owned(), "b".to_owned()),
                    ]),
                    None,
                ),
                spec("twice", TableSource::Values(Vec::new()), None),
            ],
            directory.path(),
        )
        .expect_err("refused");
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let all = text.join("\n");
        assert!(all.contains("bad.csv:3: 3 columns"), "{all}");
        assert!(
            all.contains("dup.csv:4: the code \"A\" is already mapped by")
                && all.contains("dup.csv:2;"),
            "{all}"
        );
        assert!(
            all.contains("cannot read") && all.contains("missing.csv"),
            "{all}"
        );
        assert!(
            all.contains("entry 2: the code \"M\" is already mapped by entry 1"),
            "{all}"
        );
        assert!(all.contains("another table has this name"), "{all}");
    }

    #[test]
    fn csv_quotes_and_errors() {
        assert_eq!(
            parse_csv("a,\"b \"\"x\"\"\"\n\"multi\nline\",c").expect("parses"),
            vec![
                (1, vec!["a".to_owned(), "b \"x\"".to_owned()]),
                (2, vec!["multi\nline".to_owned(), "c".to_owned()]),
            ]
        );
        assert_eq!(parse_csv("a,b\"c\n").expect_err("quote").0, 1);
        assert_eq!(parse_csv("x\n\"open,b\n").expect_err("unclosed").0, 2);
        assert_eq!(parse_csv("\"a\"b\n").expect_err("after quote").0, 1);
    }

    proptest! {
        /// Any table written as CSV (every field quoted) reads back as written.
        #[test]
        fn written_csv_reads_back(rows in proptest::collection::vec(("[^\u{0}]{1,12}", "[^\u{0}]{0,12}"), 0..20)) {
            let quote = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
            let mut csv = String::from("from,to\n");
            for (from, to) in &rows {
                csv.push_str(&format!("{},{}\n", quote(from), quote(to)));
            }
            let records = parse_csv(&csv).expect("parses");
            prop_assert_eq!(records.len(), rows.len() + 1);
            for ((_, fields), (from, to)) in records[1..].iter().zip(&rows) {
                prop_assert_eq!(fields, &vec![from.clone(), to.clone()]);
            }
        }
    }
}
