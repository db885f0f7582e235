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
