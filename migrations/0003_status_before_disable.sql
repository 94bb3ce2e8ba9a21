-- A disable remembers the status it found, and enabling goes back to it: a
-- member who had not confirmed their address, or was waiting for approval,
-- is not made active by a disable and an enable. NULL: active (or a member
-- disabled before this column existed).
ALTER TABLE members ADD COLUMN status_before_disable TEXT;
