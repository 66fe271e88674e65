-- Retired versions start no new sagas; the sagas already on them finish. An application
-- retires its built-in versions when it ships a changed rule as a new version
-- (`retired_by` = 'built-in'); an admin retires any other, and may reinstate those.
CREATE TABLE saga_definition_retirements (
    name text NOT NULL,
    version integer NOT NULL,
    reason text NOT NULL,
    retired_by text NOT NULL,
    retired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version),
    FOREIGN KEY (name, version) REFERENCES saga_definitions (name, version) ON DELETE CASCADE
);

CREATE TRIGGER saga_definition_retirements_changed
    AFTER INSERT OR UPDATE OR DELETE ON saga_definition_retirements
    FOR EACH STATEMENT EXECUTE FUNCTION saga_definitions_changed();

-- A (name, version) once stored is never used again, even after its removal: the removal
-- leaves a tombstone with the hash of the document it held, and registration refuses the
-- pair for good. (A replica holding the old document could otherwise keep running it.)
CREATE TABLE saga_definition_tombstones (
    name text NOT NULL,
    version integer NOT NULL,
    document_sha256 text NOT NULL,
    removed_by text NOT NULL,
    removed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
