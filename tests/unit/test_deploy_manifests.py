"""The container deployment files, checked without a container engine or a cluster.

Dockerfile, .dockerignore, deploy/compose/compose.yaml and deploy/k8s/*.yaml are parsed
and held to the properties the services rely on: the right ports and probes, non-root,
the secrets from Secrets, Redis durability settings, every `LC_*` variable there known to
services/common/settings.py (read from its source, not hard-coded here), and every variable
settings.py reads set for every service, but for the exclusions listed (with the reason)
in COMPOSE_UNSET and K8S_NOT_GIVEN. Each
Kubernetes object is also validated against the official OpenAPI-derived JSON schemas
bundled in `kubernetes-validate` (offline, strict: unknown fields fail).
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml

from deploy.local.stack import KAFKA_VERSION, REDIS_AOF_REWRITE_ARGS
from services.common.settings import (
    SECRET_VARIABLES,
    Settings,
    SettingsError,
    mask_url_password,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_PY = ROOT / "services" / "common" / "settings.py"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose" / "compose.yaml"
OBSERVABILITY = ROOT / "deploy" / "observability"
K8S = ROOT / "deploy" / "k8s"

# python module -> (name in compose, Kubernetes and the Dockerfile target, port)
SERVICES = {
    "live_orders": ("live-orders", 8081),
    "inventory": ("inventory", 8082),
    "notifier": ("notifier", 8083),
}
NAMES = {name: module for module, (name, _) in SERVICES.items()}
# The Kubernetes versions the manifests are held to: the oldest we support, the newest
# schema the validator bundles.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
# A secret Settings accepts (>= 16 characters); the real one comes from the environment.
GOOD_SECRET = "unit-test-secret-" + "x" * 24
LC_NAME = re.compile(r"\bLC_[A-Z0-9_]*[A-Z0-9]\b")


# ----------------------------------------------------------------------- settings.py


def settings_variables() -> set[str]:
    """Every `LC_*` variable settings.py reads: the string literals, plus the per-service
    port variable it builds as f"LC_{service.upper()}_PORT" from DEFAULT_PORTS."""
    source = SETTINGS_PY.read_text()
    tree = ast.parse(source)
    names = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"LC_[A-Z0-9_]+", node.value)
    }
    default_ports: dict[str, int] | None = None
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id == "DEFAULT_PORTS"
        ):
            default_ports = ast.literal_eval(node.value)
    assert default_ports is not None, "settings.py no longer defines DEFAULT_PORTS"
    assert 'f"LC_{service.upper()}_PORT"' in source, "settings.py changed how it names ports"
    return names | {f"LC_{service.upper()}_PORT" for service in default_ports}


def default_ports() -> dict[str, int]:
    tree = ast.parse(SETTINGS_PY.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "DEFAULT_PORTS":
            value: dict[str, int] = ast.literal_eval(node.value)
            return value
    raise AssertionError("DEFAULT_PORTS not found in settings.py")


def test_settings_variables_are_parsed_from_settings_py() -> None:
    names = settings_variables()
    for expected in (
        "LC_JWT_SECRET",
        "LC_KAFKA_BOOTSTRAP",
        "LC_REDIS_URL",
        "LC_TOPIC_PARTITIONS",
        "LC_TOPIC_REPLICATION_FACTOR",
        "LC_LIVE_ORDERS_PORT",
        "LC_INVENTORY_PORT",
        "LC_NOTIFIER_PORT",
    ):
        assert expected in names
    assert default_ports() == {module: port for module, (_, port) in SERVICES.items()}


# ----------------------------------------------------------------------- YAML loading


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_objects() -> list[dict[str, Any]]:
    objects = []
    for path in k8s_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                objects.append(doc)
    return objects


def applied_objects() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` creates (the Secret template is not in it)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = []
    for name in kustomization["resources"]:
        objects.extend(d for d in yaml.safe_load_all((K8S / name).read_text()) if d)
    return objects


def of_kind(kind: str, objects: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """The objects of one kind by name (by default: those `kubectl apply -k` creates)."""
    pool = applied_objects() if objects is None else objects
    return {o["metadata"]["name"]: o for o in pool if o["kind"] == kind}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def test_every_yaml_file_parses() -> None:
    files = [
        COMPOSE,
        K8S / "kustomization.yaml",
        *k8s_files(),
        *sorted(OBSERVABILITY.rglob("*.yml")),
    ]
    assert len(files) >= 8
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), path


# ----------------------------------------------------------------------- LC_* variables


def test_every_lc_variable_in_the_deploy_files_exists_in_settings() -> None:
    known = settings_variables()
    used: dict[str, set[str]] = {}
    for path in [COMPOSE, *K8S.glob("*.yaml"), DOCKERFILE]:
        for name in LC_NAME.findall(path.read_text()):
            used.setdefault(name, set()).add(path.name)
    # Structurally too: environment keys in compose, ConfigMap keys, container env names.
    for service in compose()["services"].values():
        for name in service.get("environment", {}):
            if name.startswith("LC_"):
                used.setdefault(name, set()).add("compose environment")
    for config in of_kind("ConfigMap", k8s_objects()).values():
        for name in config["data"]:
            used.setdefault(name, set()).add("ConfigMap")
    for deployment in of_kind("Deployment").values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                used.setdefault(env["name"], set()).add("Deployment env")
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"not read by services/common/settings.py: {unknown}"
    assert "LC_JWT_SECRET" in used


# LC_* variables a deploy file may leave unset, and why. Every other variable settings.py
# reads must be set there (the tests below), so a setting added to settings.py cannot be
# left out of the deployments again. An exclusion must name a variable settings.py reads
# that the file indeed does not set.
TRANSPORT_SECURITY = (
    "LC_KAFKA_SECURITY_PROTOCOL",
    "LC_KAFKA_SASL_MECHANISM",
    "LC_KAFKA_SASL_USERNAME",
    "LC_KAFKA_SASL_PASSWORD",
    "LC_KAFKA_SSL_CAFILE",
    "LC_KAFKA_SSL_CERTFILE",
    "LC_KAFKA_SSL_KEYFILE",
    "LC_REDIS_USERNAME",
    "LC_REDIS_PASSWORD",
    "LC_REDIS_SSL_CAFILE",
)
COMPOSE_UNSET = {
    **{
        name: "compose's own Kafka and Redis speak plain text without auth on its network"
        for name in TRANSPORT_SECURITY
    },
    "LC_REDIS_CLUSTER": "compose runs one Redis, not a cluster",
}
# Kubernetes: variable -> (the Deployments not given it, why).
K8S_NOT_GIVEN = {
    "LC_TRACE_SECRET": (frozenset({"live-orders", "notifier"}), "only inventory makes trace codes"),
}
# Secrets: from a Secret in every Deployment that gets them, never in the ConfigMap.
# LC_REDIS_URL is masked like a secret because it may carry a password; here it carries
# none (LC_REDIS_PASSWORD does), which test_kubernetes_secrets_come_from_secrets checks.
SECRETS = SECRET_VARIABLES - {"LC_REDIS_URL"}


def own_port_only(module: str) -> set[str]:
    """What settings.py reads for `module`: every variable but the other services' ports."""
    others = {f"LC_{other.upper()}_PORT" for other in SERVICES if other != module}
    return settings_variables() - others


def test_the_exclusion_lists_name_real_variables() -> None:
    known = settings_variables()
    assert set(COMPOSE_UNSET) <= known
    assert set(K8S_NOT_GIVEN) <= known
    assert known >= SECRETS


def test_every_settings_variable_is_set_for_every_compose_service() -> None:
    for module, (name, _) in SERVICES.items():
        environment = set(compose()["services"][name]["environment"])
        missing = own_port_only(module) - environment - set(COMPOSE_UNSET)
        assert not missing, f"{name}: not set in compose.yaml nor in COMPOSE_UNSET: {missing}"
        stale = set(COMPOSE_UNSET) & environment
        assert not stale, f"{name} sets {stale}: drop them from COMPOSE_UNSET"


def deployment_env(deployment: dict[str, Any]) -> dict[str, str]:
    """Variable -> where the container gets it (`configmap:<name>`, `secret:<name>`, ...)."""
    container = _container(deployment)
    configs = of_kind("ConfigMap")
    given: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        given.update(dict.fromkeys(configs[name]["data"], f"configmap:{name}"))
    for env in container.get("env", []):
        if "value" in env:
            given[env["name"]] = "value"
        elif "secretKeyRef" in env["valueFrom"]:
            given[env["name"]] = f"secret:{env['valueFrom']['secretKeyRef']['name']}"
        else:
            given[env["name"]] = "field"
    return given


def test_every_settings_variable_reaches_every_kubernetes_deployment() -> None:
    for name, deployment in of_kind("Deployment").items():
        given = set(deployment_env(deployment))
        expected = {
            variable
            for variable in own_port_only(NAMES[name])
            if name not in K8S_NOT_GIVEN.get(variable, (frozenset(), ""))[0]
        }
        missing = expected - given
        assert not missing, f"{name}: neither in the ConfigMap nor its env: {missing}"
        for variable, (left_out, _) in K8S_NOT_GIVEN.items():
            if name in left_out:
                assert variable not in given, f"{name} gets {variable}: update K8S_NOT_GIVEN"


def test_kubernetes_secrets_come_from_secrets() -> None:
    templates = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "Secret"}
    (config,) = of_kind("ConfigMap").values()
    assert not SECRETS & set(config["data"]), "a secret in the ConfigMap"
    assert mask_url_password(config["data"]["LC_REDIS_URL"]) == config["data"]["LC_REDIS_URL"]
    for name, deployment in of_kind("Deployment").items():
        given = deployment_env(deployment)
        for variable in SECRETS & set(given):
            assert given[variable].startswith("secret:"), (
                f"{name}: {variable} from {given[variable]}"
            )
        for env in _container(deployment)["env"]:
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                # Every Secret a pod needs is documented, with the key, in the template.
                assert ref["key"] in templates[ref["name"]]["stringData"], (name, ref)
        for volume in deployment["spec"]["template"]["spec"]["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in templates, (name, volume)


# ----------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def last(self, keyword: str) -> str | None:
        values = [arg for key, arg in self.instructions if key == keyword]
        return values[-1] if values else None

    def all(self, keyword: str) -> list[str]:
        return [arg for key, arg in self.instructions if key == keyword]


def dockerfile_stages() -> dict[str, Stage]:
    text = DOCKERFILE.read_text()
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "dangling line continuation"
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    args: dict[str, str] = {}
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and current is None:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert match, line
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = Stage(match.group(2) or f"#{len(stages)}", base)
            stages[current.name] = current
        else:
            assert current is not None, f"{keyword} before FROM"
            current.instructions.append((keyword, rest))
    return stages


def effective(stages: dict[str, Stage], name: str, keyword: str) -> str | None:
    """The value of USER/CMD/HEALTHCHECK a stage ends with, following its FROM chain."""
    stage = stages[name]
    value = stage.last(keyword)
    if value is None and stage.base in stages:
        return effective(stages, stage.base, keyword)
    return value


def effective_env(stages: dict[str, Stage], name: str) -> dict[str, str]:
    stage = stages[name]
    env = effective_env(stages, stage.base) if stage.base in stages else {}
    for arg in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", arg):
            env[key] = value
    return env


def healthcheck_command(stages: dict[str, Stage], name: str) -> list[str]:
    check = effective(stages, name, "HEALTHCHECK")
    assert check is not None, f"stage {name} has no HEALTHCHECK"
    _, _, command = check.partition(" CMD ")
    assert command, check
    parsed: list[str] = yaml.safe_load(command)  # exec form: a JSON array
    return parsed


def run_python_probe(command: list[str], env: Mapping[str, str]) -> list[str]:
    """Run a `python -c` probe in-process with urlopen captured: the URLs it would ask."""
    assert command[:2] == ["python", "-c"], command
    asked: list[str] = []

    def fake_urlopen(url: str, timeout: float) -> object:
        assert timeout <= 3
        asked.append(url)
        return object()

    with (
        mock.patch.dict(os.environ, env, clear=True),
        mock.patch.object(urllib.request, "urlopen", fake_urlopen),
    ):
        exec(compile(command[2], "<probe>", "exec"), {})
    return asked


def test_dockerfile_builds_one_non_root_image_per_service() -> None:
    stages = dockerfile_stages()
    assert stages["build"].base.startswith("python:3.11-slim")
    for module, (name, port) in SERVICES.items():
        assert name in stages, f"no build target {name!r}"
        # The runtime is python:3.11-slim too (multi-stage: build -> runtime -> service).
        chain, stage = [], stages[name]
        while stage.base in stages:
            chain.append(stage.base)
            stage = stages[stage.base]
        assert stage.base.startswith("python:3.11-slim"), stage.base
        user = effective(stages, name, "USER")
        assert user is not None, f"{name} runs as root (no USER)"
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) > 0, f"{name}: USER {user} must be a numeric non-root uid"
        assert not gid or (gid.isdigit() and int(gid) > 0)
        cmd = yaml.safe_load(effective(stages, name, "CMD") or "null")
        assert cmd == ["python", "-m", f"services.{module}"], cmd
        assert (ROOT / "services" / module / "__main__.py").is_file()
        assert str(port) in stages[name].all("EXPOSE")
        assert effective_env(stages, name)["SERVICE_NAME"] == module


def test_dockerfile_installs_requirements_and_keeps_the_repo_layout() -> None:
    stages = dockerfile_stages()
    build_runs = " ".join(stages["build"].all("RUN"))
    assert "-r /tmp/requirements.txt" in build_runs
    assert "requirements.txt /tmp/requirements.txt" in stages["build"].all("COPY")
    runtime = stages["runtime"]
    assert "--from=build /opt/venv /opt/venv" in runtime.all("COPY")
    assert runtime.last("WORKDIR") == "/app"
    # services.common.schemas loads parents[2] / "schemas": /app/services/common/x.py ->
    # /app/schemas. Both folders must land side by side under /app.
    copies = runtime.all("COPY")
    assert "services/ /app/services/" in copies
    assert "schemas/ /app/schemas/" in copies
    schemas_py = (ROOT / "services" / "common" / "schemas.py").read_text()
    assert 'Path(__file__).resolve().parents[2] / "schemas"' in schemas_py


def test_dockerfile_healthcheck_asks_healthz_on_the_service_port() -> None:
    stages = dockerfile_stages()
    for module, (name, port) in SERVICES.items():
        command = healthcheck_command(stages, name)
        env = {"SERVICE_NAME": effective_env(stages, name)["SERVICE_NAME"]}
        assert run_python_probe(command, env) == [f"http://127.0.0.1:{port}/healthz"]
        # A port moved with LC_<SERVICE>_PORT is followed, as Settings does.
        moved = {**env, f"LC_{module.upper()}_PORT": "9999"}
        assert run_python_probe(command, moved) == ["http://127.0.0.1:9999/healthz"]


# ----------------------------------------------------------------------- .dockerignore


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent
    folders decides; `!` patterns re-include."""
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, _ignore_regex(pattern.strip("/"))))
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    needed = ["requirements.txt"] + [
        p.relative_to(ROOT).as_posix()
        for folder in ("services", "schemas")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    ]
    assert any(n.startswith("schemas/events/") for n in needed)
    for path in needed:
        assert not dockerignore_excludes(path), f"{path} would be missing from the image"
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".run/stack.env",
        "tests/conftest.py",
        "deploy/compose/.env",
        "services/common/__pycache__/settings.cpython-311.pyc",
        "bench/demo.py",
    ):
        assert dockerignore_excludes(path), f"{path} would be sent to the build"


# ----------------------------------------------------------------------- compose


class MissingVariable(LookupError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group("name"), match.group("op") or "", match.group("arg") or ""
        present = name in env and (env[name] != "" or ":" not in op)
        if op.endswith("?") and not present:
            raise MissingVariable(f"{name}: {arg}")
        if op.endswith("-") and not present:
            return arg
        return env.get(name, "")

    pattern = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
    if isinstance(value, str):
        return pattern.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def compose_service_env(name: str, env: Mapping[str, str]) -> dict[str, str]:
    environment = compose()["services"][name]["environment"]
    return {k: str(v) for k, v in interpolate(environment, env).items()}


def test_compose_redis_is_durable_and_never_evicts() -> None:
    redis = compose()["services"]["redis"]
    assert re.fullmatch(r"redis:7(\.\d+)*(-\w+)?", redis["image"]), redis["image"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    # AOF rewrites as `make up`'s Redis: the bench's CPU figures depend on them.
    rewrite = dict(zip(REDIS_AOF_REWRITE_ARGS[::2], REDIS_AOF_REWRITE_ARGS[1::2], strict=True))
    assert {flag: options.get(flag) for flag in rewrite} == rewrite
    assert "healthcheck" in redis
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_kafka_is_a_single_kraft_node_of_the_tested_version() -> None:
    kafka = compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"
    assert KAFKA_VERSION.startswith("4.")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", env["CLUSTER_ID"]), "a base64url UUID"
    listeners = dict(
        re.fullmatch(r"(\w+)://[^:]*:(\d+)", item).groups()  # type: ignore[union-attr]
        for item in env["KAFKA_LISTENERS"].split(",")
    )
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) == set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    controller_port = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].rsplit(":", 1)[1]
    assert listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == controller_port
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    # The services reach the broker by an advertised address on the compose network.
    bootstrap = compose_service_env("live-orders", {"LC_JWT_SECRET": GOOD_SECRET})
    assert bootstrap["LC_KAFKA_BOOTSTRAP"] in advertised.values()
    assert bootstrap["LC_KAFKA_BOOTSTRAP"].startswith("kafka:")
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_LOG_DIRS"] in {v.split(":")[1] for v in kafka["volumes"]}
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def test_compose_services_build_from_the_dockerfile_and_start_with_valid_settings() -> None:
    data = compose()
    stages = dockerfile_stages()
    for module, (name, port) in SERVICES.items():
        service = data["services"][name]
        build = service["build"]
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["target"] == name and name in stages
        assert service["ports"] == [f"{port}:{port}"]
        for dependency in ("kafka", "redis"):
            assert service["depends_on"][dependency] == {"condition": "service_healthy"}
            assert "healthcheck" in data["services"][dependency]
        # LC_JWT_SECRET is required, never defaulted: compose refuses to start without it.
        raw_secret = service["environment"]["LC_JWT_SECRET"]
        assert re.fullmatch(r"\$\{LC_JWT_SECRET:\?[^}]+\}", raw_secret), raw_secret
        with pytest.raises(MissingVariable, match="LC_JWT_SECRET"):
            compose_service_env(name, {})
        env = compose_service_env(name, {"LC_JWT_SECRET": GOOD_SECRET})
        settings = Settings.from_env(module, env)
        assert settings.http_port == port
        assert settings.jwt_secret == GOOD_SECRET
        assert settings.redis_url.startswith("redis://redis:")
        assert settings.topic_replication_factor == 1  # one broker
        # The readiness check asks /readyz on the port the service listens on.
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert run_python_probe(test[1:], env) == [f"http://127.0.0.1:{port}/readyz"]
        assert service.get("user") in (None, "10001", "10001:10001")


def _mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a compose service's bind mounts (`:ro` kept apart)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            assert mode == ["ro"], f"{volume}: configuration is mounted read-only"
            mounts[target] = (COMPOSE.parent / source).resolve()
    return mounts


def test_compose_prometheus_scrapes_every_service_where_compose_runs_it() -> None:
    data = compose()
    prometheus = data["services"]["prometheus"]
    mounts = _mounts(prometheus)
    assert mounts["/etc/prometheus"] == OBSERVABILITY / "prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]
    config = yaml.safe_load((OBSERVABILITY / "prometheus" / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    for module, (name, port) in SERVICES.items():
        # The compose service's name and the port its settings listen on.
        env = compose_service_env(name, {"LC_JWT_SECRET": GOOD_SECRET})
        assert Settings.from_env(module, env).http_port == port
        assert jobs[module] == [f"{name}:{port}"], module
    exporter = data["services"]["redis-exporter"]
    assert exporter["image"].startswith("oliver006/redis_exporter:")
    assert exporter["environment"]["REDIS_ADDR"] == "redis://redis:6379"
    assert exporter["depends_on"]["redis"] == {"condition": "service_healthy"}
    # redis_exporter listens on 9121 by default.
    assert jobs["redis"] == ["redis-exporter:9121"]
    assert set(jobs) == {*SERVICES, "redis", "prometheus"}


def test_compose_grafana_is_provisioned_with_the_datasource_and_the_dashboards() -> None:
    data = compose()
    grafana = data["services"]["grafana"]
    mounts = _mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == OBSERVABILITY / "grafana" / "provisioning"
    provisioning = OBSERVABILITY / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "livecommerce.yml").read_text())[
        "providers"
    ]
    dashboards_dir = provider["options"]["path"]
    assert mounts[dashboards_dir] == OBSERVABILITY / "grafana" / "dashboards"
    assert list(mounts[dashboards_dir].glob("*.json"))
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_dir)
    assert (mounts[dashboards_dir] / Path(home).name).is_file()
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    # The datasource reaches Prometheus by its compose service name and container port.
    assert source["url"] == "http://prometheus:9090"
    assert grafana["depends_on"]["prometheus"] == {"condition": "service_healthy"}
    assert grafana["ports"] == ["127.0.0.1:3000:3000"]
    # The admin password can be set; nothing here defaults it to a secret.
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"].startswith(
        "${GRAFANA_ADMIN_PASSWORD"
    )
    assert {"prometheus-data", "grafana-data"} <= set(data["volumes"])


# ----------------------------------------------------------------------- Kubernetes


def test_kubernetes_objects_match_the_official_schemas() -> None:
    objects = k8s_objects()
    assert {o["kind"] for o in objects} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Ingress",
    }
    for version in K8S_VERSIONS:
        for obj in objects:
            kubernetes_validate.validate(obj, version, strict=True)


def test_the_schema_validation_rejects_a_typo() -> None:
    deployment = copy.deepcopy(of_kind("Deployment")["inventory"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kustomization["resources"])
    files = {p.name for p in k8s_files()}
    assert resources == files - {"secret.example.yaml"}
    namespaces = of_kind("Namespace")
    assert list(namespaces) == [kustomization["namespace"]]
    for obj in applied_objects():
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == kustomization["namespace"], obj["kind"]
    images = {i["name"] for i in kustomization["images"]}
    assert images == {f"livecommerce/{name}" for name, _ in SERVICES.values()}


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    assert numbers, f"no container port named {port}"
    return int(numbers[0])


def test_deployments_probe_readyz_and_healthz_on_the_service_port() -> None:
    deployments = of_kind("Deployment")
    assert set(deployments) == set(NAMES)
    for name, deployment in deployments.items():
        port = SERVICES[NAMES[name]][1]
        container = _container(deployment)
        assert [p["containerPort"] for p in container["ports"]] == [port]
        readiness = container["readinessProbe"]["httpGet"]
        liveness = container["livenessProbe"]["httpGet"]
        assert readiness["path"] == "/readyz"
        assert liveness["path"] == "/healthz"
        assert _port_number(container, readiness["port"]) == port
        assert _port_number(container, liveness["port"]) == port
        startup = container.get("startupProbe", {}).get("httpGet")
        if startup:
            assert startup["path"] == "/healthz"
            assert _port_number(container, startup["port"]) == port
        # The image matches the Dockerfile target of the same name.
        assert container["image"].split(":")[0] == f"livecommerce/{name}"
        assert "command" not in container and "args" not in container


def test_deployments_run_as_non_root_without_privileges() -> None:
    uid = int((effective(dockerfile_stages(), "live-orders", "USER") or "0").split(":")[0])
    for name, deployment in of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser", uid) == uid != 0, name
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod.get("automountServiceAccountToken") is False


def test_deployments_take_the_jwt_secret_from_a_secret() -> None:
    secret = next(o for o in k8s_objects() if o["kind"] == "Secret")
    config_names = set(of_kind("ConfigMap"))
    for name, deployment in of_kind("Deployment").items():
        container = _container(deployment)
        env = {e["name"]: e for e in container["env"]}
        ref = env["LC_JWT_SECRET"]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"], name
        assert ref["key"] in secret["stringData"]
        assert ref.get("optional") is not True
        assert "value" not in env["LC_JWT_SECRET"]
        # Every pod names itself after the pod, not after its (always 1) pid.
        assert env["LC_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        refs = [e["configMapRef"]["name"] for e in container["envFrom"]]
        assert refs and set(refs) <= config_names
    for config in of_kind("ConfigMap").values():
        assert "LC_JWT_SECRET" not in config["data"]


def test_the_secret_template_cannot_be_used_as_it_is() -> None:
    secret = next(o for o in k8s_objects() if o["kind"] == "Secret")
    placeholder = secret["stringData"]["LC_JWT_SECRET"]
    with pytest.raises(SettingsError, match="LC_JWT_SECRET"):
        Settings.from_env("live_orders", {"LC_JWT_SECRET": placeholder})
    assert "kubectl" in (K8S / "secret.example.yaml").read_text()  # says how to create it


def test_configmap_gives_every_service_valid_production_settings() -> None:
    (config,) = of_kind("ConfigMap").values()
    data = config["data"]
    assert all(isinstance(v, str) for v in data.values()), "ConfigMap values are strings"
    secrets = {name: GOOD_SECRET for name in SECRETS}
    for module, (_, port) in SERVICES.items():
        settings = Settings.from_env(module, {**data, **secrets})
        assert settings.http_port == port
        assert settings.topic_partitions == 12
        assert settings.topic_replication_factor == 3
        assert settings.kafka_min_insync_replicas == 2
        # Encrypted and authenticated to both backends.
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.kafka_sasl_mechanism.startswith("SCRAM-")
        assert settings.redis_url.startswith(("rediss://", "rediss+cluster://"))
        assert settings.redis_username and settings.redis_password
        assert settings.handler_timeout_s > settings.redis_timeout_s
    assert len(data["LC_KAFKA_BOOTSTRAP"].split(",")) >= 2


def test_deployments_shut_down_gracefully_and_spread_out() -> None:
    hpas = of_kind("HorizontalPodAutoscaler")
    autoscaled = {h["spec"]["scaleTargetRef"]["name"]: h for h in hpas.values()}
    for name, deployment in of_kind("Deployment").items():
        spec = deployment["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        if name in autoscaled:
            assert "replicas" not in spec, "the HPA owns the replica count"
            assert autoscaled[name]["spec"]["minReplicas"] >= 2
        else:
            assert spec["replicas"] >= 2, name
        container = _container(deployment)
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        # preStop, then aiohttp's shutdown (shutdown_timeout=10), then leaving the group.
        assert pod["terminationGracePeriodSeconds"] >= int(pre_stop[1]) + 10 + 10
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys()
        assert "memory" in resources["limits"]
        keys = set()
        for constraint in pod["topologySpreadConstraints"]:
            assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
            keys.add(constraint["topologyKey"])
        assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    # The autoscaler's target exists and is the buyer-facing API.
    assert set(autoscaled) == {"live-orders"}
    (hpa,) = hpas.values()
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]


def test_services_and_disruption_budgets_select_their_pods() -> None:
    deployments = of_kind("Deployment")
    services = of_kind("Service")
    budgets = of_kind("PodDisruptionBudget")
    assert set(services) == set(deployments) == set(budgets)
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        port = SERVICES[NAMES[name]][1]
        service = services[name]
        assert service["spec"]["selector"].items() <= labels.items()
        (service_port,) = service["spec"]["ports"]
        assert service_port["port"] == port
        assert _port_number(_container(deployment), service_port["targetPort"]) == port
        assert budgets[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert budgets[name]["spec"].get("maxUnavailable") == 1


def route(ingress: dict[str, Any], path: str) -> str | None:
    """The Service ingress-nginx sends `path` to: with use-regex every path is a
    case-insensitive regex anchored at the start, tried longest first. Prefix paths must
    also match as Kubernetes defines Prefix (element-wise), so that the routing does not
    depend on nginx's looser reading."""
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    (rule,) = ingress["spec"]["rules"]
    paths = sorted(rule["http"]["paths"], key=lambda p: len(p["path"]), reverse=True)
    for candidate in paths:
        prefix = candidate["path"]
        if candidate["pathType"] == "Prefix" and not (
            path == prefix or path.startswith(prefix + "/")
        ):
            continue  # Kubernetes' Prefix matches whole path elements; hold nginx to it too
        if re.match(prefix, path, re.IGNORECASE):
            name: str = candidate["backend"]["service"]["name"]
            return name
    return None


@pytest.mark.parametrize(
    ("path", "service"),
    [
        ("/v1/sessions", "live-orders"),
        ("/v1/sessions/s-1", "live-orders"),
        ("/v1/sessions/s-1/start", "live-orders"),
        ("/v1/sessions/s-1/listings", "live-orders"),
        ("/v1/sessions/s-1/orders", "live-orders"),
        ("/v1/sessions/s-1/live", "notifier"),
        ("/v1/sessions/s-1/events", "notifier"),
        ("/v1/orders/o-1", "live-orders"),
        ("/v1/orders/o-1/payment", "live-orders"),
        ("/v1/skus/crab-01", "inventory"),
        ("/v1/skus/crab-01/lots/L1", "inventory"),
        ("/v1/warehouses/wh-1/picks", "notifier"),
        ("/v1/warehouses/wh-1/picks/live", "notifier"),
        ("/v1/picks/p-1/complete", "notifier"),
        ("/v1/leaderboard", "notifier"),
        ("/host/s-1", "notifier"),
        ("/warehouse/wh-1", "notifier"),
        ("/metrics", None),
        ("/healthz", None),
    ],
)
def test_ingress_routes_each_path_to_its_service(path: str, service: str | None) -> None:
    (ingress,) = of_kind("Ingress").values()
    assert route(ingress, path) == service


def test_ingress_backends_exist_and_streams_stay_open() -> None:
    (ingress,) = of_kind("Ingress").values()
    services = of_kind("Service")
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] in services
            names = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
            assert backend["port"]["name"] in names
            if path["pathType"] == "Prefix":
                assert re.fullmatch(r"(/[a-z0-9-]+)+", path["path"]), "plain prefixes only"
    annotations = ingress["metadata"]["annotations"]
    # WebSocket and SSE streams outlive nginx's 60 s default.
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600


def _kustomize_build() -> Iterator[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (with its built-in kustomize) is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    yield from (d for d in yaml.safe_load_all(out) if d)


def test_kustomize_build_renders_every_object_with_registry_images() -> None:
    built = list(_kustomize_build())
    assert sorted((o["kind"], o["metadata"]["name"]) for o in built) == sorted(
        (o["kind"], o["metadata"]["name"]) for o in applied_objects()
    )
    for deployment in of_kind("Deployment", built).values():
        image = _container(deployment)["image"]
        assert image.startswith("registry.example.com/livecommerce/"), image
