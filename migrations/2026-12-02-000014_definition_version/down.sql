ALTER TABLE sagas DROP COLUMN definition_version;
