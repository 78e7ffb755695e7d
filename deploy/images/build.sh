#!/usr/bin/env bash
# Build shoal's local demo images from Debian's static busybox, with `docker import`.
#
# No registry is reachable from our machines, so the demo images are made here:
#   shoal-demo/base:1   busybox rootfs (every applet linked in /bin), CMD /bin/sh
#   shoal-demo/web:1    /bin/start-web: serves "web v1 on <hostname>" on / and "ok" on /health
#   shoal-demo/web:2    the same, saying v2
#   shoal-demo/web:bad  serves / ("web bad on <hostname>") but /health is missing (404):
#                       it never passes an http check on /health (rollback tests)
#   shoal-demo/web:hc   web v1 with a Docker HEALTHCHECK (wget /health every 1s, 3 retries),
#                       for a spec without a health check of its own
#   shoal-demo/crash:1  /bin/crash: exits with status ${EXIT_CODE:-1} after ${CRASH_AFTER:-3}
#                       seconds (crash-loop tests); SIGTERM ends it at once
# The web page says "$GREETING from web vN on <hostname>" when GREETING is set; the port
# is ${PORT:-8080}.
# Then build-deb.sh builds real workloads from Debian packages: shoal-deb/redis,
# shoal-deb/python (websockets, grpcio, redis), shoal-deb/nginx (mmdebstrap, root).
#
# Idempotent: each image carries the hash of what it was built from in the label
# io.shoal.demo.hash; an image whose hash matches is left alone. Run as root (or as a
# member of the docker group). Prints one line per image.
set -euo pipefail

BUSYBOX=${BUSYBOX:-/bin/busybox}
HASH_LABEL=io.shoal.demo.hash
RECIPE_VERSION=1 # bump to force a rebuild after changing this script's output

die() {
	echo "build.sh: $*" >&2
	exit 1
}

[[ -x $BUSYBOX ]] || die "$BUSYBOX not found: install Debian's busybox-static (apt-get install -y busybox-static)"
LDD_OUT=$(LC_ALL=C ldd "$BUSYBOX" 2>&1 || true)
if ! grep -qE 'not a dynamic executable|statically linked' <<<"$LDD_OUT"; then
	die "$BUSYBOX is not statically linked: install busybox-static (the 'busybox' package is dynamic)"
fi
command -v docker >/dev/null || die "docker CLI not found: apt-get install -y docker.io"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine: is dockerd running?"

BUSYBOX_SUM=$(sha256sum "$BUSYBOX" | cut -d' ' -f1)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The start command of web:N. httpd runs as a child so that SIGTERM (docker stop) ends
# the container at once: PID 1 ignores signals it has no handler for. A second argument
# "missing" leaves /health out (web:bad).
start_web() {
	local version=$1 health=${2:-ok}
	local health_line='echo ok > /www/health'
	[[ $health == ok ]] || health_line='rm -f /www/health'
	cat <<EOF
#!/bin/sh
set -e
host=\$(hostname)
mkdir -p /www
if [ -n "\${GREETING:-}" ]; then
  echo "\$GREETING from web ${version} on \$host" > /www/index.html
else
  echo "web ${version} on \$host" > /www/index.html
fi
${health_line}
httpd -f -p "\${PORT:-8080}" -h /www &
pid=\$!
trap 'kill -TERM \$pid 2>/dev/null; wait \$pid || true; exit 0' TERM INT
wait \$pid
EOF
}

# make_rootfs DIR: a busybox root filesystem with every applet linked in /bin.
make_rootfs() {
	local root=$1
	mkdir -p "$root"/{bin,etc,tmp,www,proc,sys,dev,root}
	chmod 1777 "$root/tmp"
	cp "$BUSYBOX" "$root/bin/busybox"
	local applet
	for applet in $("$BUSYBOX" --list); do
		[[ $applet == busybox ]] || ln -sf busybox "$root/bin/$applet"
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

# The start command of crash:N: runs a few seconds, then exits with a failure status.
start_crash() {
	cat <<'EOF'
#!/bin/sh
after=${CRASH_AFTER:-3}
code=${EXIT_CODE:-1}
echo "crash on $(hostname): exiting with status $code in ${after}s"
trap 'exit 0' TERM INT
sleep "$after" &
wait $!
echo "crash on $(hostname): exiting with status $code"
exit "$code"
EOF
}

# build IMAGE CMD_JSON [START_SCRIPT [SCRIPT_PATH [EXTRA_CHANGE]]]
# The script is installed at SCRIPT_PATH (default /bin/start-web); EXTRA_CHANGE is one
# more `docker import --change` (a HEALTHCHECK).
build() {
	local image=$1 cmd=$2 script=${3:-} path=${4:-/bin/start-web} extra=${5:-}
	local changes=(
		-c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		-c "CMD $cmd"
	)
	[[ -z $script ]] || changes+=(-c "EXPOSE 8080")
	[[ -z $extra ]] || changes+=(-c "$extra")
	local recipe=("$RECIPE_VERSION" "$BUSYBOX_SUM" "${changes[@]}" "$script")
	[[ $path == /bin/start-web ]] || recipe+=("$path") # the older images keep their hash
	local hash
	hash=$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-16)
	local current
	current=$(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$image" 2>/dev/null || true)
	if [[ $current == "$hash" ]]; then
		echo "$image up to date ($hash)"
		return
	fi
	local old_id
	old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
	local root="$WORK/${image//[\/:]/_}"
	make_rootfs "$root"
	if [[ -n $script ]]; then
		printf '%s\n' "$script" >"$root$path"
		chmod 755 "$root$path"
	fi
	tar --numeric-owner --owner=0 --group=0 -C "$root" -c . |
		docker import "${changes[@]}" -c "LABEL $HASH_LABEL=$hash" - "$image" >/dev/null
	# The previous build is now untagged; drop it unless a container still uses it.
	[[ -z $old_id ]] || docker rmi "$old_id" >/dev/null 2>&1 || true
	echo "$image built ($hash)"
}

build shoal-demo/base:1 '["/bin/sh"]'
build shoal-demo/web:1 '["/bin/start-web"]' "$(start_web v1)"
build shoal-demo/web:2 '["/bin/start-web"]' "$(start_web v2)"
build shoal-demo/web:bad '["/bin/start-web"]' "$(start_web bad missing)"
build shoal-demo/web:hc '["/bin/start-web"]' "$(start_web v1)" /bin/start-web \
	'HEALTHCHECK --interval=1s --timeout=3s --retries=3 CMD wget -q -O /dev/null http://127.0.0.1:${PORT:-8080}/health || exit 1'
build shoal-demo/crash:1 '["/bin/crash"]' "$(start_crash)" /bin/crash

# Real workloads from Debian's packages (shoal-deb/redis, python, nginx); see the script.
bash "$(dirname "${BASH_SOURCE[0]}")/build-deb.sh"
