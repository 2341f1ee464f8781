//! Sources of destinations besides the TOML file: OpenSIPS's
//! `load_balancer` and `dispatcher` tables, as a dbtext file or in a SQL
//! database.
//!
//! A source is named by a `db_url` as OpenSIPS writes it, plus a table name:
//! - `text:///var/lib/siplb/dbtext` (or `text://relative/dir`, relative to
//!   the configuration file's directory): the table is the file of that
//!   name in the directory, in OpenSIPS's db_text layout;
//! - `mysql://user:password@host[:port]/database`: MySQL or MariaDB;
//! - `postgres://user:password@host[:port]/database` (or `postgresql://`):
//!   PostgreSQL.
//!
//! The layout is recognised from the columns: `dst_uri` means
//! `load_balancer` (id, group_id, dst_uri, resources, probe_mode, attrs,
//! description), `destination` means `dispatcher` (id, setid, destination,
//! socket, state, probe_mode, weight, priority, attrs, description).
//! Columns other than id, the group and the URI may be missing (older
//! schema versions lack some).
//!
//! Reading happens at start and on reload only, on the thread that asks
//! (never a worker). A source that cannot be read at all (missing file,
//! bad header, no database) is an error for the whole configuration; a bad
//! row is skipped and reported with its line (dbtext) or row number and id
//! (SQL) by the caller.
//!
//! # dbtext
//! First line: the columns, `name(type[,attr])` separated by blanks, type
//! `int`, `double`, `str`/`string`, attr `auto` or `null`. Then one row per
//! line, fields separated by `:`; an empty field is NULL; inside strings
//! `\:`, `\\`, `\n`, `\r`, `\t` and `\0` are escapes. Blank lines are
//! ignored.

use std::path::{Path, PathBuf};

/// A source could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The dbtext file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A structural problem in a dbtext file (its header).
    #[error("{path}: line {line}: {message}")]
    At {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The database could not be queried (the caller names the source).
    #[error("{message}")]
    Database {
        /// The URL, password hidden.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The URL or table is not usable.
    #[error("{0}")]
    Invalid(String),
}

/// Which OpenSIPS table layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `load_balancer`: group_id, dst_uri, resources.
    LoadBalancer,
    /// `dispatcher`: setid, destination, state, weight, priority.
    Dispatcher,
}

/// One destination row, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Where it comes from, for messages: `"FILE: line N"` or
    /// `"TABLE row N (id I)"`.
    pub origin: String,
    /// id.
    pub id: u32,
    /// group_id / setid.
    pub group: u32,
    /// dst_uri / destination.
    pub uri: String,
    /// resources (empty for dispatcher rows).
    pub resources: String,
    /// probe_mode.
    pub probe_mode: u8,
    /// weight (dispatcher; 1 otherwise).
    pub weight: i64,
    /// priority (dispatcher; 0 otherwise).
    pub priority: i64,
    /// attrs.
    pub attrs: String,
    /// description.
    pub description: String,
    /// dispatcher state 1 (inactive): starts disabled.
    pub disabled: bool,
}

impl Row {
    /// The row as a `[[destinations]]` entry, for the same validation.
    pub fn to_file(&self) -> crate::config::DestinationFile {
        use toml::Spanned;
        crate::config::DestinationFile {
            id: Spanned::new(0..0, self.id),
            group: self.group,
            uri: Spanned::new(0..0, self.uri.clone()),
            resources: Spanned::new(0..0, self.resources.clone()),
            probe_mode: self.probe_mode,
            weight: Spanned::new(0..0, self.weight),
            priority: Spanned::new(0..0, self.priority),
            attrs: self.attrs.clone(),
            description: self.description.clone(),
            disabled: self.disabled,
            probing_threshold: None,
            probing_recovery_threshold: None,
        }
    }
}

/// What a source gave: good rows, and bad ones as messages.
#[derive(Debug, Default)]
pub struct Rows {
    /// Rows that parsed.
    pub rows: Vec<Row>,
    /// `"origin: what is wrong"` for each skipped row.
    pub skipped: Vec<String>,
}

/// Reads `table` from `db_url`; relative `text://` paths start at `base`.
pub fn read(db_url: &str, table: &str, base: Option<&Path>) -> Result<Rows, SourceError> {
    if table.is_empty() || !table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(SourceError::Invalid(format!(
            "table {table:?}: letters, digits and _ only"
        )));
    }
    if let Some(dir) = db_url.strip_prefix("text://") {
        let dir = PathBuf::from(dir);
        let dir = match base {
            Some(b) if dir.is_relative() => b.join(dir),
            _ => dir,
        };
        return read_dbtext(&dir.join(table));
    }
    if db_url.starts_with("mysql://") {
        return read_mysql(db_url, table);
    }
    if db_url.starts_with("postgres://") || db_url.starts_with("postgresql://") {
        return read_postgres(db_url, table);
    }
    Err(SourceError::Invalid(format!(
        "db_url {:?}: expected text://DIR, mysql://USER:PASSWORD@HOST[:PORT]/DB or postgres://USER:PASSWORD@HOST[:PORT]/DB",
        hide_password(db_url)
    )))
}

/// `db_url` with the password replaced by `***`.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => match cred.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// One record as column name -> value (`None`: NULL).
struct Record {
    origin: String,
    fields: Vec<(String, Option<String>)>,
}

impl Record {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_deref())
    }

    fn text(&self, name: &str) -> String {
        self.get(name).unwrap_or_default().to_string()
    }

    fn int(&self, name: &str, default: Option<i64>) -> Result<i64, String> {
        match self.get(name).map(str::trim) {
            Some(v) if !v.is_empty() => v.parse().map_err(|_| format!("{name}: {v:?} is not an integer")),
            _ => default.ok_or_else(|| format!("{name} is missing")),
        }
    }

    fn row(&self, layout: Layout) -> Result<Row, String> {
        let unsigned = |name: &str, v: i64| u32::try_from(v).map_err(|_| format!("{name}: {v} is out of range"));
        let id = unsigned("id", self.int("id", None)?)?;
        let probe_mode = self.int("probe_mode", Some(0))?;
        let probe_mode = u8::try_from(probe_mode)
            .ok()
            .filter(|p| *p <= 2)
            .ok_or_else(|| format!("probe_mode: {probe_mode} is not 0, 1 or 2"))?;
        let mut row = Row {
            origin: self.origin.clone(),
            id,
            group: 0,
            uri: String::new(),
            resources: String::new(),
            probe_mode,
            weight: 1,
            priority: 0,
            attrs: self.text("attrs"),
            description: self.text("description"),
            disabled: false,
        };
        match layout {
            Layout::LoadBalancer => {
                row.group = unsigned("group_id", self.int("group_id", None)?)?;
                row.uri = self.get("dst_uri").ok_or("dst_uri is missing")?.trim().to_string();
                row.resources = self.text("resources");
            }
            Layout::Dispatcher => {
                row.group = unsigned("setid", self.int("setid", None)?)?;
                row.uri = self
                    .get("destination")
                    .ok_or("destination is missing")?
                    .trim()
                    .to_string();
                row.weight = self.int("weight", Some(1))?;
                row.priority = self.int("priority", Some(0))?;
                // OpenSIPS states: 0 active, 1 inactive, 2 probing.
                row.disabled = match self.int("state", Some(0))? {
                    0 | 2 => false,
                    1 => true,
                    s => return Err(format!("state: {s} is not 0, 1 or 2")),
                };
            }
        }
        Ok(row)
    }
}

fn layout_of<'a>(columns: impl Iterator<Item = &'a str> + Clone) -> Option<Layout> {
    if columns.clone().any(|c| c.eq_ignore_ascii_case("dst_uri")) {
        Some(Layout::LoadBalancer)
    } else if columns.clone().any(|c| c.eq_ignore_ascii_case("destination")) {
        Some(Layout::Dispatcher)
    } else {
        None
    }
}

fn to_rows(records: Vec<Record>, layout: Layout) -> Rows {
    let mut out = Rows::default();
    for r in records {
        match r.row(layout) {
            Ok(row) => out.rows.push(row),
            Err(e) => out.skipped.push(format!("{}: {e}", r.origin)),
        }
    }
    out
}

/// Reads a dbtext table file.
pub fn read_dbtext(path: &Path) -> Result<Rows, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| SourceError::Io {
        path: path.display().to_string(),
        source,
    })?;
    parse_dbtext(&text, &path.display().to_string())
}

/// Parses dbtext `text`; `name` is used in messages.
pub fn parse_dbtext(text: &str, name: &str) -> Result<Rows, SourceError> {
    let header_err = |message: String| SourceError::At {
        path: name.to_string(),
        line: 1,
        message,
    };
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r'));
    let header = lines.next().unwrap_or_default();
    let mut columns = Vec::new();
    for def in header.split_whitespace() {
        let (col, rest) = def
            .split_once('(')
            .filter(|(c, r)| !c.is_empty() && r.ends_with(')'))
            .ok_or_else(|| header_err(format!("column {def:?} is not name(type[,attr])")))?;
        let mut parts = rest[..rest.len() - 1].split(',').map(str::trim);
        let ty = parts.next().unwrap_or_default();
        if !matches!(ty, "int" | "double" | "str" | "string" | "blob") {
            return Err(header_err(format!("column {col}: unknown type {ty:?}")));
        }
        if let Some(a) = parts.find(|a| !matches!(*a, "auto" | "null")) {
            return Err(header_err(format!("column {col}: unknown attribute {a:?}")));
        }
        columns.push(col.to_string());
    }
    if columns.is_empty() {
        return Err(header_err("no column definitions on the first line".into()));
    }
    let layout = layout_of(columns.iter().map(String::as_str))
        .ok_or_else(|| header_err("neither a dst_uri (load_balancer) nor a destination (dispatcher) column".into()))?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let origin = format!("{name}: line {}", i + 2);
        let values = split_fields(line);
        if values.len() != columns.len() {
            skipped.push(format!(
                "{origin}: {} fields, the header has {} columns",
                values.len(),
                columns.len()
            ));
            continue;
        }
        records.push(Record {
            origin,
            fields: columns.iter().cloned().zip(values).collect(),
        });
    }
    let mut rows = to_rows(records, layout);
    skipped.append(&mut rows.skipped);
    rows.skipped = skipped;
    Ok(rows)
}

/// Splits a dbtext row on unescaped `:` and unescapes; empty fields are NULL.
fn split_fields(line: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('n') => cur.push('\n'),
                Some('r') => cur.push('\r'),
                Some('t') => cur.push('\t'),
                Some('0') => cur.push('\0'),
                Some(other) => cur.push(other),
                None => cur.push('\\'),
            },
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().map(|v| (!v.is_empty()).then_some(v)).collect()
}

/// Reads a table from MySQL/MariaDB.
fn read_mysql(url: &str, table: &str) -> Result<Rows, SourceError> {
    use mysql::prelude::Queryable;
    let db_err = |e: mysql::Error| SourceError::Database {
        url: hide_password(url),
        message: e.to_string(),
    };
    let opts = mysql::Opts::from_url(url).map_err(|e| SourceError::Database {
        url: hide_password(url),
        message: e.to_string(),
    })?;
    let opts = mysql::OptsBuilder::from_opts(opts)
        .tcp_connect_timeout(Some(std::time::Duration::from_secs(5)))
        .read_timeout(Some(std::time::Duration::from_secs(10)));
    let mut conn = mysql::Conn::new(opts).map_err(db_err)?;
    let result: Vec<mysql::Row> = conn
        .query(format!("SELECT * FROM `{table}` ORDER BY id"))
        .map_err(db_err)?;
    let Some(first) = result.first() else {
        return Ok(Rows::default());
    };
    let columns: Vec<String> = first.columns_ref().iter().map(|c| c.name_str().into_owned()).collect();
    let layout = layout_of(columns.iter().map(String::as_str)).ok_or_else(|| {
        SourceError::Invalid(format!(
            "table {table}: neither a dst_uri (load_balancer) nor a destination (dispatcher) column"
        ))
    })?;
    let records = result
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(c, name)| (name.clone(), row.as_ref(c).and_then(mysql_text)))
                .collect()
        })
        .collect();
    Ok(to_rows(numbered(table, records), layout))
}

/// SQL rows as records named `table T row N (id I)`.
fn numbered(table: &str, rows: Vec<Vec<(String, Option<String>)>>) -> Vec<Record> {
    rows.into_iter()
        .enumerate()
        .map(|(i, fields)| {
            let id = fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("id"))
                .and_then(|(_, v)| v.clone())
                .unwrap_or_else(|| "NULL".into());
            Record {
                origin: format!("table {table} row {} (id {id})", i + 1),
                fields,
            }
        })
        .collect()
}

/// Reads a table from PostgreSQL (simple query protocol: every value as text).
fn read_postgres(url: &str, table: &str) -> Result<Rows, SourceError> {
    use std::str::FromStr;
    let db_err = |e: postgres::Error| SourceError::Database {
        url: hide_password(url),
        // The server's own words ("relation ... does not exist") when it sent some.
        message: match e.as_db_error() {
            Some(d) => format!("{}: {}", d.severity(), d.message()),
            None => e.to_string(),
        },
    };
    let mut config = postgres::Config::from_str(url).map_err(db_err)?;
    config.connect_timeout(std::time::Duration::from_secs(5));
    let mut client = config.connect(postgres::NoTls).map_err(db_err)?;
    let messages = client
        .simple_query(&format!("SELECT * FROM \"{table}\" ORDER BY id"))
        .map_err(db_err)?;
    let mut columns: Option<Vec<String>> = None;
    let mut records = Vec::new();
    for m in messages {
        let postgres::SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let cols = columns.get_or_insert_with(|| row.columns().iter().map(|c| c.name().to_string()).collect());
        let fields: Vec<(String, Option<String>)> = cols
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), row.get(i).map(str::to_string)))
            .collect();
        records.push(fields);
    }
    let Some(columns) = columns else {
        return Ok(Rows::default());
    };
    let layout = layout_of(columns.iter().map(String::as_str)).ok_or_else(|| {
        SourceError::Invalid(format!(
            "table {table}: neither a dst_uri (load_balancer) nor a destination (dispatcher) column"
        ))
    })?;
    Ok(to_rows(numbered(table, records), layout))
}

fn mysql_text(v: &mysql::Value) -> Option<String> {
    match v {
        mysql::Value::NULL => None,
        mysql::Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        mysql::Value::Int(i) => Some(i.to_string()),
        mysql::Value::UInt(u) => Some(u.to_string()),
        mysql::Value::Float(f) => Some(f.to_string()),
        mysql::Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LB: &str =
        "id(int,auto) group_id(int) dst_uri(string) resources(string) probe_mode(int) description(string)\n\
        1:1:sip\\:127.0.0.1\\:5081:pstn=32;vm=50:0:media server 1\n\
        \n\
        2:1:sip\\:127.0.0.1\\:5082:pstn=32:2:tab\\there\\: ok\n\
        3:x:sip\\:127.0.0.1\\:5083:pstn=1:0:bad group\n\
        4:1:sip\\:127.0.0.1\\:5084:pstn=1:0\n\
        5:1:sip\\:127.0.0.1\\:5085:pstn=1:7:bad probe mode\n\
        6:1:::0:no uri\n";

    #[test]
    fn dbtext_load_balancer() {
        let r = parse_dbtext(LB, "lb").unwrap();
        let ids: Vec<u32> = r.rows.iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(r.rows[0].uri, "sip:127.0.0.1:5081");
        assert_eq!(r.rows[0].resources, "pstn=32;vm=50");
        assert_eq!(r.rows[0].origin, "lb: line 2");
        assert_eq!(r.rows[1].probe_mode, 2);
        assert_eq!(r.rows[1].description, "tab\there: ok");
        assert_eq!(r.rows[1].origin, "lb: line 4");
        assert_eq!(r.skipped.len(), 4, "{:?}", r.skipped);
        assert!(r.skipped[0].starts_with("lb: line 6: 5 fields"), "{:?}", r.skipped);
        assert!(r.skipped[1].starts_with("lb: line 5: group_id"), "{:?}", r.skipped);
        assert!(r.skipped[2].starts_with("lb: line 7: probe_mode"), "{:?}", r.skipped);
        assert!(
            r.skipped[3].starts_with("lb: line 8: dst_uri is missing"),
            "{:?}",
            r.skipped
        );
    }

    #[test]
    fn dbtext_dispatcher() {
        let text = "id(int,auto) setid(int) destination(string) socket(string,null) state(int) probe_mode(int) \
                    weight(string) priority(int) attrs(string,null) description(string,null)\n\
                    1:2:sip\\:127.0.0.1\\:5091::0:0:5:1:duid=a:\n\
                    2:2:sip\\:127.0.0.1\\:5092::1:0:::x:gw 2\n";
        let r = parse_dbtext(text, "ds").unwrap();
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert_eq!(r.rows.len(), 2);
        let (a, b) = (&r.rows[0], &r.rows[1]);
        assert_eq!((a.group, a.weight, a.priority, a.attrs.as_str()), (2, 5, 1, "duid=a"));
        assert!(!a.disabled && b.disabled);
        assert_eq!((b.weight, b.priority, b.description.as_str()), (1, 0, "gw 2"));
        assert!(a.resources.is_empty());
    }

    #[test]
    fn dbtext_bad_header_is_an_error() {
        let e = parse_dbtext("id(int) group_id(int) uri(string)\n1:1:x\n", "t").unwrap_err();
        assert!(e.to_string().starts_with("t: line 1: neither"), "{e}");
        let e = parse_dbtext("id(integer) dst_uri(string)\n", "t").unwrap_err();
        assert!(e.to_string().contains("unknown type"), "{e}");
    }

    #[test]
    fn urls() {
        assert_eq!(hide_password("mysql://u:secret@h/db"), "mysql://u:***@h/db");
        assert!(matches!(read("redis://x", "t", None), Err(SourceError::Invalid(_))));
        assert!(matches!(read("text:///x", "a;b", None), Err(SourceError::Invalid(_))));
    }
}
