-- Catalogue D1: a session gets a new id at every privilege change. A
-- member's `grants` counts the privileges they have gained (a group); a
-- session started at an older count is renewed under a new id at its next
-- request. The old record stays, marked `replaced` and expiring within a
-- minute, so a request still in flight with the old cookie is treated as
-- anonymous without its answer deleting the new cookie in the browser.
ALTER TABLE members ADD COLUMN grants INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN grants INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN replaced INTEGER NOT NULL DEFAULT 0;
