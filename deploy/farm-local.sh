#!/bin/sh
# compose.yaml's farm without Docker: PostgreSQL, an S3 server (moto), the API node and the
# workers as local processes, from compose.yaml itself. Options: deploy/farm-local.sh --help
set -e
here=$(cd "$(dirname "$0")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}
[ -x "$py" ] || py=python3
exec "$py" "$here/farm_local.py" "$@"
