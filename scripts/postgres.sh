#!/usr/bin/env bash
# postgres.sh: a private PostgreSQL for the tests and benchmarks, no Docker.
#
#   eval "$(scripts/postgres.sh start)"   # prints EXDAAS_TEST_DATABASE_URL=…, EXDAAS_TEST_PGDATA=…
#   scripts/postgres.sh stop "$EXDAAS_TEST_PGDATA"
#
# Installs Debian's postgresql package when initdb is missing, initdb's a
# cluster into a temporary folder (as the postgres user when run as root:
# PostgreSQL refuses to run as root), starts it on a free port listening on
# 127.0.0.1 only, and prints the URL of a superuser connection. Tuned for
# tests: durable (fsync on, as exdaas's promises need), small.
#
# TLS only, as managed databases are: a throwaway CA signs the server's
# certificate (for 127.0.0.1 and localhost), pg_hba.conf takes `hostssl`
# connections and no others over TCP, and the URL verifies the server
# (sslmode=verify-full, sslrootcert=the CA). A second, unrelated CA
# (EXDAAS_TEST_PG_OTHER_CA) is there for tests of a wrong one.
set -euo pipefail

find_bin() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [ -x "$dir/initdb" ] && { echo "$dir"; return; }
    done
    command -v initdb >/dev/null && dirname "$(command -v initdb)" && return
    return 1
}

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A throwaway CA, the server's certificate it signs, and an unrelated CA.
certificates() {
    local tls="$1/tls"
    mkdir -p "$tls"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=exdaas test CA" \
        -keyout "$tls/ca.key" -out "$tls/ca.crt"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" \
        -keyout "$tls/other-ca.key" -out "$tls/other-ca.crt"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext"
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
        -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt"
    chmod 600 "$tls/server.key"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$tls"
    # The tests read the CAs as whoever runs them.
    chmod 644 "$tls/ca.crt" "$tls/other-ca.crt"
    chmod 755 "$tls"
}

start() {
    local bin
    if ! bin=$(find_bin); then
        echo "postgres.sh: installing postgresql (apt-get)" >&2
        export DEBIAN_FRONTEND=noninteractive
        (apt-get update -qq && apt-get install -y -qq postgresql >/dev/null) >&2 \
            || { echo "postgres.sh: cannot install postgresql" >&2; exit 1; }
        bin=$(find_bin) || { echo "postgres.sh: initdb still missing after install" >&2; exit 1; }
    fi
    local dir port
    dir=$(mktemp -d /tmp/exdaas-pg.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    certificates "$dir" >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; exit 1; }
    # The socket for pg_ctl and local tools; over TCP, TLS or nothing.
    printf '%s\n' 'local all all trust' 'hostssl all all 127.0.0.1/32 trust' 'hostnossl all all 0.0.0.0/0 reject' \
        >"$dir/data/pg_hba.conf"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=128MB \
            -c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key" start >&2 \
        || { cat "$dir/server.log" >&2; exit 1; }
    echo "export EXDAAS_TEST_DATABASE_URL='postgres://postgres@127.0.0.1:$port/postgres?sslmode=verify-full&sslrootcert=$dir/tls/ca.crt'"
    echo "export EXDAAS_TEST_PG_OTHER_CA=$dir/tls/other-ca.crt"
    echo "export EXDAAS_TEST_PGDATA=$dir"
}

stop() {
    local dir=${1:?usage: postgres.sh stop DIR}
    local bin
    bin=$(find_bin) || exit 0
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) echo "usage: postgres.sh start | stop DIR" >&2; exit 2 ;;
esac
