DROP INDEX sagas_quarantined;
ALTER TABLE sagas DROP COLUMN quarantine;
