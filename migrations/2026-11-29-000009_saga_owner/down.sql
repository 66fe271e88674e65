ALTER TABLE sagas DROP COLUMN started_by;
