# Shared by start-cluster.sh, stop-cluster.sh and check-cluster.sh (sourced, not run).
#
# dj-orchestrate's test cluster lives in a directory of its own: config, state, logs,
# pid files. A daemon is "ours" only if its pid file there names a live process of
# that name, so a machine's own SLURM daemons (same names, /etc/slurm) are never
# mistaken for ours, and never stopped.

DIR="${DJO_SLURM_DIR:-/var/tmp/dj-orchestrate-slurm}"
CONF_DIR="$DIR/etc"
CONF="$CONF_DIR/slurm.conf"
RUN_DIR="$DIR/run"
# munged refuses a pid file in a directory the munge user does not own (RUN_DIR belongs to
# the private MariaDB's mysql user), so its pid file has a directory of its own.
MUNGE_RUN_DIR="$DIR/munge"

# pid_file NAME: where our NAME daemon's pid file lives
pid_file() {
  if [ "$1" = munged ]; then echo "$MUNGE_RUN_DIR/munged.pid"; else echo "$RUN_DIR/$1.pid"; fi
}

# running NAME: a live (non-zombie) process with that exact name exists (anyone's)
running() {
  local pid st
  for pid in $(pgrep -x "$1" 2>/dev/null); do
    st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || continue
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# ours_pid NAME: the pid of our NAME daemon (from its pid file), if it is alive
ours_pid() {
  local pid st
  pid="$(cat "$(pid_file "$1")" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
  st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)"
  [ -n "$st" ] && [ "$st" != Z ] || return 1
  echo "$pid"
}

# ours NAME: our NAME daemon is running
ours() { ours_pid "$1" >/dev/null; }

# stop_ours NAME: TERM our NAME daemon, wait up to 30 s, then KILL (needs log() from the caller)
stop_ours() {
  local pid
  pid="$(ours_pid "$1")" || return 0
  log "stopping $1 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 150); do
    ours "$1" || return 0
    sleep 0.2
  done
  log "$1 did not exit after 30s: sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.5
}
