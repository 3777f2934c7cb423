-- The insert trigger's pg_notify made every transaction that wrote an event take
-- PostgreSQL's global notification lock at commit, held through the WAL flush: such
-- commits were serialised and group commit was lost. Services now wake their own relay
-- in-process after the commit, and send `NOTIFY outbox` for other instances outside the
-- business transaction (outbox::Wake).
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
DROP FUNCTION IF EXISTS outbox_notify();
