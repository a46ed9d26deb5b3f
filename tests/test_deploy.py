"""The deployment files: the systemd unit and the compose file pass their tools' own checks,
the container's entry point migrates before it runs the bot, and the image's build context
holds what the Dockerfile copies. (deploy/check-image.sh builds and runs the image itself
where a container engine can run.)"""

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def compose_command() -> list[str] | None:
    """Compose v2 (`docker compose`), else the standalone docker-compose; None: neither."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    unit = (ROOT / "deploy" / "synatra-bot.service").read_text()
    assert "/opt/synatra-bot/.venv/bin/synatra-bot" in unit
    # verify checks that the commands exist: point them at this environment's synatra-bot.
    local = tmp_path / "synatra-bot.service"
    local.write_text(unit.replace("/opt/synatra-bot/.venv/bin", str(VENV_BIN)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(local)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.skipif(compose_command() is None, reason="neither docker compose nor docker-compose")
def test_compose_file_passes_compose_config(tmp_path):
    (tmp_path / "compose.yaml").write_text((ROOT / "compose.yaml").read_text())
    (tmp_path / ".env").write_text("DISCORD_TOKEN=x\nPOSTGRES_PASSWORD=비밀\n")
    command = [*compose_command(), "--profile", "vllm", "--profile", "llama-cpp", "config"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"bot", "postgres", "vllm", "llama-cpp"}
    assert {name: s["restart"] for name, s in services.items()} == dict.fromkeys(
        services, "unless-stopped"
    )
    assert services["vllm"]["profiles"] == ["vllm"]
    assert services["llama-cpp"]["profiles"] == ["llama-cpp"]
    bot = services["bot"]
    assert bot["environment"]["DATABASE_URL"] == (
        "postgresql+asyncpg://synatra:비밀@postgres:5432/synatra"
    )
    assert bot["environment"]["METRICS_ADDR"] == "0.0.0.0:9108"


def test_compose_file_refuses_to_start_without_a_postgres_password(tmp_path):
    command = compose_command()
    if command is None:
        pytest.skip("neither docker compose nor docker-compose")
    (tmp_path / "compose.yaml").write_text((ROOT / "compose.yaml").read_text())
    (tmp_path / ".env").write_text("DISCORD_TOKEN=x\n")
    result = subprocess.run(
        [*command, "config"], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_the_entrypoint_migrates_the_database_before_it_runs_the_bot(tmp_path):
    database = tmp_path / "data" / "synatra.db"
    env = {
        "PATH": f"{VENV_BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
    }
    entrypoint = str(ROOT / "deploy" / "entrypoint.sh")
    # No DISCORD_TOKEN: the migrations are applied, then the bot stops with its one line.
    result = subprocess.run(
        [entrypoint], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 2
    assert result.stdout.startswith("database upgraded from empty to ")
    assert result.stderr.startswith("synatra-bot: DISCORD_TOKEN: not set.")
    with sqlite3.connect(database) as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert result.stdout.strip().endswith(revision)

    # Any other command runs as given, without migrating first.
    database.unlink()
    result = subprocess.run(
        [entrypoint, "db", "current"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 0 and result.stdout.startswith("empty (latest is ")


def dockerignored() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_image_build_context_holds_what_the_dockerfile_copies():
    copied = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _destination = line.split()[1:]
            copied += sources
    assert "migrations" in copied and "synatra_bot" in copied
    ignored = dockerignored()
    for source in copied:
        assert (ROOT / source).exists(), source
        assert not any(source == i or source.startswith(f"{i}/") for i in ignored), source
