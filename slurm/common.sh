# Shared by start-cluster.sh and stop-cluster.sh (sourced, not run).

# running NAME: a live (non-zombie) process with that exact name exists
running() {
  local pid st
  for pid in $(pgrep -x "$1" 2>/dev/null); do
    st="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || continue
    [ -n "$st" ] && [ "$st" != Z ] && return 0
  done
  return 1
}

# stop_daemon NAME: TERM it, wait up to 10 s, then KILL (needs log() from the caller)
stop_daemon() {  # name
  local name="$1"
  running "$name" || return 0
  log "stopping $name"
  pkill -TERM -x "$name" || true
  for _ in $(seq 1 50); do
    running "$name" || return 0
    sleep 0.2
  done
  log "$name did not exit after 10s: sending SIGKILL"
  pkill -KILL -x "$name" || true
  sleep 0.5
}
