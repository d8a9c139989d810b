#!/usr/bin/env bash
# Runs a command beside a private, throwaway PostgreSQL server, then stops the server and deletes it.
#
#   scripts/with-postgres.sh .venv/bin/python -m pytest -m db tests/app/test_api.py
#
# The server lives in a temporary directory (data, log and unix socket), listens on a free loopback port and
# trusts every local connection; it runs with fsync off, as nothing in it needs to outlive the command. The
# command gets LORADECK_TEST_DATABASE_URL, the server's maintenance database: tests/conftest.py creates a
# fresh database per test (or per module, for the process stacks) from it. PostgreSQL refuses to run as
# root, so as root the server runs as the `postgres` user, else as `nobody`.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi

# Debian's postgresql package keeps initdb and pg_ctl off PATH, in /usr/lib/postgresql/<version>/bin.
if ! command -v initdb >/dev/null || ! command -v pg_ctl >/dev/null; then
  for bin in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
      PATH="$bin:$PATH"
      break
    fi
  done
fi
for tool in initdb pg_ctl; do
  if ! command -v "$tool" >/dev/null; then
    echo "$0: no $tool found: install PostgreSQL's server (Debian/Ubuntu: apt-get install postgresql)" >&2
    exit 1
  fi
done

as_server=()
dir=$(mktemp -d "${TMPDIR:-/tmp}/loradeck-pg.XXXXXX")
if [ "$(id -u)" = 0 ]; then
  user=postgres
  id -u "$user" >/dev/null 2>&1 || user=nobody
  if command -v runuser >/dev/null; then
    as_server=(runuser -u "$user" --)
  else
    as_server=(setpriv --reuid="$user" --regid="$(id -g "$user")" --clear-groups --)
  fi
  chown "$user" "$dir"
  if ! "${as_server[@]}" test -w "$dir"; then  # TMPDIR is somewhere the server's user cannot reach
    rm -rf "$dir"
    dir=$(mktemp -d /tmp/loradeck-pg.XXXXXX)
    chown "$user" "$dir"
  fi
fi

stop() {
  "${as_server[@]}" pg_ctl stop -D "$dir/data" -m fast -s >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"${as_server[@]}" initdb -D "$dir/data" -U loradeck --auth=trust --encoding=UTF8 --locale=C --no-sync \
  >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A free port can be taken between the look and the start: try another one then.
for attempt in 1 2 3; do
  port=$(free_port)
  options="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir"
  options+=" -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
  if "${as_server[@]}" pg_ctl start -D "$dir/data" -l "$dir/server.log" -w -t 60 -s -o "$options"; then
    break
  fi
  if [ "$attempt" = 3 ]; then
    echo "$0: PostgreSQL did not start:" >&2
    tail -n 20 "$dir/server.log" >&2
    exit 1
  fi
done

export LORADECK_TEST_DATABASE_URL="postgresql+psycopg://loradeck@127.0.0.1:$port/postgres"
echo "PostgreSQL $(pg_ctl --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)" >&2
status=0
"$@" || status=$?
exit "$status"
