-- A member's request to change their email address, waiting for the link
-- mailed to the new address. Its own table rather than a `tokens` purpose:
-- it carries the new address, and SQLite cannot widen `tokens`' CHECK
-- without rebuilding the table. Like a token, only the SHA-256 of the link's
-- secret is stored, and the request dies with the member's epoch.
CREATE TABLE email_changes (
    token_hash BLOB    PRIMARY KEY,
    member_id  INTEGER NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    new_email  TEXT    NOT NULL,
    epoch      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX email_changes_by_member ON email_changes (member_id);
