#!/bin/bash
# Applies deploy/clickhouse/grants.sql to the `ledgerline` cluster: the ClickHouse users,
# roles and grants of the Ledgerline services. Run in the clickhouse/clickhouse-server image
# (for its clickhouse-client) by compose's init-clickhouse and, as a copy in the
# ledgerline-init ConfigMap, by the Kubernetes Job ledgerline-init; deploy/validate-manifests
# checks the copy is identical.
#
# Reads:
#   GRANTS_FILE                 the SQL (default /init/grants.sql)
#   CLICKHOUSE_HOST             a server of the cluster (ON CLUSTER reaches the others)
#   CLICKHOUSE_ADMIN_USER       the administrator the server image created (access management)
#   CLICKHOUSE_ADMIN_PASSWORD
#   PROJECTOR_PASSWORD ARCHIVER_PASSWORD API_PASSWORD AUDITOR_PASSWORD
#                               the services' passwords; the SQL gets only their SHA-256
# Safe to run again (see grants.sql): it resets passwords and grants to what the file says.
set -euo pipefail

die() { echo "apply-grants: $*" >&2; exit 1; }

grants_file="${GRANTS_FILE:-/init/grants.sql}"
[[ -r "$grants_file" ]] || die "cannot read $grants_file"

sha256_hex() { printf '%s' "$1" | sha256sum | cut -d' ' -f1; }

substitutions=()
for user in PROJECTOR ARCHIVER API AUDITOR; do
  variable="${user}_PASSWORD"
  password="${!variable:-}"
  [[ -n "$password" ]] || die "$variable is not set"
  # The example files' and the Secret's placeholders must never become real passwords.
  [[ "$password" != *REPLACE_ME* ]] || die "$variable is still a placeholder; set a real password"
  substitutions+=(-e "s/@${user}_PASSWORD_SHA256@/$(sha256_hex "$password")/g")
done
sql="$(sed "${substitutions[@]}" "$grants_file")"
if left="$(grep -o '@[A-Z0-9_]*@' <<<"$sql" | sort -u | tr '\n' ' ')" && [[ -n "$left" ]]; then
  die "placeholders left in $grants_file: $left"
fi

: "${CLICKHOUSE_HOST:?CLICKHOUSE_HOST is not set}"
: "${CLICKHOUSE_ADMIN_USER:?CLICKHOUSE_ADMIN_USER is not set}"
: "${CLICKHOUSE_ADMIN_PASSWORD:?CLICKHOUSE_ADMIN_PASSWORD is not set}"
[[ "$CLICKHOUSE_ADMIN_PASSWORD" != *REPLACE_ME* ]] || die "CLICKHOUSE_ADMIN_PASSWORD is still a placeholder"
# The password is on clickhouse-client's command line, visible in /proc to this container's
# processes only (its own PID namespace, running nothing else).
client=(clickhouse-client --host "$CLICKHOUSE_HOST" --user "$CLICKHOUSE_ADMIN_USER"
  --password "$CLICKHOUSE_ADMIN_PASSWORD")

# The servers may still be loading parts or waiting for Keeper; ON CLUSTER needs every replica.
for attempt in $(seq 1 90); do
  if "${client[@]}" --query "SELECT count() FROM system.clusters WHERE cluster = 'ledgerline'" \
    2>/dev/null | grep -qx '[1-9][0-9]*'; then
    break
  fi
  ((attempt < 90)) || die "no ClickHouse with the ledgerline cluster at $CLICKHOUSE_HOST after 180 s"
  sleep 2
done

# Each ON CLUSTER statement waits until every replica ran it (distributed_ddl_output_mode
# `throw`: a replica that fails or does not answer in distributed_ddl_task_timeout fails it).
"${client[@]}" --multiquery <<<"$sql" >/dev/null
echo "apply-grants: applied $grants_file on cluster ledgerline via $CLICKHOUSE_HOST"
