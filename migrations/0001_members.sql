-- Members, their groups, sessions and single-use tokens.
-- Times are Unix seconds. Kept to SQL that PostgreSQL also accepts, except
-- AUTOINCREMENT and BLOB, which a PostgreSQL migration spells its own way.

CREATE TABLE members (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    email          TEXT    NOT NULL UNIQUE,
    first_name     TEXT    NOT NULL DEFAULT '',
    last_name      TEXT    NOT NULL DEFAULT '',
    password_hash  TEXT,
    status         TEXT    NOT NULL
                   CHECK (status IN ('pending', 'awaiting_approval', 'active', 'disabled')),
    epoch          INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    last_login_at  INTEGER
);

CREATE TABLE member_groups (
    member_id  INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    group_name TEXT    NOT NULL,
    PRIMARY KEY (member_id, group_name)
);

CREATE TABLE sessions (
    id_hash      BLOB    PRIMARY KEY,
    member_id    INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    epoch        INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX sessions_by_member ON sessions (member_id);

CREATE TABLE tokens (
    token_hash BLOB    PRIMARY KEY,
    purpose    TEXT    NOT NULL CHECK (purpose IN ('verify', 'reset')),
    member_id  INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- Every change to a member appends a row; gateways poll it to drop cached
-- sessions of members changed by another process (the admin CLI).
CREATE TABLE member_changes (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    member_id INTEGER NOT NULL,
    at        INTEGER NOT NULL
);
