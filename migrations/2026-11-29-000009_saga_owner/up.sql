-- The API key (its name) that started a saga, when a client did: a client reads only the
-- sagas and orders it started. NULL for sagas started by operators, admins, or with access
-- control off.
ALTER TABLE sagas ADD COLUMN started_by text;
