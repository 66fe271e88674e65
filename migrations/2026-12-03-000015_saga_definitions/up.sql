-- Flows as versioned data. A version is immutable once stored: a changed flow is a new
-- version, and every saga finishes on the version it started on (sagas.definition_version).
-- The built-in flows are stored at start from the documents embedded in the binary, as
-- version 1 of `order` and `coupon_use`, which is what every existing saga row ran on.
CREATE TABLE saga_definitions (
    name text NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    document jsonb NOT NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- The version new sagas of a flow start on when the request pins none. Without a row
-- here, the highest version is the default.
CREATE TABLE saga_definition_defaults (
    name text PRIMARY KEY,
    version integer NOT NULL,
    set_by text NOT NULL,
    set_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (name, version) REFERENCES saga_definitions (name, version)
);

-- Every replica keeps the definitions in memory and reloads them when told.
CREATE FUNCTION saga_definitions_changed() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('sagaflow_definitions', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER saga_definitions_changed AFTER INSERT OR UPDATE OR DELETE ON saga_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION saga_definitions_changed();
CREATE TRIGGER saga_definition_defaults_changed AFTER INSERT OR UPDATE OR DELETE ON saga_definition_defaults
    FOR EACH STATEMENT EXECUTE FUNCTION saga_definitions_changed();

-- Finding whether a version is still used by a saga that is not over.
CREATE INDEX sagas_definition_version_live ON sagas (definition, definition_version)
    WHERE status NOT IN ('COMPLETED', 'COMPENSATED', 'CANCELLED', 'RESOLVED');
