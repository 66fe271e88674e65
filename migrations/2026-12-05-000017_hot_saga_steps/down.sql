ALTER TABLE sagas RESET (fillfactor);
DROP INDEX sagas_quarantined;
CREATE INDEX sagas_quarantined ON sagas (updated_at) WHERE quarantine IS NOT NULL;
DROP INDEX sagas_status_changed;
CREATE INDEX sagas_status_updated ON sagas (status, updated_at);
ALTER TABLE sagas DROP COLUMN status_changed_at;

ALTER TABLE sagas ADD COLUMN next_timer_at timestamptz;
UPDATE sagas SET next_timer_at = t.fire_at FROM saga_timers t WHERE t.saga_id = sagas.id;
CREATE INDEX sagas_next_timer ON sagas (next_timer_at) WHERE next_timer_at IS NOT NULL;
DROP TABLE saga_timers;
