-- Bare-SQL baselines for bench/writes.sh, in pgbench's database: the least a payment
-- costs this PostgreSQL in the ledger's shape (an idempotency key, the payment, two
-- entries, two account moves), with no checks, no guards and no server in front.
CREATE TABLE bare_accounts (id int PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL);
CREATE TABLE bare_keys (client_id int, idempotency_key text, resource_id uuid NOT NULL,
                        PRIMARY KEY (client_id, idempotency_key));
CREATE TABLE bare_payments (id uuid PRIMARY KEY, idempotency_key text NOT NULL, from_id int NOT NULL,
                            to_id int NOT NULL, amount bigint NOT NULL,
                            created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE bare_entries (id uuid PRIMARY KEY, payment_id uuid NOT NULL, account_id int NOT NULL,
                           amount bigint NOT NULL);
INSERT INTO bare_accounts SELECT g, 0, 0 FROM generate_series(1, 200) AS g;
ANALYZE;
