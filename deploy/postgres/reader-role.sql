-- The one script that prepares a database for the workers: the least-privilege login role they connect
-- as (C2S_DATABASE_URL) and the isolation between the users whose queries all run as that one role.
-- Load it into every database the workers query, as a superuser (or the owner of the tables and a
-- role with CREATEROLE):  psql -v ON_ERROR_STOP=1 -d <database> -f deploy/postgres/reader-role.sql
-- docker-compose loads it after the demo tables; deploy/local-cluster.sh and the tests load it too.
-- Idempotent: safe to load again (after adding tables, or installing pg_stat_statements).
-- The password is a demo value: change it here and in C2S_DATABASE_URL for anything but a local demo.

-- The role. Loaded concurrently into several databases (the tests do), so a lost race is fine.
DO $$
BEGIN
  CREATE ROLE chat2sql_reader LOGIN PASSWORD 'chat2sql-reader-demo';
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;
END
$$;
-- No attribute that lets SQL escape the database's privileges (a superuser can run COPY … TO PROGRAM,
-- REPLICATION can read every table's changes through a logical slot, BYPASSRLS skips row security).
-- The worker refuses to start with any of them, or with membership in the pg_* roles that do the same.
ALTER ROLE chat2sql_reader NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
-- Belt and braces: the worker already runs every query in a READ ONLY transaction.
ALTER ROLE chat2sql_reader SET default_transaction_read_only = on;

-- What it may read: this database's public tables, now and later (tables created by the role that loads
-- this script; run it again, or GRANT, for tables of other owners).
DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO chat2sql_reader', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO chat2sql_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO chat2sql_reader;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO chat2sql_reader;

-- Isolation between users. Every user's query runs as chat2sql_reader, and PostgreSQL shows a role the
-- SQL text of all its own backends and lets it cancel or terminate them. So, in this database:
-- * the functions behind pg_stat_activity (and pg_stat_replication/ssl/gssapi, which use the same one)
--   and the per-backend query text are taken from PUBLIC and given to pg_read_all_stats (pg_monitor's
--   members keep their views; a plain role now gets "permission denied" instead of others' SQL);
-- * the signalling functions are taken from PUBLIC and given to pg_signal_backend (the worker never
--   needs them: it cancels a statement by closing its connection);
-- * set_config() is taken from PUBLIC: a statement could use it to turn off, mid-statement, the timers
--   that stop it once the worker cancelled it (SET still works; an application of this database that
--   calls set_config() needs GRANT EXECUTE ON FUNCTION set_config(text, text, boolean) TO its role).
DO $$
DECLARE
  f regprocedure;
  grantee text;
BEGIN
  FOR f, grantee IN
    SELECT p.oid::regprocedure,
           CASE WHEN p.proname IN ('pg_cancel_backend', 'pg_terminate_backend') THEN 'pg_signal_backend'
                WHEN p.proname = 'set_config' THEN NULL
                ELSE 'pg_read_all_stats' END
    FROM pg_proc p
    WHERE p.pronamespace = 'pg_catalog'::regnamespace
      AND p.proname IN ('pg_stat_get_activity', 'pg_stat_get_backend_activity',
                        'pg_cancel_backend', 'pg_terminate_backend', 'set_config')
  LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    IF grantee IS NOT NULL THEN
      EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f, grantee);
    END IF;
  END LOOP;
END
$$;

-- * pg_stat_statements, where it is installed, keeps the text of every query by the role that ran it:
--   the same role for all our users. Taken from PUBLIC, given to pg_read_all_stats. (Installed after this
--   script ran? The worker refuses to start until it is loaded again.)
DO $$
DECLARE
  schema_name text;
  f regprocedure;
BEGIN
  SELECT n.nspname INTO schema_name FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
  WHERE e.extname = 'pg_stat_statements';
  IF schema_name IS NULL THEN
    RETURN;
  END IF;
  -- From PUBLIC, and from the role itself (GRANT … ON ALL TABLES above included this view).
  EXECUTE format('REVOKE SELECT ON %I.pg_stat_statements FROM PUBLIC, chat2sql_reader', schema_name);
  EXECUTE format('GRANT SELECT ON %I.pg_stat_statements TO pg_read_all_stats', schema_name);
  FOR f IN
    SELECT p.oid::regprocedure FROM pg_proc p
    WHERE p.pronamespace = schema_name::regnamespace AND p.proname = 'pg_stat_statements'
  LOOP
    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pg_read_all_stats', f);
  END LOOP;
END
$$;
