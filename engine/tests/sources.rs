//! Destinations from OpenSIPS tables: a dbtext file and a MariaDB/MySQL
//! database, loaded at start and again by `lb_reload`, with bad rows
//! skipped and reported.
//!
//! The database tests need servers: `SIPLB_TEST_MYSQL_URL` (default
//! `mysql://siplb:siplb@127.0.0.1:3306/siplb_test`, what `.ci/mariadb`
//! sets up) and `SIPLB_TEST_POSTGRES_URL` (default
//! `postgres://siplb:siplb@127.0.0.1:5432/siplb_test`, `.ci/postgres`).
//! Without one the test says so and skips. Ports: bases 17200-17990 plus
//! `SIPLB_TEST_PORT_OFFSET`.

mod harness;

use std::time::Duration;

use harness::*;
use serde_json::json;

/// How long siplb may take to start.
const LIMIT: Duration = Duration::from_secs(20);

fn ids(lb: &Siplb) -> Vec<(u64, u64)> {
    lb.list().iter().map(|d| (d.0, d.2)).collect()
}

#[test]
fn dbtext_source_loads_skips_bad_rows_and_reloads() {
    let base = port(17200);
    let dir = workdir("dbtext");
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let header = "id(int,auto) group_id(int) dst_uri(string) resources(string) probe_mode(int) description(string)\n";
    let table = dir.join("db/load_balancer");
    std::fs::write(
        &table,
        format!(
            "{header}1:1:sip\\:127.0.0.1\\:{}:pstn=10:0:one\n\
             2:1:sip\\:gw.example.com:pstn=10:0:a host name\n\
             3:1:sip\\:127.0.0.1\\:{}:pstn=20:0:three\n",
            base + 11,
            base + 13
        ),
    )
    .unwrap();
    let text = format!("{}[[sources]]\ndb_url = \"text://db\"\n", config(base, &[]));
    let lb = Siplb::start("dbtext", base, &text, LIMIT);
    assert_eq!(ids(&lb), vec![(1, 10), (3, 20)]);
    let log = lb.log();
    assert!(
        log.contains("load_balancer: line 3: destination 2: uri"),
        "the bad row is reported with its line: {log}"
    );

    // Edit the table: 1 resized, 3 removed, 4 added; lb_reload applies it.
    std::fs::write(
        &table,
        format!(
            "{header}1:1:sip\\:127.0.0.1\\:{}:pstn=15:0:one\n\
             4:1:sip\\:127.0.0.1\\:{}:pstn=5:0:four\n\
             5:1:sip\\:127.0.0.1\\:{}:pstn=5\n",
            base + 11,
            base + 14,
            base + 15
        ),
    )
    .unwrap();
    let r = lb.rpc("lb_reload", json!([]));
    assert_eq!(r["kept"], json!([1]), "{r}");
    assert_eq!(r["added"], json!([4]), "{r}");
    assert_eq!(r["removed"], json!([3]), "{r}");
    assert!(r["skipped"][0].as_str().unwrap().contains("line 4: 4 fields"), "{r}");
    assert_eq!(ids(&lb), vec![(1, 15), (4, 5)]);

    // check-config reads the same source and lists the skipped row.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_siplb"))
        .arg("check-config")
        .arg(&lb.path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.contains("skipped: ") && out.contains("2 destination(s)"), "{out}");
}

/// A test database: MySQL/MariaDB or PostgreSQL.
enum Db {
    My(mysql::Conn),
    Pg(Box<postgres::Client>),
}

impl Db {
    fn exec(&mut self, sql: &str) -> Result<(), String> {
        match self {
            Db::My(c) => mysql::prelude::Queryable::query_drop(c, sql).map_err(|e| e.to_string()),
            Db::Pg(c) => c.batch_execute(sql).map_err(|e| e.to_string()),
        }
    }
}

/// A connection to the MySQL test database, or `None` (with a message)
/// when no server answers.
fn mysql() -> Option<(String, Db)> {
    let url = std::env::var("SIPLB_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://siplb:siplb@127.0.0.1:3306/siplb_test".into());
    let opts = mysql::OptsBuilder::from_opts(mysql::Opts::from_url(&url).ok()?)
        .tcp_connect_timeout(Some(std::time::Duration::from_secs(3)));
    match mysql::Conn::new(opts) {
        Ok(c) => Some((url, Db::My(c))),
        Err(e) => {
            eprintln!("skipping: no MariaDB/MySQL at {url} ({e}); run .ci/mariadb as root to set one up");
            None
        }
    }
}

/// A connection to the PostgreSQL test database, or `None` (with a message).
fn postgres() -> Option<(String, Db)> {
    use std::str::FromStr;
    let url = std::env::var("SIPLB_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://siplb:siplb@127.0.0.1:5432/siplb_test".into());
    let mut config = postgres::Config::from_str(&url).ok()?;
    config.connect_timeout(std::time::Duration::from_secs(3));
    match config.connect(postgres::NoTls) {
        Ok(c) => Some((url, Db::Pg(Box::new(c)))),
        Err(e) => {
            eprintln!("skipping: no PostgreSQL at {url} ({e}); run .ci/postgres as root to set one up");
            None
        }
    }
}

/// Drops the test's table however the test ends.
struct Table {
    db: Db,
    name: String,
}

impl Table {
    fn exec(&mut self, sql: &str) {
        let sql = sql.replace("TABLE_NAME", &self.name);
        self.db.exec(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let _ = self.db.exec(&format!("DROP TABLE IF EXISTS {}", self.name));
    }
}

/// OpenSIPS's load_balancer table, MySQL schema (version 3).
const MYSQL_TABLE: &str = "CREATE TABLE TABLE_NAME (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    group_id INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    dst_uri CHAR(128) NOT NULL,
    resources CHAR(255) NOT NULL,
    probe_mode INT(11) UNSIGNED DEFAULT 0 NOT NULL,
    attrs CHAR(255) DEFAULT NULL,
    description CHAR(128) DEFAULT NULL
) ENGINE=InnoDB";

/// The same, PostgreSQL schema.
const POSTGRES_TABLE: &str = "CREATE TABLE TABLE_NAME (
    id SERIAL PRIMARY KEY NOT NULL,
    group_id INTEGER DEFAULT 0 NOT NULL,
    dst_uri VARCHAR(128) NOT NULL,
    resources VARCHAR(255) NOT NULL,
    probe_mode INTEGER DEFAULT 0 NOT NULL,
    attrs VARCHAR(255) DEFAULT NULL,
    description VARCHAR(128) DEFAULT NULL
)";

#[test]
fn mysql_source_loads_and_reloads_after_inserts_and_deletes() {
    if let Some((url, db)) = mysql() {
        db_source(url, db, MYSQL_TABLE, "mysql", port(17300));
    }
}

#[test]
fn postgres_source_loads_and_reloads_after_inserts_and_deletes() {
    if let Some((url, db)) = postgres() {
        db_source(url, db, POSTGRES_TABLE, "postgres", port(17400));
    }
}

fn db_source(url: String, db: Db, create: &str, name: &str, base: u16) {
    // One table per process: several checkouts may run this at once.
    let mut t = Table {
        db,
        name: format!("load_balancer_t{}", std::process::id()),
    };
    t.exec("DROP TABLE IF EXISTS TABLE_NAME");
    t.exec(create);
    t.exec(&format!(
        "INSERT INTO TABLE_NAME (id, group_id, dst_uri, resources, probe_mode, description) VALUES
            (1, 1, 'sip:127.0.0.1:{}', 'pstn=10', 0, 'one'),
            (2, 1, 'sip:127.0.0.1:{}', 'pstn=20;vm=5', 0, 'two'),
            (3, 1, 'sip:127.0.0.1:{}', 'pstn=ten', 0, 'bad capacity')",
        base + 11,
        base + 12,
        base + 13
    ));
    let text = format!(
        "{}[[sources]]\ndb_url = \"{url}\"\ntable = \"{}\"\n",
        config(base, &[]),
        t.name
    );
    let lb = Siplb::start(name, base, &text, LIMIT);
    assert_eq!(ids(&lb), vec![(1, 10), (2, 20)]);
    assert!(
        lb.log()
            .contains(&format!("table {} row 3 (id 3): destination 3: bad resource", t.name)),
        "the bad row is reported with its row and id: {}",
        lb.log()
    );
    assert!(!lb.log().contains(":siplb@"), "the password never shows in the log");

    t.exec(&format!(
        "INSERT INTO TABLE_NAME (id, group_id, dst_uri, resources) VALUES (4, 1, 'sip:127.0.0.1:{}', 'pstn=4')",
        base + 14
    ));
    t.exec("DELETE FROM TABLE_NAME WHERE id IN (2, 3)");
    t.exec("UPDATE TABLE_NAME SET resources = 'pstn=12' WHERE id = 1");
    let r = lb.rpc("lb_reload", json!([]));
    assert_eq!(r["kept"], json!([1]), "{r}");
    assert_eq!(r["added"], json!([4]), "{r}");
    assert_eq!(r["removed"], json!([2]), "{r}");
    assert_eq!(r["skipped"], json!([]), "{r}");
    assert_eq!(ids(&lb), vec![(1, 12), (4, 4)]);

    // The table going away makes reload fail; the running table stays.
    t.exec("DROP TABLE TABLE_NAME");
    let r = lb.response("lb_reload", json!([])).unwrap();
    let msg = r["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("reload refused") && msg.contains(&t.name), "{r}");
    assert_eq!(ids(&lb), vec![(1, 12), (4, 4)]);
}
