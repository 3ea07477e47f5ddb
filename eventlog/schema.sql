-- Durable event log and call history. Written only by EventLog's writer thread.
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,                 -- ISO 8601 UTC with Z
    call_control_id TEXT,
    event TEXT NOT NULL,              -- dotted name, e.g. webhook.received, injection.finished
    data TEXT NOT NULL DEFAULT '{}'   -- JSON object
);
CREATE INDEX IF NOT EXISTS events_by_call ON events (call_control_id, id);
CREATE INDEX IF NOT EXISTS events_by_name ON events (event, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at, id);

CREATE TABLE IF NOT EXISTS calls (
    call_control_id TEXT PRIMARY KEY,
    stream_id TEXT,
    status TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',  -- JSON: the last Stream view of the call
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_stream ON calls (stream_id);
