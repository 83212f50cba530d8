//! Moving what the secret key sealed under the personal data key. Before whatsnap kept personal
//! data under a key of its own, the contacts' keys and received files were sealed under the
//! secret key itself; a process that holds the secret key re-seals them on start, so that the
//! processes given only the personal data key (the gateway) can open them. Each row is swapped
//! only if it still holds what was read, so two processes doing it at once do no harm.

use sqlx::{AnyPool, Row};
use whatsnap_secrets::{Sealed, SecretError, SecretKey};

/// A column of sealed values, and the text columns that find its rows.
#[derive(Debug, Clone, Copy)]
pub struct SealedColumn {
    pub table: &'static str,
    pub keys: &'static [&'static str],
    pub column: &'static str,
}

/// Rows read at once: received files are up to 16 MB each.
const PAGE: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    #[error("re-sealing {table}: {source}")]
    Database {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("re-sealing {table}: a value does not open with the secret key: {source}")]
    Unopenable {
        table: &'static str,
        #[source]
        source: SecretError,
    },
}

/// Re-seals under `to` every value of `spec` that `from` sealed; how many there were.
pub async fn reseal_column(
    db: &AnyPool,
    spec: SealedColumn,
    from: &SecretKey,
    to: &SecretKey,
) -> Result<u64, ResealError> {
    let database = |source| ResealError::Database {
        table: spec.table,
        source,
    };
    let keys = spec.keys.join(", ");
    let after: Vec<String> = (1..=spec.keys.len()).map(|n| format!("${n}")).collect();
    // Only values sealed under the secret key itself start `v1:` (derived keys seal `v1.<use>:`).
    // This runs at every start of a process that holds the secret key: `substr` lets
    // PostgreSQL read the first bytes of a stored file, where `LIKE` would read all of it.
    let select = format!(
        "SELECT {keys}, {column} FROM {table} WHERE substr({column}, 1, 3) = 'v1:' \
         AND ({keys}) > ({after}) ORDER BY {keys} LIMIT {PAGE}",
        column = spec.column,
        table = spec.table,
        after = after.join(", "),
    );
    let matching: Vec<String> = spec
        .keys
        .iter()
        .enumerate()
        .map(|(n, key)| format!("{key} = ${}", n + 3))
        .collect();
    let update = format!(
        "UPDATE {table} SET {column} = $1 WHERE {column} = $2 AND {matching}",
        table = spec.table,
        column = spec.column,
        matching = matching.join(" AND "),
    );
    let mut last = vec![String::new(); spec.keys.len()];
    let mut resealed = 0;
    loop {
        let mut query = sqlx::query(&select);
        for value in &last {
            query = query.bind(value.clone());
        }
        let rows = query.fetch_all(db).await.map_err(database)?;
        let Some(final_row) = rows.last() else {
            return Ok(resealed);
        };
        let next: Vec<String> = (0..spec.keys.len())
            .map(|n| final_row.get::<String, _>(n))
            .collect();
        for row in &rows {
            let old: String = row.get(spec.keys.len());
            let opened = from
                .open(&Sealed::from_stored(old.clone()))
                .map_err(|source| ResealError::Unopenable {
                    table: spec.table,
                    source,
                })?;
            let mut query = sqlx::query(&update)
                .bind(to.seal(opened.expose()).as_str().to_owned())
                .bind(old);
            for n in 0..spec.keys.len() {
                query = query.bind(row.get::<String, _>(n));
            }
            resealed += query.execute(db).await.map_err(database)?.rows_affected();
        }
        last = next;
    }
}
