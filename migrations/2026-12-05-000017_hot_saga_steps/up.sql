-- A step's update of its saga row is HOT (heap-only: no new entry in any of the table's
-- indexes) when it changes no indexed column and the row's page has room. A step changes
-- the saga's state, version, timer and updated_at; the timer and updated_at were indexed,
-- so every step wrote an entry into each of the table's twelve indexes.
--
-- Timers move to a narrow table of their own (one row per saga that has one, written in
-- the step's statement), the indexes on updated_at give way to one on when the status last
-- changed (which a step that changes the status pays for anyway), and the table keeps room
-- on each page for the next version of its rows.

CREATE TABLE saga_timers (
    saga_id uuid        PRIMARY KEY,  -- no foreign key: its check would lock the saga's row
    fire_at timestamptz NOT NULL      -- the earliest deadline or retry of the saga's state
);
CREATE INDEX saga_timers_due ON saga_timers (fire_at);
INSERT INTO saga_timers (saga_id, fire_at)
    SELECT id, next_timer_at FROM sagas WHERE next_timer_at IS NOT NULL;
DROP INDEX sagas_next_timer;
ALTER TABLE sagas DROP COLUMN next_timer_at;

-- When the saga entered its status: the retention of finished sagas' history and the
-- statistics of sagas ended per minute read it.
ALTER TABLE sagas ADD COLUMN status_changed_at timestamptz;
UPDATE sagas SET status_changed_at = updated_at;
ALTER TABLE sagas ALTER COLUMN status_changed_at SET NOT NULL,
    ALTER COLUMN status_changed_at SET DEFAULT now();
DROP INDEX sagas_status_updated;
CREATE INDEX sagas_status_changed ON sagas (status, status_changed_at);
DROP INDEX sagas_quarantined;
CREATE INDEX sagas_quarantined ON sagas (id) WHERE quarantine IS NOT NULL;

ALTER TABLE sagas SET (fillfactor = 70);
