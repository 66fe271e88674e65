DROP INDEX processed_commands_saga;
DELETE FROM step_fences WHERE fenced_at IS NULL;
ALTER TABLE step_fences DROP COLUMN applied_at;
ALTER TABLE step_fences ALTER COLUMN fenced_at SET DEFAULT now();
ALTER TABLE step_fences ALTER COLUMN fenced_at SET NOT NULL;
ALTER TABLE step_fences RENAME COLUMN fenced_at TO compensated_at;
ALTER INDEX step_fences_pkey RENAME TO compensated_steps_pkey;
ALTER TABLE step_fences RENAME TO compensated_steps;
