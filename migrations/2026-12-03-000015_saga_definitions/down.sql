DROP INDEX sagas_definition_version_live;
DROP TABLE saga_definition_defaults;
DROP TABLE saga_definitions;
DROP FUNCTION saga_definitions_changed();
