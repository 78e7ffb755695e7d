#!/usr/bin/env bash
# Deploy the example application (stack.yaml: nginx -> web x3 -> redis) on the cluster
# the CLI talks to (SHOAL_ADDR, SHOAL_CONTEXT_FILE), wait until a request through the
# mesh's front door is answered with a count from redis, and show a few.
#
#   SHOAL        the CLI (default: shoal on PATH)
#   APP_TIMEOUT  seconds to wait for the first answer (default 120)
#
# Idempotent: the secret redis_pw is made once (18 random bytes, base64; never printed:
# it goes from /dev/urandom to the CLI's stdin); the configs app_web_py and
# app_nginx_conf are created, or updated from the files here (an update rolls the
# services that use them); `stack deploy` changes only what changed.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SHOAL=${SHOAL:-shoal}
APP_TIMEOUT=${APP_TIMEOUT:-120}
PY=${PY:-python3}

die() {
	echo "deploy.sh: $*" >&2
	exit 1
}

# put_config NAME FILE: create it, or update it when it exists.
put_config() {
	if ! $SHOAL config create "$1" -f "$2" >/dev/null 2>&1; then
		$SHOAL config update "$1" -f "$2" >/dev/null
	fi
}

echo "== secret redis_pw and configs app_web_py, app_nginx_conf"
has_secret=$($SHOAL secret ls -o json | $PY -c 'import json, sys; print(any(s["name"] == "redis_pw" for s in json.load(sys.stdin)))')
if [[ $has_secret != True ]]; then
	head -c 18 /dev/urandom | base64 | tr -d '\n' | $SHOAL secret create redis_pw -f - >/dev/null
fi
put_config app_web_py "$HERE/web.py"
put_config app_nginx_conf "$HERE/nginx.conf"
$SHOAL secret ls
$SHOAL config ls

echo
echo "== shoal stack deploy -f $HERE/stack.yaml app"
$SHOAL stack deploy -f "$HERE/stack.yaml" app

# The front door: nginx's published port on every node's mesh (resolve lists them).
mesh_targets() {
	$SHOAL resolve app_nginx -o json 2>/dev/null |
		$PY -c 'import json, sys; [print("%s:%s" % (m["address"], m["port"])) for m in json.load(sys.stdin)["mesh"]]' 2>/dev/null || true
}

echo
echo "== waiting (at most ${APP_TIMEOUT}s) for nginx -> web -> redis to answer"
deadline=$((SECONDS + APP_TIMEOUT))
while :; do
	target=$(mesh_targets | head -n 1)
	if [[ -n $target ]] && answer=$(curl -fsS --max-time 3 "http://$target/" 2>/dev/null) && [[ $answer == *", served by "* ]]; then
		break
	fi
	if ((SECONDS >= deadline)); then
		$SHOAL stack ps app >&2 || true
		die "no answer from the app through the mesh after ${APP_TIMEOUT}s (stack ps above)"
	fi
	sleep 0.5
done
$SHOAL stack ps app

echo
echo "== through the mesh: every node's front door, nginx -> web (by name) -> redis (by name)"
while read -r target; do
	for _ in 1 2 3; do
		answer=$(curl -fsS --max-time 3 --retry 5 --retry-delay 0 --retry-max-time 10 "http://$target/")
		printf '  %-18s -> %s\n' "$target" "$answer"
	done
done < <(mesh_targets)
