"""What shoal does with each Compose key it does not translate (docs/stacks.md lists them).

REFUSED: honouring the file without them would change what the application does (code
that is not in the image, privileges, data that would not persist, files that would be
missing, another user or directory): the deploy fails with one line per key.
IGNORED: leaving them out changes no behaviour the application relies on (metadata, log
routing, names shoal makes itself): one warning line per key, and the deploy goes on.
"""

from __future__ import annotations

# translated onto shoal's spec (node.compose.translate)
SUPPORTED: tuple[str, ...] = ("image", "command", "environment", "env_file", "ports", "expose", "deploy")
SUPPORTED += ("restart", "healthcheck", "depends_on", "stop_grace_period", "mem_limit", "mem_reservation")
SUPPORTED += ("cpus", "profiles", "scale")
SUPPORTED += ("volumes",)  # named volumes (node.compose.volumes)
SUPPORTED += ("pull_policy",)  # issue 13, images from registries: onto `pull`
SUPPORTED += ("networks",)  # issue 13, networks scope names and VIPs (node.compose.networks)
# decision 70 (node.compose.full): secrets and configs, the process, logging
SUPPORTED += ("secrets", "configs", "entrypoint", "user", "working_dir", "read_only", "logging")
SUPPORTED += ("labels",)  # decision 73: container labels (and deploy.labels: service_labels)
PULL_POLICIES = {"always": "always", "missing": "missing", "if_not_present": "missing", "never": "never"}
_NOT_YET = "not supported by shoal yet"

REFUSED: dict[str, str] = {
    "build": "shoal runs images and builds none: build and push the image "
    "(docker compose build && docker compose push), set image:, and remove build:",
    "privileged": "shoal runs no privileged containers",
    "cap_add": "shoal runs containers with Docker's default capabilities only",
    "cap_drop": f"{_NOT_YET}; the container would keep the capabilities it drops",
    "devices": "shoal gives containers no host devices",
    "device_cgroup_rules": "shoal gives containers no host devices",
    "security_opt": f"{_NOT_YET}; the container would run with other security options",
    "pid": "shoal shares no host or container PID namespace",
    "ipc": "shoal shares no host or container IPC namespace",
    "userns_mode": f"{_NOT_YET}",
    "network_mode": "replicas are on Docker's default bridge, reached through shoal's mesh",
    "sysctls": f"{_NOT_YET}",
    "ulimits": f"{_NOT_YET}; the container would run with other limits",
    "volumes_from": f"{_NOT_YET}: the data would not survive a restart or a move",
    "tmpfs": f"{_NOT_YET}",
    "extra_hosts": f"{_NOT_YET}: those names would not resolve",
    "links": "replicas reach other services through shoal's mesh, not Docker links",
    "external_links": "replicas reach other services through shoal's mesh, not Docker links",
    "init": f"{_NOT_YET}: no init process would reap zombies or forward signals",
    "shm_size": f"{_NOT_YET}: /dev/shm would keep Docker's 64 MB",
    "cgroup_parent": "shoal places containers in Docker's cgroups",
    "runtime": "shoal runs containers with the engine's default runtime",
    "group_add": f"{_NOT_YET}",
    "storage_opt": f"{_NOT_YET}",
    "isolation": f"{_NOT_YET}",
    "oom_kill_disable": f"{_NOT_YET}",
    "include": "shoal reads one Compose file: merge the included files into it",
    "extends": "shoal reads one Compose file: write the extended keys out",
    "gpus": "shoal gives containers no GPUs",
}
# Refused only when set to this value: the other is what shoal does anyway.
REFUSED_WHEN_TRUE = ("privileged", "init", "oom_kill_disable")

IGNORED: dict[str, str] = {
    "container_name": "shoal names each replica <stack>_<service>.<slot>.<task>",
    "hostname": "each replica keeps the hostname Docker gives it",
    "domainname": "each replica keeps Docker's default",
    "dns": "replicas use the engine's resolver",
    "dns_search": "replicas use the engine's resolver",
    "dns_opt": "replicas use the engine's resolver",
    "tty": "replicas run without a terminal",
    "stdin_open": "replicas run without stdin",
    "platform": "each node runs the image for its own platform",
    "stop_signal": "replicas are stopped with SIGTERM, then SIGKILL after stop_grace_period",
    "mac_address": "Docker gives each replica its address",
    "annotations": "metadata only",
    "attach": "shoal attaches to no container's output",
    "cpu_shares": "cpu reservations are deploy.resources.reservations.cpus",
    "cpuset": "cpu reservations are deploy.resources.reservations.cpus",
    "cpu_quota": "cpu limits are deploy.resources.limits.cpus",
    "cpu_period": "cpu limits are deploy.resources.limits.cpus",
    "oom_score_adj": "replicas keep Docker's default",
    "memswap_limit": "memory limits are deploy.resources.limits.memory",
    "develop": "`docker compose watch` settings: development only",
    "expose_metrics": "metadata only",
}
DEPLOY_IGNORED: dict[str, str] = {
    "endpoint_mode": "services are reached through shoal's mesh (one virtual address per port)",
    "rollback_config": "a failed update rolls back with update_config's settings",
}
TOP_LEVEL = ("version", "name", "services", "networks", "volumes", "secrets", "configs")
TOP_IGNORED: dict[str, str] = {}  # secrets and configs: node.compose.objects (decision 70)
NO_UDP = "not carried by shoal's proxy, which forwards TCP (and HTTP) only"
RESTART = {"none": "never", "no": "never", "on-failure": "on-failure", "any": "always", "always": "always"}
