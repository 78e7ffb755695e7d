#!/usr/bin/env bash
# Build real workload images from Debian's own packages: `mmdebstrap --variant=essential`
# writes a root file system (Debian's Essential:yes set plus the named packages) as a
# tar stream, `docker import` makes it an image. No image registry is needed, only the
# Debian archive (decision 51).
#
#   shoal-deb/redis:1   redis-server (Debian's 7.0), CMD redis-server --protected-mode no,
#                       port 6379
#   shoal-deb/python:1  python3 (3.11) with python3-websockets, python3-grpcio,
#                       python3-redis; CMD python3; give the program as the command
#   shoal-deb/nginx:1   nginx-light serving /var/www/html on port 80, logs to the
#                       container's stdout/stderr, CMD nginx -g 'daemon off;'
# Each is also tagged :latest. Slim: dpkg leaves out man pages, docs (but copyrights),
# info pages, locales and lintian overrides; apt's lists and cache are not kept.
#
# Idempotent as build.sh: the label io.shoal.demo.hash holds the hash of the recipe
# (packages, options, image config); an image whose hash matches is left alone, so a
# CI run builds each once. The packages' versions are not in the hash: bump
# RECIPE_VERSION to take newer ones. Called by build.sh; run as root (mmdebstrap's
# root mode). Environment: DEB_SUITE (default bookworm), DEB_MIRROR (a mirror URI;
# default deb.debian.org with bookworm-updates and the security archive added).
set -euo pipefail

HASH_LABEL=io.shoal.demo.hash
RECIPE_VERSION=1 # bump to rebuild (newer packages, changed output)
SUITE=${DEB_SUITE:-bookworm}
MIRROR=${DEB_MIRROR:-}

die() {
	echo "build-deb.sh: $*" >&2
	exit 1
}

command -v mmdebstrap >/dev/null || die "mmdebstrap not found: apt-get install -y mmdebstrap (deploy/install.sh does)"
command -v docker >/dev/null || die "docker CLI not found: apt-get install -y docker.io"
[[ $(id -u) == 0 ]] || die "run as root: mmdebstrap builds in its root mode"
docker info >/dev/null 2>&1 || die "cannot reach the Docker engine: is dockerd running?"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# dpkg options for every image: no docs, man pages, locales; no fsync per file (the
# tree is thrown away on failure anyway).
SLIM=(
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/info/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-exclude=/usr/share/lintian/*'
	--dpkgopt='force-unsafe-io'
	# merged /usr through usr-is-merged: otherwise init-system-helpers pulls usrmerge,
	# which pulls perl (~30 MB)
	--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
	--customize-hook='rm -f "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/*.log'
)

# build IMAGE PACKAGES EXTRA_OPTION... -- CHANGE...
# PACKAGES is a comma-separated --include list; EXTRA_OPTIONs go to mmdebstrap (hooks);
# CHANGEs are `docker import --change` lines.
build() {
	local image=$1 packages=$2
	shift 2
	local extra=() changes=(-c "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	while (($#)) && [[ $1 != -- ]]; do
		extra+=("$1")
		shift
	done
	[[ ${1:-} != -- ]] || shift
	local change
	for change in "$@"; do changes+=(-c "$change"); done
	local hash
	hash=$(printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$MIRROR" "$packages" "${SLIM[@]}" "${extra[@]}" "${changes[@]}" |
		sha256sum | cut -c1-16)
	local current
	current=$(docker image inspect -f "{{index .Config.Labels \"$HASH_LABEL\"}}" "$image:1" 2>/dev/null || true)
	if [[ $current == "$hash" ]]; then
		docker tag "$image:1" "$image:latest"
		echo "$image:1 up to date ($hash)"
		return
	fi
	local old_id
	old_id=$(docker image inspect -f '{{.Id}}' "$image:1" 2>/dev/null || true)
	local log="$WORK/${image//\//_}.log" t0=$SECONDS
	local mirrors=()
	[[ -z $MIRROR ]] || mirrors=("$MIRROR")
	# The tar goes straight into docker import: nothing of ~100 MB is written twice.
	if ! mmdebstrap --variant=essential --include="$packages" "${SLIM[@]}" "${extra[@]}" \
		"$SUITE" - "${mirrors[@]}" </dev/null 2>"$log" |
		docker import "${changes[@]}" -c "LABEL $HASH_LABEL=$hash" - "$image:1" >/dev/null; then
		tail -n 30 "$log" >&2
		die "building $image failed (mmdebstrap or docker import; log above)"
	fi
	docker tag "$image:1" "$image:latest"
	[[ -z $old_id ]] || docker rmi "$old_id" >/dev/null 2>&1 || true
	local size
	size=$(docker image inspect -f '{{.Size}}' "$image:1")
	echo "$image:1 built ($hash) in $((SECONDS - t0))s, $((size / 1000000)) MB"
}

build shoal-deb/redis redis-server -- \
	'CMD ["redis-server", "--protected-mode", "no"]' 'EXPOSE 6379'

build shoal-deb/python python3,python3-websockets,python3-grpcio,python3-redis -- \
	'ENV PYTHONUNBUFFERED=1' 'CMD ["python3"]'

# Debian's default site serves /var/www/html on port 80; its log files become the
# container's output (`shoal service logs`).
build shoal-deb/nginx nginx-light \
	--customize-hook='ln -sf /dev/stdout "$1"/var/log/nginx/access.log; ln -sf /dev/stderr "$1"/var/log/nginx/error.log' -- \
	'CMD ["nginx", "-g", "daemon off;"]' 'EXPOSE 80'
