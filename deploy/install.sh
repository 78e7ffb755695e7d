#!/usr/bin/env bash
# Install what shoal needs on a Debian 12 host, and start what is not running.
#
#   deploy/install.sh [--with-etcd] [--no-venv]
#
# Idempotent and quiet when everything is there (well under 3 s then); prints one
# short line per thing it checked or did. Run as root (apt-get and dockerd need it);
# when nothing is missing a non-root run only checks and builds the venv.
#
#   Debian packages  docker.io etcd-server etcd-client (etcdctl: `shoal cluster restore`) busybox-static
#                    mmdebstrap (deploy/images/build-deb.sh: images from Debian packages)
#                    iptables iproute2 ca-certificates curl
#                    nftables (nft: the kernel fast path of `fast_path: kernel` ports, decision 75)
#                    docker-registry (the integration tests run their own on 127.0.0.1; the
#                    package's own service, on :5000, is disabled and stopped),
#                    apache2-utils (htpasswd: the authenticated registry of the image tests),
#                    prometheus (promtool and a Prometheus the metrics test starts on
#                    127.0.0.1; the package's own service, on :9090, is disabled and stopped),
#                    make, python3 + python3-venv when `python3 -m venv` cannot work,
#                    apparmor when the kernel enforces AppArmor (dockerd needs its parser).
#                    `apt-get update` runs only when something is missing.
#   dockerd          started when `docker info` fails: `systemctl start docker` on a
#                    systemd host, else `dockerd` in the background (log:
#                    /var/log/dockerd.log); waits for it with a deadline.
#   etcd             only with --with-etcd: a single member on 127.0.0.1:2379 (data in
#                    /var/lib/shoal-etcd, log /var/log/shoal-etcd.log). `shoal dev` and
#                    the tests start their own etcd, so they do not need this.
#   .venv            the repository's virtualenv with `pip install -e '.[dev,fast]'`,
#                    (re)installed when missing or when pyproject.toml is newer than
#                    the stamp .venv/.shoal-installed.
#
# Environment: PYTHON (interpreter for the venv, default python3), DOCKERD_TIMEOUT
# (seconds, default 60), ETCD_TIMEOUT (seconds, default 30).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"
STAMP="$VENV/.shoal-installed"
PYTHON=${PYTHON:-python3}
DOCKERD_LOG=/var/log/dockerd.log
DOCKERD_TIMEOUT=${DOCKERD_TIMEOUT:-60}
ETCD_DATA=/var/lib/shoal-etcd
ETCD_LOG=/var/log/shoal-etcd.log
ETCD_TIMEOUT=${ETCD_TIMEOUT:-30}

with_etcd=0
with_venv=1
for arg in "$@"; do
	case $arg in
	--with-etcd) with_etcd=1 ;;
	--no-venv) with_venv=0 ;;
	-h | --help)
		sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "install.sh: unknown argument $arg (try --help)" >&2
		exit 2
		;;
	esac
done

say() { echo "install: $*"; }
die() {
	echo "install: error: $*" >&2
	exit 1
}
is_root() { [[ $(id -u) == 0 ]]; }
has_systemd() { [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- Debian packages --------------------------------------------------------------

packages() {
	local want=(docker.io etcd-server etcd-client busybox-static mmdebstrap iptables iproute2 nftables ca-certificates curl make docker-registry apache2-utils prometheus chromium e2fsprogs mount gcc libc6-dev)  # chromium: the dashboard test (headless); e2fsprogs, mount, gcc: the test bed's small disks and clock shim; nftables: VIPs in the kernel (decision 74)
	if ! command -v "$PYTHON" >/dev/null; then
		want+=(python3 python3-venv)
	elif ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
		want+=(python3-venv) # Debian's python3 ships venv without ensurepip
	fi
	if [[ $(cat /sys/module/apparmor/parameters/enabled 2>/dev/null) == Y ]]; then
		want+=(apparmor)
	fi
	local missing=() pkg
	for pkg in "${want[@]}"; do
		installed "$pkg" || missing+=("$pkg")
	done
	# docker from Docker's own packages (docker-ce) or etcd from a tarball also do.
	if [[ " ${missing[*]} " == *" docker.io "* ]] && command -v dockerd >/dev/null && command -v docker >/dev/null; then
		missing=("${missing[@]/docker.io/}")
	fi
	if [[ " ${missing[*]} " == *" etcd-server "* ]] && command -v etcd >/dev/null; then
		missing=("${missing[@]/etcd-server/}")
	fi
	read -r -a missing <<<"${missing[*]}" # drop the empty entries
	if ((${#missing[@]} == 0)); then
		say "packages: all present"
		return
	fi
	is_root || die "missing Debian packages: ${missing[*]}; run this script as root"
	say "packages: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	local t0=$SECONDS
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends -o Dpkg::Options::=--force-confold "${missing[@]}" >/dev/null
	if [[ " ${missing[*]} " == *" docker-registry "* ]] && [[ -d /run/systemd/system ]]; then
		systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
		say "docker-registry: installed for the tests; its own service disabled"
	fi
	if [[ " ${missing[*]} " == *" prometheus "* ]] && [[ -d /run/systemd/system ]]; then
		systemctl disable --now prometheus.service >/dev/null 2>&1 || true
		say "prometheus: installed for the tests; its own service disabled"
	fi
	say "packages: installed in $((SECONDS - t0))s"
}

# --- dockerd ----------------------------------------------------------------------

dockerd_pid() {
	local pid
	pid=$(cat /var/run/docker.pid 2>/dev/null) || return 1
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_dockerd() {
	if docker info >/dev/null 2>&1; then
		say "dockerd: running"
		return
	fi
	is_root || die "the Docker engine does not answer and only root can start it"
	local how pid
	if has_systemd; then
		systemctl start docker
		how="systemctl start docker"
	elif pid=$(dockerd_pid); then
		how="already starting (pid $pid)"
	else
		# setsid: dockerd must outlive this script and the make or CI job that ran it.
		setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
		how="started in the background (pid $!, log $DOCKERD_LOG)"
	fi
	local deadline=$((SECONDS + DOCKERD_TIMEOUT))
	until docker info >/dev/null 2>&1; do
		if ((SECONDS >= deadline)); then
			echo "install: error: dockerd did not answer within ${DOCKERD_TIMEOUT}s ($how); last lines of its log:" >&2
			if has_systemd; then
				journalctl -u docker --no-pager -n 30 >&2 || true
			else
				tail -n 30 "$DOCKERD_LOG" >&2 || true
			fi
			exit 1
		fi
		sleep 0.2
	done
	say "dockerd: $how; answering"
}

# --- etcd (only with --with-etcd) -------------------------------------------------

etcd_healthy() { curl -fsS --max-time 1 http://127.0.0.1:2379/health 2>/dev/null | grep -q '"health":"true"'; }

start_etcd() {
	if etcd_healthy; then
		say "etcd: running on 127.0.0.1:2379"
		return
	fi
	is_root || die "etcd does not answer on 127.0.0.1:2379 and only root should start the system one"
	local how
	if has_systemd; then
		systemctl start etcd
		how="systemctl start etcd"
	else
		mkdir -p "$ETCD_DATA"
		setsid etcd --name "$(hostname -s 2>/dev/null || echo default)" --data-dir "$ETCD_DATA" \
			--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
			--listen-peer-urls http://127.0.0.1:2380 --auto-compaction-retention 1 \
			>>"$ETCD_LOG" 2>&1 </dev/null &
		how="started in the background (pid $!, data $ETCD_DATA, log $ETCD_LOG)"
	fi
	local deadline=$((SECONDS + ETCD_TIMEOUT))
	until etcd_healthy; do
		if ((SECONDS >= deadline)); then
			echo "install: error: etcd did not answer within ${ETCD_TIMEOUT}s ($how); last lines of its log:" >&2
			tail -n 30 "$ETCD_LOG" >&2 || true
			exit 1
		fi
		sleep 0.2
	done
	say "etcd: $how; answering on 127.0.0.1:2379"
}

# --- the virtualenv ---------------------------------------------------------------

make_venv() {
	if [[ -x $VENV/bin/python && -f $STAMP && ! $REPO/pyproject.toml -nt $STAMP ]] &&
		"$VENV/bin/python" -I -c 'import node, leader' 2>/dev/null; then
		say "venv: up to date ($VENV)"
		return
	fi
	local t0=$SECONDS
	if [[ ! -x $VENV/bin/python ]] || ! "$VENV/bin/python" -c '' 2>/dev/null; then
		"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
			die "shoal needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)"
		rm -rf "$VENV"
		"$PYTHON" -m venv "$VENV"
		say "venv: created $VENV ($("$VENV/bin/python" -V))"
	fi
	(cd "$REPO" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,fast]')
	touch "$STAMP"
	say "venv: installed shoal with extras dev,fast in $((SECONDS - t0))s"
}

packages
start_dockerd
if ((with_etcd)); then start_etcd; fi
if ((with_venv)); then make_venv; fi
say "done"
