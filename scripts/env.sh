#!/usr/bin/env bash
# Write the .env of docker-compose.yml (`make env`): .env.example with every empty value
# (the passwords and secrets) set to a fresh random one, letters, digits, - and _ only
# (they also go into the JSON of an Airflow connection). Never overwrites an existing
# .env: its passwords may already be those of a database volume. Readable by its owner
# only. Usage: scripts/env.sh [FILE] (default: .env at the repository root).
set -eu
root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-$root/.env}"
if [ -e "$target" ]; then
  echo "[env] $target exists: left as it is (remove it first to write a new one)" >&2
  exit 1
fi
umask 077
python3 - "$root/.env.example" "$target" <<'PY'
import re
import secrets
import sys

example, target = sys.argv[1:]
with open(example) as f:
    lines = [re.sub(r"^(\w+)=$", lambda m: f"{m[1]}={secrets.token_urlsafe(24)}", line) for line in f.read().splitlines()]
with open(target, "x") as f:  # (x: another command may have written one meanwhile)
    f.write("\n".join(lines) + "\n")
PY
echo "[env] wrote $target with random passwords and secrets"
