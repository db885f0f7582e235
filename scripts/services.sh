#!/usr/bin/env bash
# Start what the tests need, if it is not running: MariaDB and PostgreSQL (the machine's
# services) and, unless --no-slurm, the single-node SLURM cluster (slurm/start-cluster.sh,
# in a directory of its own; tests find it through SLURM_CONF, which it prints).
# Idempotent and quick when everything is already up. Exits non-zero when a service
# did not come up, saying which.
set -u
say() { echo "[services] $*"; }
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! up 5432; then
  say "starting PostgreSQL"
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
fi
if ! up 3306; then
  say "starting MariaDB"
  if command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ]; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null
    # --pidfile: SLURM's accounting MariaDB (port 3307) runs the same binary, and
    # --exec alone would take it for this one and start nothing
    start-stop-daemon --start --oknodo --background --pidfile /run/mysqld/mysqld.pid \
      --exec /usr/sbin/mariadbd || true
  fi
fi
for i in $(seq 1 30); do up 5432 && up 3306 && break; sleep 1; done
failed=0
up 5432 && say "PostgreSQL up" || { say "PostgreSQL NOT reachable on 127.0.0.1:5432"; failed=1; }
up 3306 && say "MariaDB up" || { say "MariaDB NOT reachable on 127.0.0.1:3306"; failed=1; }

if [ "${1:-}" != "--no-slurm" ]; then
  bash "$(dirname "$0")/../slurm/start-cluster.sh" || { say "SLURM did NOT come up (see above)"; failed=1; }
fi
exit "$failed"
