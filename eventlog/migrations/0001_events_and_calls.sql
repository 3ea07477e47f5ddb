-- The event log and the call history, as the first schema.sql made them (IF NOT EXISTS: a SQLite
-- file from before versioned migrations is adopted as version 1 as it is). Written only by
-- EventLog's writer thread. $id, $text and $paging_column are filled in per database
-- (eventlog/dialect.py); statements end with a semicolon at the end of a line.
CREATE TABLE IF NOT EXISTS events (
    id $id,
    at $text NOT NULL,                 -- ISO 8601 UTC with Z
    call_control_id $text,
    event $text NOT NULL,              -- dotted name, e.g. webhook.received, injection.finished
    data $text NOT NULL DEFAULT '{}'   -- JSON object
);
CREATE INDEX IF NOT EXISTS events_by_call ON events (call_control_id, id);
CREATE INDEX IF NOT EXISTS events_by_name ON events (event, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at, id);

CREATE TABLE IF NOT EXISTS calls (
    call_control_id $text PRIMARY KEY,
    $paging_column
    stream_id $text,
    status $text NOT NULL,
    data $text NOT NULL DEFAULT '{}',  -- JSON: the last Stream view of the call
    created_at $text NOT NULL,
    updated_at $text NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_stream ON calls (stream_id);
