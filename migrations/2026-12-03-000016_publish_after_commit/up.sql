-- The task that commits a transition publishes its outbox rows itself, and the relay only
-- sweeps what is left on a timer: nothing needs waking at commit any more. A NOTIFY takes
-- a database-wide lock at commit, so every writer of the outbox queued behind it.
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION sagaflow_outbox_notify();
