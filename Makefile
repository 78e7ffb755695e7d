# shoal's developer entry points. Everything runs from the repository's .venv.
#
#   make demo    install what is missing, build the demo images, start a 3-node local
#                cluster (embedded etcd), apply deploy/examples/web.yaml, show the
#                replicas and their answers, then deploy the example app (nginx ->
#                web x3 -> redis, deploy/examples/app); the cluster keeps running
#   make stop    stop the local cluster started by `make demo`
#   make test    install, then stub freshness, ruff, mypy, import layers, pytest
#                (unit, then integration against real etcd and Docker)
#   make lint    the static checks only
#   make proto   regenerate node/pb from proto/
#   make bench   bench/converge.py, failover.py, rollout.py, gossip_sim.py, cli.py, footprint.py
#   make chaos   the chaos suite on a test bed (root): CHAOS_SEED=1 CHAOS_MINUTES=10 (a soak)
#   make clean   stop the local cluster, remove caches and its state
#
# Installing needs root (apt-get, dockerd): see deploy/install.sh.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
SHOAL := $(VENV)/bin/shoal
DEV_DIR := .shoal-dev
# The CLI's credentials for the local cluster: `shoal dev` writes the admin's context
# file into its data dir (never into ~/.config); an already set SHOAL_CONTEXT_FILE wins.
export SHOAL_CONTEXT_FILE ?= $(abspath $(DEV_DIR))/context.json
DEMO_SPEC := deploy/examples/web.yaml
DEMO_TIMEOUT ?= 60
APP_DEPLOY := deploy/examples/app/deploy.sh
PYTEST_ARGS ?=
# integration test files run in this many pytest-xdist workers (1: one after another)
TEST_WORKERS ?= 2
# unit tests run in this many pytest-xdist workers: auto (one per core, at most 8) or a number (1: in
# pytest itself). At most 8: each worker draws its free ports from 1/n of those below the ephemeral
# range (node.dev.freeports), and one worker of the unit suite can take some 630.
UNIT_WORKERS ?= auto

.PHONY: help install images demo stop test lint proto bench chaos clean

help:
	@sed -n '3,15p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

install:
	@bash deploy/install.sh

images: install
	@bash deploy/images/build.sh

demo: install images
	@echo "== local cluster"
	if $(SHOAL) --timeout 3 node ls >/dev/null 2>&1; then
	  echo "a cluster already answers at $${SHOAL_ADDR:-127.0.0.1:7070}; using it"
	else
	  $(SHOAL) dev --detach --nodes 3 --data-dir $(DEV_DIR)
	fi
	$(SHOAL) node ls
	echo
	echo "== shoal service apply -f $(DEMO_SPEC)"
	$(SHOAL) service apply -f $(DEMO_SPEC)
	# Wait (with a deadline) for 3 running replicas, each published as an endpoint.
	count='import json, sys; d = json.load(sys.stdin); print(sum(t.get("state", "running") == "running" for t in d))'
	routable='import json, sys; print(len(json.load(sys.stdin)["endpoints"]))'
	deadline=$$((SECONDS + $(DEMO_TIMEOUT)))
	while :; do
	  running=$$($(SHOAL) service ps web -o json 2>/dev/null | $(PY) -c "$$count" 2>/dev/null || echo 0)
	  endpoints=$$($(SHOAL) resolve web -o json 2>/dev/null | $(PY) -c "$$routable" 2>/dev/null || echo 0)
	  if [[ $$running == 3 && $$endpoints == 3 ]]; then break; fi
	  if (( SECONDS >= deadline )); then
	    echo "demo: web has $$running/3 running and $$endpoints/3 endpoints after $(DEMO_TIMEOUT)s" >&2
	    $(SHOAL) service ps web >&2 || true
	    echo "daemon logs: $(DEV_DIR)/*.log" >&2
	    exit 1
	  fi
	  sleep 0.5
	done
	echo
	echo "== shoal service ps web"
	$(SHOAL) service ps web
	echo
	echo "== shoal resolve web"
	$(SHOAL) resolve web
	echo
	echo "== through the proxy: every node serves web on its own address, round-robin over the replicas"
	mesh=$$($(SHOAL) resolve web -o json | $(PY) -c 'import json, sys; [print("%s:%s %s" % (m["address"], m["port"], m["node"])) for m in json.load(sys.stdin)["mesh"]]')
	while read -r target node; do
	  for i in 1 2 3; do
	    answer=$$(curl -fsS --max-time 2 --retry 10 --retry-connrefused --retry-delay 0 --retry-max-time 10 "http://$$target/")
	    printf '  %-18s %-4s -> %s\n' "$$target" "$$node" "$$answer"
	  done
	done <<< "$$mesh"
	echo
	echo "== the example application: nginx -> web x3 -> redis (deploy/examples/app, docs/example-app.md)"
	SHOAL=$(SHOAL) PY=$(PY) bash $(APP_DEPLOY)
	echo
	echo "The cluster keeps running. Try:"
	echo "  export SHOAL_CONTEXT_FILE=$$SHOAL_CONTEXT_FILE   # the CLI's credentials for it"
	echo "  $(SHOAL) service scale web 5 && $(SHOAL) service ps web"
	echo "  $(SHOAL) resolve web --watch   # Ctrl-C to leave"
	echo "  curl -s http://127.0.0.1:7071/metrics | grep shoal_proxy"
	echo "  $(SHOAL) events -f        # Ctrl-C to leave"
	echo "  curl -s http://127.0.0.1:18081/   # the app's front door: a visit counter kept in redis"
	echo "  $(SHOAL) stack ps app && $(SHOAL) stack rm app"
	echo "Logs and state: $(DEV_DIR)/ . Stop it (and remove its containers): make stop"

stop:
	@if [[ -f $(DEV_DIR)/dev.pid ]]; then
	  $(SHOAL) dev --stop --data-dir $(DEV_DIR)
	else
	  echo "no local cluster runs from $(DEV_DIR)"
	fi

lint: install
	@echo "== stubs fresh (node/pb)"
	$(PY) -m node.pb.generate --check
	echo "== ruff"
	$(VENV)/bin/ruff check .
	echo "== mypy"
	$(VENV)/bin/mypy
	echo "== import layers"
	$(VENV)/bin/lint-imports

# Unit and integration tests run apart, so that either one collecting nothing fails:
# pytest exits 5 when it collects no test, and that is an error here, never a pass.
test: install images lint
	@for suite in unit integration; do
	  echo "== pytest tests/$$suite"
	  rc=0
	  workers=()  # the integration tests mostly wait on clusters: files run in parallel workers
	  if [[ $$suite == integration ]] && (( $(TEST_WORKERS) > 1 )); then workers=(-n $(TEST_WORKERS) --dist loadfile); fi
	  if [[ $$suite == unit && $(UNIT_WORKERS) != 1 ]]; then workers=(-n $(UNIT_WORKERS) --maxprocesses 8); fi
	  $(VENV)/bin/pytest -q -ra --durations=15 "$${workers[@]}" tests/$$suite $(PYTEST_ARGS) || rc=$$?
	  if (( rc == 5 )); then
	    echo "error: pytest collected no tests in tests/$$suite (exit 5)" >&2
	  fi
	  if (( rc != 0 )); then exit $$rc; fi
	done

proto: install
	@$(PY) -m node.pb.generate
	echo "node/pb regenerated from proto/"

bench: install images
	@$(PY) bench/converge.py $(BENCH_ARGS)
	$(PY) bench/failover.py
	$(PY) bench/rollout.py
	$(PY) bench/gossip_sim.py
	$(PY) bench/cli.py
	$(PY) bench/footprint.py

# Not part of `make test`: seeded faults on a test bed, judged by tests/chaos/checker.py.
CHAOS_SEED ?= 1
CHAOS_MINUTES ?= 10
# First the checker's planted-violation run on a real bed (it must fail), then the soak.
chaos: install images
	@$(VENV)/bin/pytest -q -ra tests/chaos
	$(PY) -m tests.chaos.run --seed $(CHAOS_SEED) --minutes $(CHAOS_MINUTES)

clean: stop
	@rm -rf $(DEV_DIR) .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	echo "cleaned (the venv stays: rm -rf $(VENV) to remove it)"
