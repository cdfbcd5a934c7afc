-- The read-only login role the workers connect as (C2S_DATABASE_URL in docker-compose.yml). Loaded by
-- docker-compose after the demo tables (/docker-entrypoint-initdb.d/20-reader-role.sql runs after
-- 10-demo.sql), into the database that holds them. Idempotent: safe to load twice.
-- The password is a demo value: change it here and in C2S_DATABASE_URL for anything but a local demo.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chat2sql_reader') THEN
    CREATE ROLE chat2sql_reader LOGIN PASSWORD 'chat2sql-reader-demo';
  END IF;
END
$$;

-- Belt and braces: the worker already runs every query in a READ ONLY transaction.
ALTER ROLE chat2sql_reader SET default_transaction_read_only = on;

DO $$
BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO chat2sql_reader', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO chat2sql_reader;
GRANT SELECT ON customers, products, orders TO chat2sql_reader;
