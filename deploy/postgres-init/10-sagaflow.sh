#!/bin/bash
# Runs once, when the Postgres volume is first initialised: the application's own role
# (no superuser, no CREATEDB, no CREATEROLE), owning the one database it uses.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  --set app_password="$SAGAFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE sagaflow LOGIN PASSWORD :'app_password' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE DATABASE sagaflow OWNER sagaflow;
SQL
