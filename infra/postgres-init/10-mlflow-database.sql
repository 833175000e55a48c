-- Runs once, when the postgres-data volume is first initialised (as POSTGRES_USER, owner of both).
-- POSTGRES_DB creates the Prefect database; MLflow's backend store gets its own.
CREATE DATABASE mlflow;
