//! Many rows to a statement, for a read model applying a batch of events together
//! ([`crate::projection::Projection::apply_together`]): a rebuild's thousands of events become
//! a few statements instead of one or more each. Every statement is a turn at the database (a
//! round trip to PostgreSQL; a hand-over to SQLite's own thread), which is what a read model's
//! rebuild spent its time on. And [`empty`], the reset of every read model.
//!
//! Written for the `Any` driver, which both read-model databases are used through (`ON
//! CONFLICT … excluded` in both). The statements are bound by position: `?` for SQLite, whose
//! numbered parameters cost a walk of the statement's parameter names each (hundreds of
//! them in a statement of many rows), and `$n` for PostgreSQL.

use std::collections::HashMap;

use sqlx::{AnyConnection, Row};

/// The most rows of one statement: far below both databases' limits on bound values (SQLite
/// 32,766, PostgreSQL 65,535) for the widest rows written this way.
pub const ROWS_AT_ONCE: usize = 200;

/// One bound value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Int(i64),
    Null,
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self::Text(text)
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::Text(text.to_owned())
    }
}

impl From<i64> for Value {
    fn from(int: i64) -> Self {
        Self::Int(int)
    }
}

impl From<Option<String>> for Value {
    fn from(text: Option<String>) -> Self {
        text.map_or(Self::Null, Self::Text)
    }
}

/// Rows waiting to be written by one statement shape: `{insert} VALUES (…), (…) {then}`, an
/// `INSERT`, or any statement around a `VALUES` list (an `UPDATE … FROM (… (VALUES …) …)`).
#[derive(Debug)]
pub struct Rows {
    insert: &'static str,
    columns: usize,
    then: &'static str,
    values: Vec<Value>,
}

impl Rows {
    /// `insert` names the table and its `columns` (`INSERT INTO t (a, b)`); `then` follows the
    /// values (`ON CONFLICT (a) DO NOTHING`, or empty).
    pub fn new(insert: &'static str, columns: usize, then: &'static str) -> Self {
        Self {
            insert,
            columns,
            then,
            values: Vec::new(),
        }
    }

    /// Adds a row, its values in the order of the columns.
    pub fn push<const N: usize>(&mut self, row: [Value; N]) {
        assert_eq!(N, self.columns, "a row of {N} values for {}", self.insert);
        self.values.extend(row);
    }

    /// Inserts the rows, [`ROWS_AT_ONCE`] to a statement, in the order they were added, and
    /// forgets them.
    pub async fn write(&mut self, conn: &mut AnyConnection) -> sqlx::Result<()> {
        for rows in self.values.chunks(ROWS_AT_ONCE * self.columns) {
            let tuples: Vec<String> = (0..rows.len() / self.columns)
                .map(|row| format!("({})", placeholders(conn, row * self.columns, self.columns)))
                .collect();
            let statement = format!("{} VALUES {} {}", self.insert, tuples.join(", "), self.then);
            bind(sqlx::query(&statement), rows)
                .execute(&mut *conn)
                .await?;
        }
        self.values.clear();
        Ok(())
    }
}

/// Empties `tables`: a projection's [`reset`](crate::projection::Projection::reset) for a
/// rebuild from zero.
pub async fn empty(conn: &mut AnyConnection, tables: &[&str]) -> sqlx::Result<()> {
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `{statement} (…)` for each [`ROWS_AT_ONCE`] of `keys`, bound to the list: a `DELETE … WHERE
/// … IN` of many keys in a few statements. The statement itself binds nothing.
pub async fn execute_in(
    conn: &mut AnyConnection,
    statement: &str,
    keys: &[String],
) -> sqlx::Result<()> {
    for keys in keys.chunks(ROWS_AT_ONCE) {
        let sql = format!("{statement} ({})", placeholders(conn, 0, keys.len()));
        bind_keys(&sql, keys).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The pairs `(key, value)` that `{statement} (…)` selects for `keys` (two text columns, the
/// key first), in a few statements: a batch's lookups in one go. The statement itself binds
/// nothing.
pub async fn select_in(
    conn: &mut AnyConnection,
    statement: &str,
    keys: &[String],
) -> sqlx::Result<HashMap<String, String>> {
    let mut found = HashMap::new();
    for keys in keys.chunks(ROWS_AT_ONCE) {
        let sql = format!("{statement} ({})", placeholders(conn, 0, keys.len()));
        for row in bind_keys(&sql, keys).fetch_all(&mut *conn).await? {
            found.insert(row.try_get(0)?, row.try_get(1)?);
        }
    }
    Ok(found)
}

/// The placeholders of the values `from + 1` to `from + count` of a statement: `?, ?, …` for
/// SQLite, `$n, …` for PostgreSQL.
fn placeholders(conn: &AnyConnection, from: usize, count: usize) -> String {
    let list: Vec<String> = match conn.backend_name() {
        "SQLite" => vec!["?".to_owned(); count],
        _ => (from + 1..=from + count).map(|n| format!("${n}")).collect(),
    };
    list.join(", ")
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// `sql` with `keys` bound to its placeholders, in order.
fn bind_keys<'q>(sql: &'q str, keys: &'q [String]) -> AnyQuery<'q> {
    keys.iter()
        .fold(sqlx::query(sql), |query, key| query.bind(key.as_str()))
}

/// `query` with `values` bound to its placeholders, in order.
fn bind<'q>(mut query: AnyQuery<'q>, values: &'q [Value]) -> AnyQuery<'q> {
    for value in values {
        query = match value {
            Value::Text(text) => query.bind(text.as_str()),
            Value::Int(int) => query.bind(*int),
            Value::Null => query.bind(None::<String>),
        };
    }
    query
}
