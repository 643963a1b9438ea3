-- The outcome store schema version 1, exactly as router/schema.py had it (for the migration test).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS phases (
    phase       INTEGER PRIMARY KEY,       -- 1, 2, ...: a new one for each config change that can move users
    experiment  TEXT NOT NULL,
    started_at  REAL NOT NULL,             -- Unix seconds
    config_key  TEXT NOT NULL,             -- hash of what can move users: strategy, salt, variants, weights
    config_json TEXT NOT NULL              -- that configuration, as JSON
);

CREATE TABLE IF NOT EXISTS exposures (
    id               INTEGER PRIMARY KEY,
    ts               REAL NOT NULL,        -- Unix seconds, when the request arrived
    request_id       TEXT NOT NULL UNIQUE,
    experiment       TEXT NOT NULL,
    phase            INTEGER NOT NULL,
    user_id          TEXT NOT NULL,
    variant          TEXT NOT NULL,        -- the variant that answered (the fallback variant after a fallback)
    assigned_variant TEXT NOT NULL,        -- the variant the strategy or override chose
    strategy         TEXT NOT NULL,        -- 'hash' | 'random'
    assignment       TEXT NOT NULL,        -- 'strategy' | 'override' | 'fallback'; only 'strategy' is analysed
    status           INTEGER NOT NULL,     -- HTTP status the router answered with
    latency_ms       REAL NOT NULL,        -- router-side time to answer
    k                INTEGER NOT NULL,
    items            TEXT NOT NULL,        -- JSON array of the item ids shown, best first ('[]' on error)
    error            TEXT                  -- NULL, or the error kind: 'timeout' | 'unavailable' | 'bad_response'
);
CREATE INDEX IF NOT EXISTS exposures_phase_variant ON exposures (phase, variant);
CREATE INDEX IF NOT EXISTS exposures_user ON exposures (user_id, phase, ts);

CREATE TABLE IF NOT EXISTS feedback (
    id            INTEGER PRIMARY KEY,
    ts            REAL NOT NULL,
    request_id    TEXT NOT NULL,           -- the exposure the event is attributed to
    experiment    TEXT NOT NULL,
    phase         INTEGER NOT NULL,
    user_id       TEXT NOT NULL,
    variant       TEXT NOT NULL,
    assignment    TEXT NOT NULL,           -- copied from the exposure, so analysis can exclude the same rows
    item_id       INTEGER NOT NULL,
    position      INTEGER,                 -- 0-based rank of item_id in the exposure's list; NULL if not shown
    event         TEXT NOT NULL,           -- 'click' | 'watch' | 'rating' | ...
    value         REAL,
    attributed_by TEXT NOT NULL            -- 'request_id' | 'user' (the user's latest exposure in the phase)
);
CREATE INDEX IF NOT EXISTS feedback_phase_variant ON feedback (phase, variant);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);

CREATE TABLE IF NOT EXISTS variant_info (
    phase      INTEGER NOT NULL,
    variant    TEXT NOT NULL,
    info_json  TEXT NOT NULL,              -- the backend's GET /info: algorithm, offline metrics, version
    fetched_at REAL NOT NULL,
    PRIMARY KEY (phase, variant)
);
