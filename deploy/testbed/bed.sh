#!/usr/bin/env bash
# A test bed of real hosts on one machine (deploy/testbed/bed.py says how it is made).
#
#   deploy/testbed/bed.sh up [HOSTS]     HOSTS network-namespace hosts (3), each with its own
#                                        dockerd and shoald; etcd (3 members, TLS) on h1-h3
#   deploy/testbed/bed.sh down [ID ...]  remove those beds (every bed when no ID is given)
#   deploy/testbed/bed.sh ls             the beds that exist
#
# Run as root, after deploy/install.sh and deploy/images/build.sh. Environment:
# PYTHON (default: the repository's .venv/bin/python), SHOAL_TESTBED_DIR (/tmp/shoal-testbed).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=${PYTHON:-$REPO/.venv/bin/python}
[[ -x $PY ]] || PY=python3
cd "$REPO"
PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} exec "$PY" -m deploy.testbed "$@"
