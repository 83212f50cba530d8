//! Transactions that a dropped caller cannot leave open.
//!
//! sqlx hands a begun transaction back over a channel. A caller dropped after the database
//! began it but before the answer was read (a `select!` that took another branch, a request
//! whose client went away, a stop) leaves it open on a connection that goes back to the pool:
//! on SQLite that connection keeps the file's write lock (`BEGIN IMMEDIATE`), so every other
//! writer waits for ever, and whoever takes the connection next nests inside it, its commit
//! releasing a savepoint that never reaches the file. [`begin`] lets the transaction start in
//! a task of its own, which turns it into a [`Transaction`] whatever became of the caller; a
//! `Transaction` dropped unfinished rolls back.

use std::borrow::Cow;

use sqlx::{Database, Pool, Transaction};

/// Begins a transaction on `pool`, with `statement` (e.g. `BEGIN IMMEDIATE`) or the database's
/// plain `BEGIN`. Safe to drop at any await: nothing is left open.
pub async fn begin<DB: Database>(
    pool: &Pool<DB>,
    statement: Option<&'static str>,
) -> sqlx::Result<Transaction<'static, DB>> {
    let pool = pool.clone();
    let begun = tokio::spawn(async move {
        match statement {
            Some(statement) => pool.begin_with(Cow::Borrowed(statement)).await,
            None => pool.begin().await,
        }
    });
    // Dropped here, the task runs on, and drops (rolls back) what it begins.
    match begun.await {
        Ok(begun) => begun,
        Err(err) => Err(sqlx::Error::Protocol(format!(
            "beginning a transaction: {err}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;

    /// A caller dropped while its `BEGIN IMMEDIATE` is under way leaves the write lock free:
    /// another connection writes at once, and the pool's connection takes a new `BEGIN`.
    #[tokio::test]
    async fn a_caller_dropped_while_beginning_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true)
            .busy_timeout(Duration::from_millis(200));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER)")
            .execute(&pool)
            .await
            .unwrap();
        for round in 0..24 {
            // Polled a few times, the database answering between polls, and dropped without
            // being polled again: one of these drops falls after the database began the
            // transaction and before the answer was read, the window a `select!` taking
            // another branch leaves.
            let begun = begin(&pool, Some("BEGIN IMMEDIATE"));
            tokio::pin!(begun);
            for _ in 0..=round % 4 {
                if futures::poll!(&mut begun).is_ready() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        for n in 0..4 {
            let mut tx = begin(&pool, Some("BEGIN IMMEDIATE")).await.unwrap();
            sqlx::query("INSERT INTO t (n) VALUES ($1)")
                .bind(n)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let fresh = SqlitePoolOptions::new()
            .connect_with(SqliteConnectOptions::new().filename(dir.path().join("t.db")))
            .await
            .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&fresh)
            .await
            .unwrap();
        assert_eq!(rows, 4, "every commit reached the file");
    }
}
