#!/bin/sh
# Managed by kca-ai-infra (tasks/images.py): copied into the locally built PostgreSQL image.
#
# The start of the official postgres image, for Debian's PostgreSQL, so that the same environment
# (POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB, PGDATA) and the same volume behave the same:
# - as root: PGDATA and the socket folder are made the postgres account's (uid 70, as the alpine
#   image's), then this script runs again as that account;
# - on an empty PGDATA: initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its
#   password, trust on the local socket and scram-sha-256 over TCP from any address, listening on
#   every address of the container, and POSTGRES_DB created;
# - a PGDATA that holds a cluster is started as it is (its roles and passwords are its own);
# - then the server runs as PID 1 (docker stop reaches it directly).
set -eu

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "docker-entrypoint: POSTGRES_PASSWORD is empty: no database is created without a password" >&2
        exit 1
    fi
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "docker-entrypoint: created the cluster in $PGDATA (superuser $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec "$@"
