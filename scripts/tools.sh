#!/usr/bin/env bash
# Install the command-line tools the tests use that pip cannot: Debian's docker-compose
# (tests/test_compose.py validates docker-compose.yml with it; no Docker engine is needed)
# and Debian's chromium (tests/test_dashboard.py drives it headless through Playwright).
# hadolint and check-jsonschema come with the `dev` extra. Idempotent: a tool already on
# PATH is left alone. Where it cannot install (no apt-get, not root), it says so; in CI
# (CI=true) that is an error, elsewhere the tests that need the tool skip.
set -u
say() { echo "[tools] $*"; }
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v chromium >/dev/null || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  say "installing ${missing[*]}"
  # the package lists may be stale or absent on a fresh machine: update once if needed
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
fi
for tool in "${missing[@]}"; do
  if ! command -v "$tool" >/dev/null; then
    say "$tool is NOT installed (Debian: apt-get install $tool)"
    # as tests/conftest.py reads it: 1, true or yes in any case
    case "$(printf %s "${CI:-}" | tr '[:upper:]' '[:lower:]')" in 1|true|yes) exit 1 ;; esac
  fi
done
exit 0
