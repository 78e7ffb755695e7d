#!/usr/bin/env bash
# Make etcd's own PKI for a production shoal cluster: a CA, etcd's server (and peer)
# certificate, and one client certificate per shoal host; print etcd's flags and the
# shoald settings (docs/operations.md, "etcd with TLS and client certificates").
#
#   deploy/etcd/make-certs.sh OUT_DIR --host 10.0.0.5 --host 10.0.0.6 --host 10.0.0.7 \
#       --client n1 --client n2 --client n3
#
# Re-running with the same OUT_DIR keeps the CA and makes only what is missing (a new
# host: run it again with its --client). Keys are 0600 in a 0700 directory; keep
# OUT_DIR/ca.key off the etcd and shoal hosts once every certificate is made.
set -euo pipefail
[[ $# -ge 1 && $1 != -* ]] || { echo "usage: $0 OUT_DIR --host ADDR [--host ...] [--client NAME ...]" >&2; exit 2; }
out=$1
shift
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python} # only `cryptography` is needed
[[ -x $PY ]] || PY=python3
cd "$REPO"
exec "$PY" -m node.security.etcd_pki --out "$out" "$@"
