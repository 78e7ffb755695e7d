"""`python -m deploy.testbed up N | down [ID...] | ls` (what deploy/testbed/bed.sh runs)."""

from __future__ import annotations

import sys

from deploy.testbed.bed import ROOT, Bed, BedError


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("up", "down", "ls"):
        print("usage: bed.sh up [HOSTS] | down [ID ...] | ls", file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    try:
        if command == "up":
            hosts = int(args[0]) if args else 3
            bed = Bed(hosts).up()
            print(f"bed {bed.id}: {hosts} hosts on {bed.subnet} (etcd on h1-h{len(bed.etcd_hosts)}), "
                  f"up in {bed.timings['up']:.1f}s {bed.timings}")  # fmt: skip
            for i in range(1, hosts + 1):
                print(f"  h{i} {bed.ip(i)}  netns {bed.netns(i)}  DOCKER_HOST={bed.docker_host(i)}")
            print(f"  export SHOAL_CONTEXT_FILE={bed.context_file} SHOAL_ADDR={bed.addr(1)}")
            print(
                f"  nsenter --net=/var/run/netns/{bed.netns(1)} sh   # a shell on h1;  bed.sh down {bed.id}"
            )
            return 0
        ids = args or ([p.name for p in sorted(ROOT.iterdir()) if (p / "bed.json").exists()]
                       if ROOT.exists() else [])  # fmt: skip
        if command == "ls":
            for bed_id in ids:
                bed = Bed.load(bed_id)
                print(f"{bed.id}: {bed.hosts} hosts on {bed.subnet}")
            return 0
        failed = 0
        for bed_id in ids:
            bed = Bed.load(bed_id)
            left = bed.down()
            print(f"bed {bed_id} removed in {bed.timings['down']:.1f}s" if not left
                  else f"bed {bed_id}: left behind: {', '.join(left)}")  # fmt: skip
            failed += bool(left)
        return 1 if failed else 0
    except (BedError, ValueError) as exc:
        print(f"bed.sh: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
