#!/usr/bin/env bash
# Build shoal's local demo images from Debian's static busybox, with `docker import`.
#
# No registry is reachable from our machines, so the demo images are made here:
#   shoal-demo/base:1   busybox rootfs (every applet linked in /bin), CMD /bin/sh
#   shoal-demo/web:1    /bin/start-web: serves "web v1 on <hostname>" on / and "ok" on /health
#   shoal-demo/web:2    the same, saying v2
# The web page says "$GREETING from web vN on <hostname>" when GREETING is set; the port
# is ${PORT:-8080}.
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
# the container at once: PID 1 ignores signals it has no handler for.
start_web() {
	local version=$1
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
echo ok > /www/health
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

# build IMAGE CMD_JSON [START_SCRIPT]
build() {
	local image=$1 cmd=$2 script=${3:-}
	local changes=(
		-c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
		-c "CMD $cmd"
	)
	[[ -z $script ]] || changes+=(-c "EXPOSE 8080")
	local hash
	hash=$(printf '%s\n' "$RECIPE_VERSION" "$BUSYBOX_SUM" "${changes[@]}" "$script" | sha256sum | cut -c1-16)
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
		printf '%s\n' "$script" >"$root/bin/start-web"
		chmod 755 "$root/bin/start-web"
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
