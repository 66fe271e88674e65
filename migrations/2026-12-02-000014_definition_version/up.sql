-- Every saga records the version of its flow it started on, and finishes on that shape
-- whatever is deployed later. The rows that exist were all started on the first (and so
-- far only) version of the two built-in flows.
ALTER TABLE sagas ADD COLUMN definition_version integer NOT NULL DEFAULT 1;
