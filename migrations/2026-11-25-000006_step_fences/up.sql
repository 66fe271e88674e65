-- Step fences: one row per (saga, step) that orders a step's forward command against its
-- fence (or compensation, which fences too). The forward command marks `applied_at` only
-- while `fenced_at` is unset; a fence sets `fenced_at` and reads `applied_at`. Both write the
-- same row, so Postgres serialises them: either the original took effect first and the fence
-- reports it, or the fence came first and the original is refused for ever.
ALTER TABLE compensated_steps RENAME TO step_fences;
ALTER INDEX compensated_steps_pkey RENAME TO step_fences_pkey;
ALTER TABLE step_fences RENAME COLUMN compensated_at TO fenced_at;
ALTER TABLE step_fences ALTER COLUMN fenced_at DROP NOT NULL;
ALTER TABLE step_fences ALTER COLUMN fenced_at DROP DEFAULT;
ALTER TABLE step_fences ADD COLUMN applied_at timestamptz;

-- A fence looks up the forward reply of its step among the saga's inbox rows.
CREATE INDEX processed_commands_saga ON processed_commands (saga_id);
