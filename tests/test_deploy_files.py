"""The production deployment files: docker-compose.yml, Dockerfile, .dockerignore.

Docker may not run where the tests run, so the compose file is checked the way Docker itself
reads it: `docker-compose config` interpolates and validates it, and the assertions read the
result. Without `docker-compose` on PATH the compose tests skip, except under CI=true, where
they fail (CI installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# The configuration contract of DESIGN.md.
CONTRACT = frozenset(
    {
        "DATABASE_URL",
        "BROKER_URL",
        "REDIS_URL",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
        "SMTP_SECURITY",
        "MAIL_FROM",
        "SITE_URL",
        "SECRET_KEY",
        "POSTAL_ADDRESS",
        "DRIP_DAY_SECONDS",
        "DISPATCH_INTERVAL_SECONDS",
    }
)
SERVICES = frozenset({"postgres", "redis", "mail", "init", "web", "worker", "beat"})
APP_SERVICES = ("init", "web", "worker", "beat")
SECRET = "test-secret-key-0123456789abcdef"

# `env.get("NAME"`, `_number(env, "NAME"`, `_integer(env, "NAME"`, `_url(env, "NAME"`, ...
READ_SETTING = re.compile(r"""(?:\benv\.get\(|\b_\w+\(\s*env\s*,)\s*["']([A-Z][A-Z0-9_]*)["']""")


def names_read_by_config() -> set[str]:
    """The environment variable names newsletter/config.py reads."""
    return set(READ_SETTING.findall((ROOT / "newsletter" / "config.py").read_text()))


def docker_compose() -> str:
    """Path of docker-compose, or skip (fail under CI) when it is not installed."""
    path = shutil.which("docker-compose")
    if path is None:
        why = "docker-compose is not on PATH (apt-get install docker-compose)"
        if IN_CI:
            pytest.fail(f"{why}; CI must install it")
        pytest.skip(why)
    return path


def run_compose(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f docker-compose.yml --env-file <empty> ARGS` with only `env` set.

    The environment is minimal and the env file empty, so neither the caller's shell nor a
    developer's `.env` (read by compose for interpolation) can change what the test sees.
    """
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=ROOT,
        env={**base, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def parse_yaml(text: str) -> Any:
    """Parse compose's YAML output with PyYAML: ours if importable, else docker-compose's own.

    docker-compose 1.x is a Python program that depends on PyYAML, so its interpreter (from the
    script's shebang) always has it; nothing is installed for the test.
    """
    try:
        import yaml
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    script = Path(docker_compose())
    first = script.read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    command = first[2:].split() if first.startswith("#!") else []
    to_json = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    if command:
        done = subprocess.run(
            [*command, "-c", to_json],
            input=text,
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode == 0:
            return json.loads(done.stdout)
    why = f"no YAML parser: PyYAML is not in {sys.executable} nor usable from {script}"
    if IN_CI:
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as docker-compose resolves it, with only SECRET_KEY set."""
    done = run_compose(tmp_path_factory.mktemp("compose"), "config", SECRET_KEY=SECRET)
    assert done.returncode == 0, f"docker-compose config failed:\n{done.stderr}"
    parsed = parse_yaml(done.stdout)
    assert isinstance(parsed, dict)
    return parsed


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (compose may print either form)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def host_ips(port: Any) -> list[str]:
    """The host address a published port binds to; "" means every interface."""
    if isinstance(port, dict):  # long syntax (compose v2 prints this)
        return [str(port.get("host_ip") or "")] if port.get("published") else []
    spec = str(port).rsplit("/", 1)[0]  # "127.0.0.1:8000:8000/tcp"
    parts = spec.rsplit(":", 2)
    if len(parts) == 3:
        return [parts[0].strip("[]")]
    return [""]  # "8000:8000" or "8000": all interfaces


def test_compose_defines_exactly_the_production_services(config: dict[str, Any]) -> None:
    assert set(config["services"]) == SERVICES


def test_every_app_service_gets_the_whole_contract(config: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment(config["services"][name])
        missing = CONTRACT - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert env["SECRET_KEY"] == SECRET
        assert env["DATABASE_URL"].startswith("postgresql://"), name
        assert env["DATABASE_URL"].endswith("@postgres:5432/newsletter"), name
        assert env["BROKER_URL"] == "redis://redis:6379/0", name
        assert env["REDIS_URL"].startswith("redis://redis:6379/"), name
        assert env["SMTP_HOST"] == "mail", name
        assert env["SMTP_SECURITY"] in ("none", "starttls", "tls"), name


def test_app_services_agree_on_the_configuration(config: dict[str, Any]) -> None:
    envs = {name: environment(config["services"][name]) for name in APP_SERVICES}
    shared = set.intersection(*(set(env) for env in envs.values()))
    for name, env in envs.items():
        assert {k: env[k] for k in shared} == {k: envs["web"][k] for k in shared}, name


def test_no_port_is_published_beyond_localhost(config: dict[str, Any]) -> None:
    published = {
        name: [ip for port in service.get("ports") or [] for ip in host_ips(port)]
        for name, service in config["services"].items()
    }
    for name, ips in published.items():
        assert all(ip == "127.0.0.1" for ip in ips), f"{name} publishes on {ips}"
    assert published["web"] == ["127.0.0.1"]
    assert published["mail"] == ["127.0.0.1"]  # the catcher's web UI
    for name in ("postgres", "redis", "init", "worker", "beat"):
        assert published[name] == [], f"{name} should not be published"


def test_worker_scales_and_beat_runs_the_scheduler(config: dict[str, Any]) -> None:
    services = config["services"]
    for name in ("worker", "beat"):
        assert "container_name" not in services[name], name
        assert not services[name].get("ports"), name
    assert services["worker"]["command"][:4] == ["celery", "-A", "worker", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "worker", "beat"]
    assert services["init"]["command"] == ["flask", "--app", "web", "init"]
    assert services["init"]["restart"] == "no"
    for name in ("postgres", "redis", "mail", "web", "worker", "beat"):
        assert services[name]["restart"] == "unless-stopped", name


def test_app_waits_for_a_migrated_database(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["init"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name
    assert "postgres-data" in config["volumes"]


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """A service's volumes as (source, target, read-only), from either syntax compose prints."""
    found = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            found.append(
                (str(volume["source"]), str(volume["target"]), bool(volume.get("read_only")))
            )
        else:
            source, target, *mode = str(volume).split(":")
            found.append((source, target, "ro" in mode))
    return found


def test_app_services_read_private_keys_from_a_read_only_mount(config: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        keys = [m for m in mounts(config["services"][name]) if m[1] == "/run/secrets/newsletter"]
        assert len(keys) == 1, f"{name} mounts {mounts(config['services'][name])}"
        source, _, read_only = keys[0]
        assert source.endswith("/secrets") and read_only, (name, keys)
    for ignore in (".gitignore", ".dockerignore"):
        assert "secrets/" in (ROOT / ignore).read_text().splitlines(), ignore


def test_web_and_workers_share_the_instance_folder(config: dict[str, Any]) -> None:
    """A CSV import is streamed to INSTANCE_DIR by the web and read there by a worker."""
    for name in ("web", "worker"):
        shared = [m for m in mounts(config["services"][name]) if m[1] == "/app/instance"]
        assert len(shared) == 1 and not shared[0][2], (name, mounts(config["services"][name]))
        assert shared[0][0].endswith("instance-data"), shared
    assert "instance-data" in config["volumes"]


def test_compose_without_secret_key_fails_naming_it(tmp_path: Path) -> None:
    done = run_compose(tmp_path, "config")
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr + done.stdout


def test_compose_passes_every_setting_the_code_reads_from_the_contract(
    config: dict[str, Any],
) -> None:
    read = names_read_by_config()
    # The regex must still see the code's settings; if config.py stops reading a contract
    # variable, the contract and the code disagree.
    assert CONTRACT <= read, f"config.py no longer reads {sorted(CONTRACT - read)}"
    for name in APP_SERVICES:
        env = set(environment(config["services"][name]))
        assert (read & CONTRACT) <= env, f"{name} lacks {sorted((read & CONTRACT) - env)}"
    # The other way round: everything the app services share is a name the code reads, so a
    # renamed or misspelt variable cannot sit in the compose file doing nothing.
    shared = set.intersection(
        *(set(environment(config["services"][name])) for name in APP_SERVICES)
    )
    assert shared - read == set(), f"compose sets names config.py never reads: {shared - read}"


def test_compose_file_names_every_contract_variable() -> None:
    # A plain text check that works without docker-compose: each contract name is a key.
    text = COMPOSE_FILE.read_text()
    keys = set(re.findall(r"^\s+([A-Z][A-Z0-9_]*):", text, flags=re.MULTILINE))
    assert CONTRACT <= keys, f"docker-compose.yml lacks {sorted(CONTRACT - keys)}"
    assert "${SECRET_KEY:?" in text


def test_dockerfile_builds_a_non_root_gunicorn_image() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [
        line.split(None, 1) for line in text.splitlines() if line and not line.startswith("#")
    ]
    froms = [rest for word, *rest in instructions if word == "FROM"]
    assert froms and "slim" in froms[-1][0], froms
    assert re.search(r"^ARG PYTHON_VERSION=3\.11\.\d+$", text, flags=re.MULTILINE)
    users = [rest[0].strip() for word, *rest in instructions if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r"^WORKDIR /app$", text, flags=re.MULTILINE)
    assert re.search(r"^EXPOSE 8000$", text, flags=re.MULTILINE)
    assert "/healthz" in text and "HEALTHCHECK" in text
    cmd = [rest[0] for word, *rest in instructions if word == "CMD"][-1]
    assert json.loads(cmd)[0] == "gunicorn" and "web:app" in json.loads(cmd)
    assert "0.0.0.0:8000" in json.loads(cmd)


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    lines = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".env", "instance/", ".venv/", ".git"):
        assert needed in lines, needed
    # The package reads emails/ at run time, next to itself: it must reach the image.
    assert not {"emails", "emails/", "newsletter", "newsletter/"} & lines
