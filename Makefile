# Livestream flash-sale backend. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# What `make test` selects: everything but the slow chaos scenarios (`make chaos` runs those).
TEST_MARKERS ?= not slow and (not cluster or cluster_smoke)
BENCH_ARGS ?=

.PHONY: help install system-deps fetch up down ps logs demo test test-unit test-integration \
        up-cluster down-cluster ps-cluster test-cluster \
        lint typecheck fmt check bench bench-scale bench-lua bench-rtt bench-aio-burst soak token journal-verify \
        reconcile chaos clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-17s %s\n", $$1, $$2}'

$(STAMP): requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	@touch $@

system-deps: ## install redis-server, wrk, ss, chromium and promtool from Debian when missing; check Java and Maven
	@deploy/local/install-system-deps.sh

install: system-deps $(STAMP) ## everything a fresh machine needs: system packages, the virtualenv
	@echo "installed: $(VENV) and system packages"

fetch: $(STAMP) ## resolve the Kafka broker's jars from Maven Central into the cache
	@$(PY) -m deploy.local.stack fetch

up: install fetch ## start Kafka, Redis and the three services; wait for every /readyz
	@$(PY) -m deploy.local.stack up

down: ## stop the services, Redis and Kafka
	@test -x $(PY) && $(PY) -m deploy.local.stack down || true

up-cluster: install fetch ## 3 Kafka brokers, a Redis Cluster (3 masters + 3 replicas), 2 processes per service; .run/cluster/stack.env
	@$(PY) -m deploy.local.cluster_stack up

down-cluster: ## stop what make up-cluster started
	@test -x $(PY) && $(PY) -m deploy.local.cluster_stack down || true

ps-cluster: ## what runs of the cluster stack, with readiness
	@$(PY) -m deploy.local.cluster_stack ps

ps: ## what runs, with pids, URLs and readiness
	@$(PY) -m deploy.local.stack ps

logs: ## the tail of every log under .run/logs
	@$(PY) -m deploy.local.stack logs

demo: up ## start the stack and run a simulated live flash sale against it
	@$(PY) -m bench.demo --env-file .run/stack.env

test: install fetch ## install, then the whole suite on its own Kafka and Redis (not the slow chaos scenarios; of the cluster tests the burst only)
	$(PY) -m pytest -m "$(TEST_MARKERS)" $(PYTEST_ARGS)

test-cluster: install fetch ## the cluster tests: starts its own 3 brokers and Redis Cluster on free ports (a few minutes)
	$(PY) -m pytest -m cluster tests/cluster $(PYTEST_ARGS)

chaos: install fetch ## every chaos scenario, the slow ones too (broker SIGKILL, SIGSTOP, group churn)
	$(PY) -m pytest -m chaos tests/chaos $(PYTEST_ARGS)

test-unit: $(STAMP) ## only the unit tests (no servers)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy

fmt: $(STAMP) ## format and fix what ruff can
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

check: lint typecheck test ## lint, typecheck and the whole suite

bench: up ## wrk load harness: L0, order path, sold-out, launch burst; CPU/RSS (BENCH_ARGS=...)
	@$(PY) -m bench.http_load --env-file .run/stack.env $(BENCH_ARGS)

bench-scale: up ## decided orders/s and sold-out rejections/s, 1 vs 2 processes of each service (BENCH_ARGS=...)
	@$(PY) -m bench.scale_out --env-file .run/stack.env $(BENCH_ARGS)

bench-lua: up ## decided orders/s by orders per Lua call (StockStore.reserve_batch on Redis)
	@$(PY) -m bench.reserve_batch_sizes --env-file .run/stack.env

bench-rtt: up ## CPU and time of one round trip: Redis (socket, redis-py, TickPipeline), Kafka produce and fetch (client, broker)
	@$(PY) -m bench.round_trips --env-file .run/stack.env $(BENCH_ARGS)

bench-aio-burst: up ## bursts from an aiohttp client, 202s followed up: decided vs fast-path latency
	@$(PY) -m bench.reserve_burst --env-file .run/stack.env

# The soak runs its own stack (own run dir and ports, so a running `make up` is left alone)
# with short retentions, and stops it afterwards. Kafka's retention check interval stays
# the broker's 5 min: LC_REPLAY_SLACK_MS is short here only to keep the run short.
SOAK_RUN_DIR := $(CURDIR)/.run/soak
SOAK_ENV := LC_RUN_DIR=$(SOAK_RUN_DIR) LC_KAFKA_PORT=19092 LC_KAFKA_CONTROLLER_PORT=19093 \
  LC_REDIS_PORT=16379 LC_LIVE_ORDERS_PORT=18081 LC_INVENTORY_PORT=18082 LC_NOTIFIER_PORT=18083 \
  LC_TOPIC_RETENTION_MS=60000 LC_TOPIC_SEGMENT_MS=60000 LC_REPLAY_SLACK_MS=30000 \
  LC_RESERVATION_TTL_S=30 LC_ORDER_RETENTION_S=60 LC_PICK_RETENTION_S=60 LC_TRACE_RETENTION_S=180
SOAK_ARGS ?=

soak: install fetch ## 200,000 orders on a short-retention stack: Redis memory before/peak/after retention, RSS (SOAK_ARGS=...)
	@env $(SOAK_ENV) $(PY) -m deploy.local.stack down >/dev/null 2>&1; rm -rf $(SOAK_RUN_DIR)
	@env $(SOAK_ENV) $(PY) -m deploy.local.stack up
	@env $(SOAK_ENV) $(PY) -m bench.soak --env-file $(SOAK_RUN_DIR)/stack.env --run-dir $(SOAK_RUN_DIR) $(SOAK_ARGS); \
	  status=$$?; env $(SOAK_ENV) $(PY) -m deploy.local.stack down; exit $$status

token: $(STAMP) ## mint a token: make token ROLE=host SUB=host-1 [WAREHOUSE=wh-1]
	@$(PY) -m services.common.mint_token --env-file .run/stack.env --role $(ROLE) --sub $(SUB) \
	  $(if $(WAREHOUSE),--warehouse-id $(WAREHOUSE))

journal-verify: $(STAMP) ## check a lot's journal hash chain: make journal-verify SKU=crab LOT=L1 (exit 1: broken)
	@$(PY) -m services.inventory.journal verify --env-file .run/stack.env --sku "$(SKU)" --lot "$(LOT)"

reconcile: $(STAMP) ## compare the Kafka log with inventory's Redis and the orders (exit 1: differences; ARGS=--repair)
	@$(PY) -m services.inventory.reconcile --env-file .run/stack.env $(ARGS)

clean: down ## stop everything and remove .run (logs, data) and the virtualenv
	rm -rf .run $(VENV)
