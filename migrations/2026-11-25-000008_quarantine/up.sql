-- A saga the engine cannot decode or move (an unknown definition, a state written by a newer
-- version during a rolling deploy) is quarantined with the reason, instead of failing the
-- batch it came in and every batch after it. It keeps its status; no timer fires for it and
-- no reply moves it until an operator clears the reason.
ALTER TABLE sagas ADD COLUMN quarantine text;
CREATE INDEX sagas_quarantined ON sagas (updated_at) WHERE quarantine IS NOT NULL;
