//! The embedded member store: one SQLite file in WAL mode, migrated on open.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, Row, SqlitePool};

use super::{
    BoxFuture, Deleted, EmailChange, Member, MemberId, MemberStore, NewMember, SessionRecord,
    Status, StoreError, StoreResult, Taken, TokenPurpose,
};

pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
    /// The file's device and inode when it was opened: `ping` tells a file
    /// removed or replaced under the running gateway.
    file_id: (u64, u64),
}

/// A pooled connection for one write, closed instead of reused unless the
/// write went through. After some failures (a full disk among them) SQLite
/// can leave the transaction open on that connection, and a connection
/// returned to the pool in that state would hold the write lock for ever:
/// every later write would wait out the busy timeout and fail.
struct WriteConnection {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    done: bool,
}

impl WriteConnection {
    /// A write transaction that takes the write lock at its start (`BEGIN
    /// IMMEDIATE`), waiting out `busy_timeout` for another process's
    /// writes. A plain `BEGIN` that reads first asks for the lock only at
    /// its first write, where SQLite answers BUSY at once instead of waiting
    /// (the admin CLI beside a busy gateway).
    async fn begin_write(&mut self) -> StoreResult<sqlx::Transaction<'_, sqlx::Sqlite>> {
        self.conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(backend)
    }

    /// The write went through: the connection may serve again.
    fn done(&mut self) {
        self.done = true;
    }
}

impl Drop for WriteConnection {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

impl std::ops::Deref for WriteConnection {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &sqlx::SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConnection {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }
}

fn backend(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Duplicate,
        _ => StoreError::Backend(e.to_string()),
    }
}

const MEMBER_COLUMNS: &str = "m.id, m.email, m.first_name, m.last_name, m.password_hash, m.status, \
     m.epoch, m.grants, m.created_at, m.last_login_at, \
     (SELECT group_concat(g.group_name, char(10)) FROM member_groups g WHERE g.member_id = m.id) AS groups";

fn member_from(row: &sqlx::sqlite::SqliteRow) -> StoreResult<Member> {
    let status: String = row.try_get("status").map_err(backend)?;
    let groups: Option<String> = row.try_get("groups").map_err(backend)?;
    let mut groups: Vec<String> = groups
        .map(|g| g.split('\n').map(str::to_owned).collect())
        .unwrap_or_default();
    groups.sort();
    Ok(Member {
        id: row.try_get("id").map_err(backend)?,
        email: row.try_get("email").map_err(backend)?,
        first_name: row.try_get("first_name").map_err(backend)?,
        last_name: row.try_get("last_name").map_err(backend)?,
        password_hash: row.try_get("password_hash").map_err(backend)?,
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown status {status:?}")))?,
        epoch: row.try_get("epoch").map_err(backend)?,
        grants: row.try_get("grants").map_err(backend)?,
        created_at: row.try_get("created_at").map_err(backend)?,
        last_login_at: row.try_get("last_login_at").map_err(backend)?,
        groups,
    })
}

fn session_from(row: &sqlx::sqlite::SqliteRow) -> StoreResult<SessionRecord> {
    let hash: Vec<u8> = row.try_get("id_hash").map_err(backend)?;
    Ok(SessionRecord {
        id_hash: hash
            .try_into()
            .map_err(|_| StoreError::Backend("bad session hash".into()))?,
        member_id: row.try_get("member_id").map_err(backend)?,
        epoch: row.try_get("epoch").map_err(backend)?,
        grants: row.try_get("grants").map_err(backend)?,
        created_at: row.try_get("created_at").map_err(backend)?,
        expires_at: row.try_get("expires_at").map_err(backend)?,
        last_seen_at: row.try_get("last_seen_at").map_err(backend)?,
        replaced: row.try_get("replaced").map_err(backend)?,
    })
}

/// The statement that stores a new session, only while its member is active
/// at the session's epoch: a login or renewal that read the member just
/// before a disable, a password change or a reset committed inserts nothing
/// (catalogue D5).
fn insert_session(
    s: &SessionRecord,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'_>> {
    sqlx::query(
        "INSERT INTO sessions \
         (id_hash, member_id, epoch, grants, created_at, expires_at, last_seen_at, replaced) \
         SELECT ?, ?, ?, ?, ?, ?, ?, ? WHERE EXISTS \
         (SELECT 1 FROM members WHERE id = ? AND epoch = ? AND status = 'active')",
    )
    .bind(&s.id_hash[..])
    .bind(s.member_id)
    .bind(s.epoch)
    .bind(s.grants)
    .bind(s.created_at)
    .bind(s.expires_at)
    .bind(s.last_seen_at)
    .bind(s.replaced)
    .bind(s.member_id)
    .bind(s.epoch)
}

/// An exclusive lock on `<database>.lock`, held until dropped; waits for
/// another process that holds it.
async fn opening_lock(database: &Path) -> StoreResult<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = PathBuf::from(format!("{}.lock", database.display()));
    let failed =
        |e: std::io::Error| StoreError::Backend(format!("cannot lock {}: {e}", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(failed)?;
    tokio::task::spawn_blocking(move || file.lock().map(|()| file))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(failed)
}

/// The device and inode of the file at `path`.
fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

impl SqliteStore {
    async fn write_connection(&self) -> StoreResult<WriteConnection> {
        let conn = self.pool.acquire().await.map_err(backend)?;
        Ok(WriteConnection { conn, done: false })
    }

    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        // Members' emails and password hashes: a directory and a file the
        // gateway makes are its user's alone (SQLite gives the -wal and -shm
        // files the database's permissions). Existing ones keep theirs.
        // An empty file is an empty database.
        crate::files::write_whole(path, b"", 0o600, crate::files::IfExists::Keep)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", path.display())))?;
        // One process opens and migrates at a time: sqlx's SQLite migrator
        // takes no lock, and two processes opening a new or older file
        // together (the gateway and a CLI job at first start) would both
        // apply a migration, or race to switch the new file to WAL.
        let _opening = opening_lock(path).await?;
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(backend)?
            // The file exists (made above). A connection opened later, once
            // someone removed it, must fail rather than start a new, empty
            // database beside the one the other connections still use.
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            // With WAL, NORMAL loses no committed transaction on a process crash;
            // FULL also survives power loss, which is what acknowledged
            // registrations deserve.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("migrating {}: {e}", path.display())))?;
        // SQLite opens a file its user may not write read-only, without a
        // word: reads work and every write fails. Rewriting the header's
        // user_version with its own value is a write that changes nothing.
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await
            .map_err(backend)?;
        sqlx::query(&format!("PRAGMA user_version = {version}"))
            .execute(&pool)
            .await
            .map_err(|e| {
                StoreError::Backend(format!(
                    "{} cannot be written by this user ({e}): give it and its folder to the user the gateway runs as",
                    path.display()
                ))
            })?;
        let file_id = file_id(path)
            .map_err(|e| StoreError::Backend(format!("cannot read {}: {e}", path.display())))?;
        Ok(SqliteStore {
            pool,
            path: path.to_owned(),
            file_id,
        })
    }

    /// Writes a consistent copy of the database to `file` (`VACUUM INTO`:
    /// one read transaction, so writers carry on), owner-only. `file` must
    /// not exist: a backup never overwrites anything.
    pub async fn back_up_to(&self, file: &Path) -> StoreResult<()> {
        // Made first, empty and owner-only: SQLite would create it with the
        // umask's permissions, and it holds every password hash.
        let created = crate::files::write_whole(file, b"", 0o600, crate::files::IfExists::Keep)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", file.display())))?;
        if !created {
            return Err(StoreError::Backend(format!(
                "{} exists; a backup never overwrites a file",
                file.display()
            )));
        }
        let target = file.to_str().ok_or_else(|| {
            StoreError::Backend(format!("{} is not a UTF-8 path", file.display()))
        })?;
        let written = sqlx::query("VACUUM INTO ?")
            .bind(target)
            .execute(&self.pool)
            .await;
        if let Err(e) = written {
            let _ = std::fs::remove_file(file);
            return Err(StoreError::Backend(format!(
                "writing {}: {e}",
                file.display()
            )));
        }
        Ok(())
    }

    async fn changed(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: MemberId,
        bump_epoch: bool,
        now: i64,
    ) -> StoreResult<()> {
        if bump_epoch {
            let done = sqlx::query("UPDATE members SET epoch = epoch + 1 WHERE id = ?")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM sessions WHERE member_id = ?")
                .bind(id)
                .execute(&mut **tx)
                .await
                .map_err(backend)?;
        }
        sqlx::query("INSERT INTO member_changes (member_id, at) VALUES (?, ?)")
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await
            .map_err(backend)?;
        Ok(())
    }

    /// Runs `statement` (binding `id` last) in a transaction with a change record.
    async fn update(
        &self,
        id: MemberId,
        statement: &'static str,
        binds: Vec<String>,
        bump_epoch: bool,
        now: i64,
    ) -> StoreResult<()> {
        let mut conn = self.write_connection().await?;
        let mut tx = conn.begin_write().await?;
        let mut query = sqlx::query(statement);
        for value in binds {
            query = query.bind(value);
        }
        let done = query.bind(id).execute(&mut *tx).await.map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        SqliteStore::changed(&mut tx, id, bump_epoch, now).await?;
        tx.commit().await.map_err(backend)?;
        conn.done();
        Ok(())
    }

    /// An `update` that applies only while the member is as the caller read
    /// it (a status, an epoch), so no row means it changed since: `Stale`.
    /// Whether the member exists and is still at `epoch`: a link issued at
    /// an older one died with a new password, address or status.
    async fn still_at_epoch(&self, member_id: MemberId, epoch: i64) -> StoreResult<bool> {
        let current: Option<i64> = sqlx::query_scalar("SELECT epoch FROM members WHERE id = ?")
            .bind(member_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        Ok(current == Some(epoch))
    }

    /// Writes a credential (the password hash, the address) with one of
    /// `statements`, `[any epoch, at epoch]`, and bumps the epoch: every
    /// session ends and every link dies. With `epoch`, checked and bumped in
    /// one write transaction: of two writes at one epoch, the second finds
    /// it moved on (`Stale`). The epoch is bound as text; the INTEGER column
    /// compares it as a number.
    async fn write_credential(
        &self,
        id: MemberId,
        statements: [&'static str; 2],
        value: String,
        epoch: Option<i64>,
        now: i64,
    ) -> StoreResult<()> {
        match epoch {
            None => self.update(id, statements[0], vec![value], true, now).await,
            Some(epoch) => {
                let binds = vec![value, epoch.to_string()];
                self.update_status(id, statements[1], binds, true, now)
                    .await
            }
        }
    }

    async fn update_status(
        &self,
        id: MemberId,
        statement: &'static str,
        binds: Vec<String>,
        bump_epoch: bool,
        now: i64,
    ) -> StoreResult<()> {
        match self.update(id, statement, binds, bump_epoch, now).await {
            Err(StoreError::NotFound) => Err(StoreError::Stale),
            other => other,
        }
    }
}

impl MemberStore for SqliteStore {
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            // Pooled connections keep a removed or replaced file open and
            // answer as if nothing happened; new ones could not open it.
            if file_id(&self.path).ok() != Some(self.file_id) {
                return Err(StoreError::Backend(format!(
                    "{} was removed or replaced while the gateway runs: restore it, or restart the gateway",
                    self.path.display()
                )));
            }
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map(|_| ())
                .map_err(backend)
        })
    }

    fn create_member(&self, new: NewMember, now: i64) -> BoxFuture<'_, StoreResult<Member>> {
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO members (email, first_name, last_name, password_hash, status, created_at) \
                 VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            )
            .bind(&new.email)
            .bind(&new.first_name)
            .bind(&new.last_name)
            .bind(&new.password_hash)
            .bind(new.status.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            SqliteStore::changed(&mut tx, id, false, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(Member {
                id,
                email: new.email,
                first_name: new.first_name,
                last_name: new.last_name,
                password_hash: new.password_hash,
                status: new.status,
                epoch: 0,
                grants: 0,
                created_at: now,
                last_login_at: None,
                groups: Vec::new(),
            })
        })
    }

    fn member_by_email(&self, canonical_email: &str) -> BoxFuture<'_, StoreResult<Option<Member>>> {
        let email = canonical_email.to_owned();
        Box::pin(async move {
            let sql = format!("SELECT {MEMBER_COLUMNS} FROM members m WHERE m.email = ?");
            let row = sqlx::query(&sql)
                .bind(email)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(member_from).transpose()
        })
    }

    fn member_by_id(&self, id: MemberId) -> BoxFuture<'_, StoreResult<Option<Member>>> {
        Box::pin(async move {
            let sql = format!("SELECT {MEMBER_COLUMNS} FROM members m WHERE m.id = ?");
            let row = sqlx::query(&sql)
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(member_from).transpose()
        })
    }

    fn list_members(&self) -> BoxFuture<'_, StoreResult<Vec<Member>>> {
        Box::pin(async move {
            let sql = format!("SELECT {MEMBER_COLUMNS} FROM members m ORDER BY m.id");
            let rows = sqlx::query(&sql)
                .fetch_all(&self.pool)
                .await
                .map_err(backend)?;
            rows.iter().map(member_from).collect()
        })
    }

    fn set_password(
        &self,
        id: MemberId,
        hash: &str,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.write_credential(
            id,
            [
                "UPDATE members SET password_hash = ? WHERE id = ?",
                "UPDATE members SET password_hash = ? WHERE epoch = ? AND id = ?",
            ],
            hash.to_owned(),
            epoch,
            now,
        ))
    }

    fn rehash_password(
        &self,
        id: MemberId,
        old: &str,
        new: &str,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        let (old, new) = (old.to_owned(), new.to_owned());
        Box::pin(async move {
            let done = sqlx::query(
                "UPDATE members SET password_hash = ? WHERE id = ? AND password_hash = ?",
            )
            .bind(new)
            .bind(id)
            .bind(old)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(done.rows_affected() == 1)
        })
    }

    fn set_status(
        &self,
        id: MemberId,
        from: Status,
        to: Status,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let bump = to != Status::Active;
        // A disable remembers what it found, for `enable`.
        let statement = if to == Status::Disabled {
            "UPDATE members SET status = ?, status_before_disable = status WHERE status = ? AND id = ?"
        } else {
            "UPDATE members SET status = ? WHERE status = ? AND id = ?"
        };
        let binds = vec![to.as_str().to_owned(), from.as_str().to_owned()];
        Box::pin(self.update_status(id, statement, binds, bump, now))
    }

    fn enable(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.update_status(
            id,
            "UPDATE members SET status = COALESCE(status_before_disable, 'active'), \
             status_before_disable = NULL WHERE status = 'disabled' AND id = ?",
            Vec::new(),
            false,
            now,
        ))
    }

    fn set_name(
        &self,
        id: MemberId,
        first: &str,
        last: &str,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let binds = vec![first.to_owned(), last.to_owned()];
        Box::pin(self.update(
            id,
            "UPDATE members SET first_name = ?, last_name = ? WHERE id = ?",
            binds,
            false,
            now,
        ))
    }

    fn record_login(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query("UPDATE members SET last_login_at = ? WHERE id = ?")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn add_to_group(&self, id: MemberId, group: &str, now: i64) -> BoxFuture<'_, StoreResult<()>> {
        let group = group.to_owned();
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM members WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
            let added = sqlx::query(
                "INSERT OR IGNORE INTO member_groups (member_id, group_name) VALUES (?, ?)",
            )
            .bind(id)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if added.rows_affected() > 0 {
                sqlx::query("UPDATE members SET grants = grants + 1 WHERE id = ?")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            }
            SqliteStore::changed(&mut tx, id, false, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(())
        })
    }

    fn remove_from_group(
        &self,
        id: MemberId,
        group: &str,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let group = group.to_owned();
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let done =
                sqlx::query("DELETE FROM member_groups WHERE member_id = ? AND group_name = ?")
                    .bind(id)
                    .bind(group)
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            SqliteStore::changed(&mut tx, id, true, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(())
        })
    }

    fn list_groups(&self) -> BoxFuture<'_, StoreResult<Vec<(String, i64)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT group_name, count(*) AS n FROM member_groups GROUP BY group_name ORDER BY group_name",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get("group_name").map_err(backend)?,
                        r.try_get("n").map_err(backend)?,
                    ))
                })
                .collect()
        })
    }

    fn create_session(&self, s: SessionRecord) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let inserted = insert_session(&s)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Stale);
            }
            Ok(())
        })
    }

    fn session(&self, id_hash: [u8; 32]) -> BoxFuture<'_, StoreResult<Option<SessionRecord>>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM sessions WHERE id_hash = ?")
                .bind(&id_hash[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
            row.as_ref().map(session_from).transpose()
        })
    }

    fn touch_session(&self, id_hash: [u8; 32], now: i64) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query("UPDATE sessions SET last_seen_at = ? WHERE id_hash = ?")
                .bind(now)
                .bind(&id_hash[..])
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn delete_session(&self, id_hash: [u8; 32]) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
                .bind(&id_hash[..])
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn end_session(
        &self,
        id_hash: [u8; 32],
        member: MemberId,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            sqlx::query("DELETE FROM sessions WHERE id_hash = ?")
                .bind(&id_hash[..])
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            SqliteStore::changed(&mut tx, member, false, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(())
        })
    }

    fn replace_session(
        &self,
        old: [u8; 32],
        new: SessionRecord,
        old_expires_by: i64,
    ) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let marked = sqlx::query(
                "UPDATE sessions SET replaced = 1, expires_at = min(expires_at, ?) \
                 WHERE id_hash = ? AND replaced = 0",
            )
            .bind(old_expires_by)
            .bind(&old[..])
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            if marked.rows_affected() == 0 {
                tx.rollback().await.map_err(backend)?;
                conn.done();
                return Ok(false);
            }
            let inserted = insert_session(&new)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            if inserted.rows_affected() == 0 {
                // The member changed meanwhile: the old id stays as it was,
                // and its next request finds the epoch moved on.
                tx.rollback().await.map_err(backend)?;
                conn.done();
                return Err(StoreError::Stale);
            }
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(true)
        })
    }

    fn delete_member_sessions(&self, id: MemberId, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let done = sqlx::query("DELETE FROM sessions WHERE member_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            SqliteStore::changed(&mut tx, id, false, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(done.rows_affected())
        })
    }

    fn delete_expired(&self, now: i64) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let sessions = sqlx::query("DELETE FROM sessions WHERE expires_at <= ?")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            sqlx::query("DELETE FROM tokens WHERE expires_at <= ?")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            sqlx::query("DELETE FROM email_changes WHERE expires_at <= ?")
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            sqlx::query("DELETE FROM member_changes WHERE at <= ?")
                .bind(now - 86_400)
                .execute(&self.pool)
                .await
                .map_err(backend)?;
            // A registration, not an invitation: it has a password. Its
            // groups, sessions and tokens go with it (ON DELETE CASCADE).
            sqlx::query(
                "DELETE FROM members WHERE status = 'pending' AND password_hash IS NOT NULL \
                 AND created_at <= ? AND NOT EXISTS \
                 (SELECT 1 FROM tokens WHERE tokens.member_id = members.id AND tokens.expires_at > ?)",
            )
            .bind(now - super::UNCONFIRMED_KEPT_FOR)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(sessions.rows_affected())
        })
    }

    fn create_token(
        &self,
        purpose: TokenPurpose,
        token_hash: [u8; 32],
        member_id: MemberId,
        epoch: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO tokens (token_hash, purpose, member_id, epoch, expires_at) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&token_hash[..])
            .bind(purpose.as_str())
            .bind(member_id)
            .bind(epoch)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn take_token(
        &self,
        purpose: TokenPurpose,
        token_hash: [u8; 32],
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Option<Taken>>> {
        Box::pin(async move {
            // DELETE ... RETURNING makes the token single-use even under races.
            let row = sqlx::query(
                "DELETE FROM tokens WHERE token_hash = ? AND purpose = ? \
                 RETURNING member_id, epoch, expires_at",
            )
            .bind(&token_hash[..])
            .bind(purpose.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            let Some(row) = row else { return Ok(None) };
            let member_id: i64 = row.try_get("member_id").map_err(backend)?;
            let epoch: i64 = row.try_get("epoch").map_err(backend)?;
            let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
            if expires_at <= now {
                return Ok(None);
            }
            let live = self.still_at_epoch(member_id, epoch).await?;
            Ok(live.then_some(Taken { member_id, epoch }))
        })
    }

    fn changes_since(&self, after: i64) -> BoxFuture<'_, StoreResult<(Vec<MemberId>, i64)>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT seq, member_id FROM member_changes WHERE seq > ? ORDER BY seq")
                    .bind(after)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(backend)?;
            let mut newest = after;
            let mut members = Vec::with_capacity(rows.len());
            for row in &rows {
                newest = newest.max(row.try_get("seq").map_err(backend)?);
                members.push(row.try_get("member_id").map_err(backend)?);
            }
            if rows.is_empty() && after == 0 {
                newest = sqlx::query_scalar("SELECT coalesce(max(seq), 0) FROM member_changes")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(backend)?;
            }
            members.sort_unstable();
            members.dedup();
            Ok((members, newest))
        })
    }

    fn delete_member(
        &self,
        id: MemberId,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Deleted>> {
        Box::pin(async move {
            let mut conn = self.write_connection().await?;
            let mut tx = conn.begin_write().await?;
            let current: Option<i64> = sqlx::query_scalar("SELECT epoch FROM members WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(backend)?;
            let refused = match (current, epoch) {
                (None, _) => Some(StoreError::NotFound),
                (Some(current), Some(expected)) if current != expected => Some(StoreError::Stale),
                _ => None,
            };
            if let Some(refused) = refused {
                tx.rollback().await.map_err(backend)?;
                conn.done();
                return Err(refused);
            }
            let sessions: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sessions WHERE member_id = ? AND replaced = 0 AND expires_at > ?",
            )
            .bind(id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(backend)?;
            // Deleted here, not left to ON DELETE CASCADE: the links are counted.
            let links = sqlx::query("DELETE FROM tokens WHERE member_id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            // Its sessions and groups go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM members WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
            // member_changes has no foreign key: the record outlives the member.
            SqliteStore::changed(&mut tx, id, false, now).await?;
            tx.commit().await.map_err(backend)?;
            conn.done();
            Ok(Deleted {
                sessions: sessions.unsigned_abs(),
                links: links.rows_affected(),
            })
        })
    }
    fn create_email_change(
        &self,
        token_hash: [u8; 32],
        member_id: MemberId,
        new_email: &str,
        epoch: i64,
        expires_at: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let new_email = new_email.to_owned();
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO email_changes (token_hash, member_id, new_email, epoch, expires_at) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(&token_hash[..])
            .bind(member_id)
            .bind(new_email)
            .bind(epoch)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(backend)?;
            Ok(())
        })
    }

    fn take_email_change(
        &self,
        token_hash: [u8; 32],
        now: i64,
    ) -> BoxFuture<'_, StoreResult<Option<EmailChange>>> {
        Box::pin(async move {
            // DELETE ... RETURNING: single-use even under races, as tokens are.
            let row = sqlx::query(
                "DELETE FROM email_changes WHERE token_hash = ? \
                 RETURNING member_id, new_email, epoch, expires_at",
            )
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
            let Some(row) = row else { return Ok(None) };
            let expires_at: i64 = row.try_get("expires_at").map_err(backend)?;
            if expires_at <= now {
                return Ok(None);
            }
            let change = EmailChange {
                member_id: row.try_get("member_id").map_err(backend)?,
                new_email: row.try_get("new_email").map_err(backend)?,
                epoch: row.try_get("epoch").map_err(backend)?,
            };
            let live = self.still_at_epoch(change.member_id, change.epoch).await?;
            Ok(live.then_some(change))
        })
    }

    fn set_email(
        &self,
        id: MemberId,
        canonical_email: &str,
        epoch: Option<i64>,
        now: i64,
    ) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.write_credential(
            id,
            [
                "UPDATE members SET email = ? WHERE id = ?",
                "UPDATE members SET email = ? WHERE epoch = ? AND id = ?",
            ],
            canonical_email.to_owned(),
            epoch,
            now,
        ))
    }
}
