-- Bulk operator actions: a job names its sagas once, when it is created (the filter's
-- matches at that moment), and the orchestrator works through them, recording each one's
-- outcome, so progress is visible and a crashed job resumes where it stopped.
CREATE TABLE bulk_jobs (
    id uuid PRIMARY KEY,
    action text NOT NULL CHECK (action IN ('retry', 'cancel')),
    filter jsonb NOT NULL,
    reason text,
    requested_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE bulk_job_items (
    job_id uuid NOT NULL REFERENCES bulk_jobs (id) ON DELETE CASCADE,
    saga_id uuid NOT NULL,
    outcome text NOT NULL DEFAULT 'pending'
        CHECK (outcome IN ('pending', 'done', 'skipped', 'failed')),
    detail text,
    PRIMARY KEY (job_id, saga_id)
);
CREATE INDEX bulk_job_items_pending ON bulk_job_items (job_id, saga_id) WHERE outcome = 'pending';
