-- The shared scheduling cycle (0005):
-- * a model's registered load time (NULL: measured, or size over bandwidth);
-- * a stable code beside each job's reason (the scheduler's typed wait reasons);
-- * the cycle's durable memory (reservations, displaced-by, jobs being
--   preempted, locality holds, fair-share usage), one JSON document.
ALTER TABLE models ADD COLUMN load_time_ms BIGINT;
ALTER TABLE jobs ADD COLUMN reason_code TEXT NOT NULL DEFAULT '';
CREATE TABLE scheduler_memory (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
