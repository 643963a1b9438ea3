-- The outcome store schema version 2, exactly as router/store/schema.py rendered it (for the migration test).
-- key/value facts about the store itself: schema_version
CREATE TABLE IF NOT EXISTS meta (
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (key)
);

-- one row per phase: a stretch of time with one configuration that can move users
CREATE TABLE IF NOT EXISTS phases (
    phase INTEGER NOT NULL,
    experiment TEXT NOT NULL,
    started_at REAL NOT NULL,
    config_key TEXT NOT NULL,
    config_json TEXT NOT NULL,
    PRIMARY KEY (phase)
);

-- one row per answered /recommend request, errors included
CREATE TABLE IF NOT EXISTS exposures (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL UNIQUE,
    experiment TEXT NOT NULL,
    phase INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    assigned_variant TEXT NOT NULL,
    strategy TEXT NOT NULL,
    assignment TEXT NOT NULL,
    propensity REAL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    k INTEGER NOT NULL,
    items TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS exposures_phase_variant ON exposures (phase, variant);
CREATE INDEX IF NOT EXISTS exposures_user ON exposures (user_id, phase, ts);

-- one row per accepted POST /feedback, attributed to an exposure
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    experiment TEXT NOT NULL,
    phase INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    variant TEXT NOT NULL,
    assignment TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    position INTEGER,
    event TEXT NOT NULL,
    value REAL,
    attributed_by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_phase_variant ON feedback (phase, variant);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback (request_id);

-- each backend's GET /info (offline metrics) per phase
CREATE TABLE IF NOT EXISTS variant_info (
    phase INTEGER NOT NULL,
    variant TEXT NOT NULL,
    info_json TEXT NOT NULL,
    fetched_at REAL NOT NULL,
    PRIMARY KEY (phase, variant)
);
