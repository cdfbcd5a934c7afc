-- The demo schema and data (the same customers / products / orders as the embedded SQLite demo),
-- loaded by docker-compose (/docker-entrypoint-initdb.d) and by deploy/local-cluster.sh.
-- Idempotent: safe to load twice. A read-only role for the workers is created by the loader.
CREATE TABLE IF NOT EXISTS customers (
  id integer PRIMARY KEY, name text NOT NULL, country text NOT NULL, created_at date NOT NULL);
CREATE TABLE IF NOT EXISTS products (
  id integer PRIMARY KEY, name text NOT NULL, category text NOT NULL, price double precision NOT NULL);
CREATE TABLE IF NOT EXISTS orders (
  id integer PRIMARY KEY,
  customer_id integer NOT NULL REFERENCES customers(id),
  product_id integer NOT NULL REFERENCES products(id),
  quantity integer NOT NULL,
  amount double precision NOT NULL,
  ordered_at timestamp NOT NULL);

INSERT INTO customers
SELECT i, 'Customer ' || i,
       CASE i % 5 WHEN 0 THEN 'CN' WHEN 1 THEN 'US' WHEN 2 THEN 'DE' WHEN 3 THEN 'BR' ELSE 'JP' END,
       date '2024-01-01' + i * 7
FROM generate_series(1, 50) AS i
ON CONFLICT (id) DO NOTHING;

INSERT INTO products
SELECT i, 'Product ' || i,
       CASE i % 4 WHEN 0 THEN 'books' WHEN 1 THEN 'games' WHEN 2 THEN 'tools' ELSE 'food' END,
       round((5 + (i * 37 % 200) + 0.99)::numeric, 2)
FROM generate_series(1, 20) AS i
ON CONFLICT (id) DO NOTHING;

INSERT INTO orders
SELECT i, 1 + (i * 17 % 50), 1 + (i * 7 % 20), 1 + i % 5,
       round(((1 + i % 5) * (5 + ((1 + (i * 7 % 20)) * 37 % 200) + 0.99))::numeric, 2),
       timestamp '2025-01-01' + i * interval '13 hours'
FROM generate_series(1, 1000) AS i
ON CONFLICT (id) DO NOTHING;
