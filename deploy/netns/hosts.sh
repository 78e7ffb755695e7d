#!/usr/bin/env bash
# Several shoal "hosts" on one machine: one network namespace per node on a bridge.
#
#   deploy/netns/hosts.sh up [NODES]      make the network, start etcd and NODES daemons (3)
#   deploy/netns/hosts.sh cut ID I        isolate node I completely (its link goes down)
#   deploy/netns/hosts.sh heal ID I       bring node I's link back
#   deploy/netns/hosts.sh exec ID I CMD…  run CMD inside node I's namespace
#   deploy/netns/hosts.sh status ID       links, processes and `shoal node ls`
#   deploy/netns/hosts.sh down ID         stop everything, remove its containers and network
#   deploy/netns/hosts.sh ls              the setups that exist
#
# Layout (the same as tests/integration/netns.py, which the failover tests use):
#
#   host netns: bridge shb-<id> 10.216.<k>.1/24   etcd :2379, dockerd (+ docker-proxy)
#     veth shv-<id>-<i>  <->  shp-<id>-<i> in netns sh-<id>-n<i>: 10.216.<k>.<10+i>/24,
#                             lo up, default route via 10.216.<k>.1,
#                             shoald --address 10.216.<k>.<10+i> --grpc-port 7070
#
# Every node has its own network stack, as a real host has, so a cut is total and
# symmetric (on loopback addresses a node's outgoing traffic leaves from 127.0.0.1,
# so iptables rules on its own address cut one direction only). Containers run on
# the host's one Docker engine (its socket is a file, reachable from every netns) and
# are published on the bridge address (--publish-address). With br_netfilter loaded
# (Docker loads it) bridged frames pass iptables' FORWARD chain, whose policy Docker
# sets to DROP: `up` inserts one ACCEPT rule for traffic within the bridge, commented
# shoal-netns-<id>; `down` removes it. Nothing is routed outside the bridge.
#
# Environment: PRESET (local|lan, default local), SHOALD / SHOAL (the binaries,
# default the repository's .venv), STATE (where ids live, default /tmp/shoal-netns),
# ID (choose the id instead of a random one). Run as root.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHOALD=${SHOALD:-$REPO/.venv/bin/shoald}
SHOAL=${SHOAL:-$REPO/.venv/bin/shoal}
STATE=${STATE:-/tmp/shoal-netns}
PRESET=${PRESET:-local}
GRPC_PORT=7070
ETCD_PORT=2379

die() {
	echo "hosts.sh: $*" >&2
	exit 1
}

usage() {
	sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
	exit 2
}

load() { # load ID: read the state of a setup into globals
	id=$1
	dir=$STATE/$id
	[[ -f $dir/subnet ]] || die "no setup $id in $STATE (see: hosts.sh ls)"
	k=$(<"$dir/subnet")
	nodes=$(<"$dir/nodes")
	host_ip=10.216.$k.1
	export SHOAL_CONTEXT_FILE=${SHOAL_CONTEXT_FILE:-$dir/context.json}
}

node_ip() { echo "10.216.$k.$((10 + $1))"; }

check_node() {
	if ! [[ $1 =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > nodes)); then die "node must be 1..$nodes, got $1"; fi
}

free_k() { # a third octet whose 10.216.k.0/24 is on no interface or route
	local used k
	used=$(
		ip -4 -o addr show
		ip -4 route show table all
	)
	for k in $(shuf -i 0-255); do
		grep -q "10\.213\.$k\." <<<"$used" || {
			echo "$k"
			return
		}
	done
	die "no free /24 in 10.216.0.0/16"
}

wait_for() { # wait_for SECONDS WHAT CMD...
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || die "$what not ready within the deadline; logs in $dir"
		sleep 0.2
	done
}

cmd_up() {
	local n=${1:-3} i ns veth inner ip
	if ! [[ $n =~ ^[0-9]+$ ]] || ((n < 1 || n > 50)); then die "NODES must be 1..50"; fi
	[[ $(id -u) == 0 ]] || die "run as root (ip netns, iptables)"
	[[ -x $SHOALD ]] || die "no shoald at $SHOALD (run deploy/install.sh, or set SHOALD)"
	command -v etcd >/dev/null || die "no etcd (apt-get install etcd-server)"
	id=${ID:-$(head -c3 /dev/urandom | od -An -tx1 | tr -d ' \n')}
	[[ $id =~ ^[a-z0-9]{1,6}$ ]] || die "ID must be 1-6 of a-z0-9"
	dir=$STATE/$id
	[[ ! -e $dir ]] || die "setup $id exists already"
	mkdir -p "$dir"
	k=$(free_k)
	echo "$k" >"$dir/subnet"
	echo "$n" >"$dir/nodes"
	nodes=$n
	host_ip=10.216.$k.1
	trap 'if [[ -z ${done_up:-} ]]; then echo "hosts.sh: up failed; removing what it made" >&2; cmd_down "$id" || true; fi' EXIT

	ip link add "shb-$id" type bridge
	ip addr add "$host_ip/24" dev "shb-$id"
	ip link set "shb-$id" up
	iptables -I FORWARD 1 -i "shb-$id" -o "shb-$id" -m comment --comment "shoal-netns-$id" -j ACCEPT
	for ((i = 1; i <= n; i++)); do
		ns=sh-$id-n$i veth=shv-$id-$i inner=shp-$id-$i ip=$(node_ip "$i")
		ip netns add "$ns"
		ip link add "$veth" type veth peer name "$inner" netns "$ns"
		ip link set "$veth" master "shb-$id" up
		ip -n "$ns" link set lo up
		ip -n "$ns" addr add "$ip/24" dev "$inner"
		ip -n "$ns" link set "$inner" up
		ip -n "$ns" route add default via "$host_ip"
	done

	local url=http://$host_ip:$ETCD_PORT peer=http://$host_ip:$((ETCD_PORT + 1))
	etcd --name "netns-$id" --data-dir "$dir/etcd" --listen-client-urls "$url" \
		--advertise-client-urls "$url" --listen-peer-urls "$peer" \
		--initial-advertise-peer-urls "$peer" --initial-cluster "netns-$id=$peer" \
		--auto-compaction-retention 1 >"$dir/etcd.log" 2>&1 &
	echo $! >"$dir/etcd.pid"
	wait_for 20 etcd curl -fsS "$url/health"

	# As on real hosts: `shoal cluster init` makes the CA, n1's certificate and the admin's
	# context file; the other nodes join with the join token, read from a 0600 file.
	"$SHOAL" cluster init --node-id n1 --data-dir "$dir/n1" --address "$(node_ip 1)" \
		--grpc-port "$GRPC_PORT" --etcd "$host_ip:$ETCD_PORT" --cluster "netns-$id" \
		--context-file "$dir/context.json" | grep -o 'SHOAL-1-[a-z2-7-]*' >"$dir/join-token"
	chmod 600 "$dir/join-token"
	export SHOAL_CONTEXT_FILE=$dir/context.json
	for ((i = 1; i <= n; i++)); do
		# `ip netns exec` execs the command: $! is the daemon's pid
		ip netns exec "sh-$id-n$i" "$SHOALD" --node-id "n$i" --data-dir "$dir/n$i" \
			--address "$(node_ip "$i")" --grpc-port "$GRPC_PORT" --etcd "$host_ip:$ETCD_PORT" \
			--publish-address "$host_ip" --cluster "netns-$id" --preset "$PRESET" \
			--join-token-file "$dir/join-token" --label "netns.index=$i" >"$dir/n$i.log" 2>&1 &
		echo $! >"$dir/n$i.pid"
		if ((i == 1)); then # the others join through it
			wait_for 30 "n1" "$SHOAL" --addr "$(node_ip 1):$GRPC_PORT" --timeout 2 node ls
		fi
	done
	wait_for 30 "the cluster" "$SHOAL" --addr "$(node_ip 1):$GRPC_PORT" --timeout 2 node ls
	done_up=1
	echo "setup $id: $n nodes on 10.216.$k.0/24 (etcd $host_ip:$ETCD_PORT, cluster netns-$id)"
	echo "  export SHOAL_CONTEXT_FILE=$dir/context.json SHOAL_ADDR=$(node_ip 1):$GRPC_PORT; $SHOAL node ls"
	echo "  hosts.sh cut $id 2; hosts.sh heal $id 2; hosts.sh down $id"
}

stop_pid() { # stop_pid FILE: SIGTERM, wait up to 15 s, then SIGKILL
	local file=$1 pid i
	[[ -f $file ]] || return 0
	pid=$(<"$file")
	if kill -0 "$pid" 2>/dev/null; then
		kill -CONT "$pid" 2>/dev/null || true
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 75; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$file"
}

cmd_down() {
	load "$1"
	local i failed=0
	for ((i = 1; i <= nodes; i++)); do # a cut daemon would stop slowly: heal first
		ip link set "shv-$id-$i" up 2>/dev/null || true
	done
	for ((i = 1; i <= nodes; i++)); do stop_pid "$dir/n$i.pid"; done
	local ids
	ids=$(docker ps -aq --filter "label=io.shoal.cluster=netns-$id" 2>/dev/null || true)
	if [[ -n $ids ]]; then
		# shellcheck disable=SC2086 # one id per word
		docker rm -f $ids >/dev/null || failed=1
	fi
	stop_pid "$dir/etcd.pid"
	for ((i = 1; i <= nodes; i++)); do
		if ip netns list | grep -qw "sh-$id-n$i"; then ip netns del "sh-$id-n$i" || failed=1; fi
		if ip link show "shv-$id-$i" >/dev/null 2>&1; then ip link del "shv-$id-$i" || failed=1; fi
	done
	if ip link show "shb-$id" >/dev/null 2>&1; then ip link del "shb-$id" || failed=1; fi
	while iptables -C FORWARD -i "shb-$id" -o "shb-$id" -m comment --comment "shoal-netns-$id" \
		-j ACCEPT 2>/dev/null; do
		iptables -D FORWARD -i "shb-$id" -o "shb-$id" -m comment --comment "shoal-netns-$id" -j ACCEPT
	done
	((failed == 0)) || die "setup $id: some parts could not be removed; state kept in $dir"
	rm -rf "$dir"
	echo "setup $id removed"
}

cmd_cut() {
	load "$1"
	check_node "$2"
	ip link set "shv-$id-$2" down
	echo "node $2 ($(node_ip "$2")) cut off"
}

cmd_heal() {
	load "$1"
	check_node "$2"
	ip link set "shv-$id-$2" up
	echo "node $2 ($(node_ip "$2")) reconnected"
}

cmd_exec() {
	load "$1"
	check_node "$2"
	local i=$2
	shift 2
	exec ip netns exec "sh-$id-n$i" "$@"
}

cmd_status() {
	load "$1"
	local i state pid
	for ((i = 1; i <= nodes; i++)); do
		state=$(cat "/sys/class/net/shv-$id-$i/operstate" 2>/dev/null || echo missing)
		pid=$(cat "$dir/n$i.pid" 2>/dev/null || echo -)
		kill -0 "$pid" 2>/dev/null || pid="$pid (not running)"
		echo "n$i $(node_ip "$i"):$GRPC_PORT link $state, shoald pid $pid"
	done
	"$SHOAL" --addr "$(node_ip 1):$GRPC_PORT" --timeout 3 node ls || true
}

cmd_ls() {
	local d
	for d in "$STATE"/*/; do
		[[ -f $d/subnet ]] || continue
		echo "$(basename "$d"): $(<"$d/nodes") nodes on 10.216.$(<"$d/subnet").0/24"
	done
}

(($# >= 1)) || usage
command=$1
shift
want() { (($1)) || usage; }
case $command in
up) cmd_up "$@" ;;
down) want "$# == 1" && cmd_down "$1" ;;
cut) want "$# == 2" && cmd_cut "$@" ;;
heal) want "$# == 2" && cmd_heal "$@" ;;
exec) want "$# >= 3" && cmd_exec "$@" ;;
status) want "$# == 1" && cmd_status "$1" ;;
ls) cmd_ls ;;
*) usage ;;
esac
