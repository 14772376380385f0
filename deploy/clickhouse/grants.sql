-- Ledgerline's ClickHouse users for current ClickHouse (24.x) on the `ledgerline` cluster: the
-- walls of docs/clickhouse-users.md (users.xml.in on 18.16), as roles and grants.
--
-- Applied by the init step of deploy/compose (init-clickhouse) and deploy/kubernetes
-- (Job ledgerline-init), as the administrator the server image creates from CLICKHOUSE_USER /
-- CLICKHOUSE_PASSWORD (with access management; the image then removes `default`). Safe to run
-- again: users and roles are created when missing, passwords reset, and each role's privileges
-- replaced by exactly these (WITH REPLACE OPTION), so a rerun also rotates passwords and undoes
-- hand-made grants.
--
-- Placeholders, substituted by the init step before the file reaches clickhouse-client:
--   @PROJECTOR_PASSWORD_SHA256@ @ARCHIVER_PASSWORD_SHA256@ @API_PASSWORD_SHA256@
--   @AUDITOR_PASSWORD_SHA256@
-- each the lower-case hex SHA-256 of that user's password (`printf %s "$password" | sha256sum`).
-- Hashes rather than the passwords: hex needs no quoting in SQL or sed, and the passwords never
-- reach the server's query_log. The init step refuses to run while any @...@ is left.
--
-- ON CLUSTER: users, roles and profiles live in each server's local access storage, so every
-- statement runs on both replicas (and on a replica that was down, when it comes back).
--
-- Check the result with `SHOW GRANTS FOR projector` (and archiver, api, auditor).

-- --- roles ---------------------------------------------------------------------------------
-- Privileges go to roles, users get roles: a second user with the same rights (a human
-- auditor, or a new service user during a rotation) is one GRANT of the role.
CREATE ROLE IF NOT EXISTS ledgerline_projector, ledgerline_archiver, ledgerline_api, ledgerline_auditor
    ON CLUSTER ledgerline;

-- The projector: database `ledgerline`, rebuildable from Kafka.
--  - migrations (consumers/src/clickhouse/migrate.rs, projector/schema.rs) with
--    `cluster = "ledgerline"`: CREATE DATABASE IF NOT EXISTS … ON CLUSTER, CREATE TABLE IF NOT
--    EXISTS … ON CLUSTER for schema_migrations, events, job_status (Replicated*MergeTree) and
--    the Distributed events_all / job_status_all (CREATE TABLE … AS events: SHOW COLUMNS on
--    the source); INSERT and SELECT on schema_migrations. `IF NOT EXISTS` still checks the
--    privilege, so CREATE DATABASE / CREATE TABLE are needed on every start.
--  - inserts into events and job_status; resume queries (max offset per partition).
GRANT ON CLUSTER ledgerline
    CREATE DATABASE, CREATE TABLE, INSERT, SELECT, SHOW TABLES, SHOW COLUMNS ON ledgerline.*
    TO ledgerline_projector WITH REPLACE OPTION;
--  - retention (projector/retention.rs): ALTER TABLE ledgerline.events DROP PARTITION, which
--    is the ALTER DELETE privilege; on `events` only, never job_status or schema_migrations.
--    A replicated table replicates the drop, so retention needs no ON CLUSTER.
GRANT ON CLUSTER ledgerline ALTER DELETE ON ledgerline.events TO ledgerline_projector;
--  - retention lists the partitions in system.parts. The image's config.xml sets
--    access_control_improvements.select_from_system_db_requires_grant, so this is needed; the
--    rows are further limited to tables the user may see (its own database).
GRANT ON CLUSTER ledgerline
    SELECT(database, `table`, `partition`, active) ON system.parts TO ledgerline_projector;
--  - its migrations run ON CLUSTER, which needs the CLUSTER privilege (the image's config sets
--    on_cluster_queries_require_cluster_grant). What each statement may do is still checked
--    against the grants above.
GRANT ON CLUSTER ledgerline CLUSTER ON *.* TO ledgerline_projector;
-- Not granted: DROP TABLE. Migration 2's rebuild of `events` (CREATE events_next, RENAME,
-- DROP events_prev) runs on a single server only; on a cluster migration 1 creates the final
-- layout and migration 2 runs nothing. A single-server deployment with these grants would
-- need `GRANT DROP TABLE ON ledgerline.events, ledgerline.events_next,
-- ledgerline.events_prev` (RENAME needs SELECT + DROP TABLE on its source).

-- The archiver: database `ledgerline_audit`, the tamper-evident archive. Its migrations
-- (archive/schema.rs: records, checkpoints, schema_migrations, ON CLUSTER), its inserts and
-- reads of its own chain heads. No ALTER (so no DELETE, UPDATE or DROP PARTITION), no DROP,
-- no TRUNCATE, no OPTIMIZE: unlike on 18.16 (see the caveat in docs/clickhouse-users.md), it
-- cannot change what it wrote.
GRANT ON CLUSTER ledgerline
    CREATE DATABASE, CREATE TABLE, INSERT, SELECT, SHOW TABLES, SHOW COLUMNS ON ledgerline_audit.*
    TO ledgerline_archiver WITH REPLACE OPTION;
GRANT ON CLUSTER ledgerline CLUSTER ON *.* TO ledgerline_archiver;

-- The readers. The API reads `ledgerline` through the Distributed tables events_all and
-- job_status_all; the shard's replicas run the remote part as the same user (the cluster has
-- a <secret>), so SELECT on ledgerline.* covers both.
GRANT ON CLUSTER ledgerline SELECT ON ledgerline.* TO ledgerline_api WITH REPLACE OPTION;
GRANT ON CLUSTER ledgerline SELECT ON ledgerline_audit.* TO ledgerline_auditor WITH REPLACE OPTION;
-- Nobody but the administrator gets a source privilege (URL, REMOTE, FILE, S3, …), so the
-- url() detour of docs/clickhouse-users.md is refused by the grants too.

-- --- users ---------------------------------------------------------------------------------
-- HOST ANY: the services connect from other containers or pods, whose addresses are not
-- fixed. Narrow it to the pods' network where it is known (`HOST IP '10.0.0.0/8'`), and keep
-- ClickHouse itself off other networks (deploy/kubernetes has a NetworkPolicy).
-- CREATE … IF NOT EXISTS leaves an existing user alone; the ALTER that follows sets the
-- password every run (rotation: change the secret, rerun the init step, restart the service).
-- Each user holds its role and nothing else: privileges granted to it by hand are revoked,
-- other roles replaced.
CREATE USER IF NOT EXISTS projector ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@PROJECTOR_PASSWORD_SHA256@' HOST ANY;
ALTER USER projector ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@PROJECTOR_PASSWORD_SHA256@' HOST ANY;
REVOKE ON CLUSTER ledgerline ALL ON *.* FROM projector;
GRANT ON CLUSTER ledgerline ledgerline_projector TO projector WITH REPLACE OPTION;

CREATE USER IF NOT EXISTS archiver ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@ARCHIVER_PASSWORD_SHA256@' HOST ANY;
ALTER USER archiver ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@ARCHIVER_PASSWORD_SHA256@' HOST ANY;
REVOKE ON CLUSTER ledgerline ALL ON *.* FROM archiver;
GRANT ON CLUSTER ledgerline ledgerline_archiver TO archiver WITH REPLACE OPTION;

CREATE USER IF NOT EXISTS api ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@API_PASSWORD_SHA256@' HOST ANY;
ALTER USER api ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@API_PASSWORD_SHA256@' HOST ANY;
REVOKE ON CLUSTER ledgerline ALL ON *.* FROM api;
GRANT ON CLUSTER ledgerline ledgerline_api TO api WITH REPLACE OPTION;

CREATE USER IF NOT EXISTS auditor ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@AUDITOR_PASSWORD_SHA256@' HOST ANY;
ALTER USER auditor ON CLUSTER ledgerline
    IDENTIFIED WITH sha256_hash BY '@AUDITOR_PASSWORD_SHA256@' HOST ANY;
REVOKE ON CLUSTER ledgerline ALL ON *.* FROM auditor;
GRANT ON CLUSTER ledgerline ledgerline_auditor TO auditor WITH REPLACE OPTION;

-- --- readers' settings ---------------------------------------------------------------------
-- As the `reader` profile of users.xml.in: readonly = 2, no writes or DDL whatever is granted
-- later, but per-query settings (the API's timeouts and row limits) still apply; readonly
-- itself cannot be changed at that level. On the users and on their roles, so any other user
-- given a reader role is read-only too. OR REPLACE: a rerun restores it exactly.
CREATE SETTINGS PROFILE OR REPLACE ledgerline_reader ON CLUSTER ledgerline
    SETTINGS readonly = 2
    TO api, auditor, ledgerline_api, ledgerline_auditor;
