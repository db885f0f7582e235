"""docker-compose.yml, the Dockerfiles and .env.example: the whole stack for users.

No Docker engine runs here (nor in CI), so nothing is built or started: the compose file is
validated by Debian's `docker-compose config` (installed by scripts/tools.sh) and by the
Compose Specification's JSON schema (check-jsonschema, dev extra), and read as YAML to
check what a validator does not: references, pinned images, healthchecks, start order,
credentials only from .env, and that every dj-orchestrate/dask command the services run
exists with the options they pass (each one's --help, run here). The Dockerfiles are
linted with hadolint (dev extra). What is left untested is what only an engine can show:
that the images build and the stack comes up.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, require, wait_for

COMPOSE = ROOT / "docker-compose.yml"
DEMO = "dj_orchestrate.examples.demo"
PROFILES = ("airflow", "gpu", "postgres")
# what each variable of .env.example is set to in these tests: a value that must reach the
# services through interpolation and appear nowhere in the repository
SENTINEL = "sentinel-7c1d9e"
DATABASE_SERVICES = {"mysql", "postgres", "airflow-db"}


def tool(name: str) -> str:
    """A tool from the venv (pip extras) or PATH; fails in CI when missing."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    require(path is not None, f"the `{name}` command (make test installs it)")
    return path


def env_file(tmp_path: Path) -> Path:
    """.env.example with every empty value filled with the sentinel."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.fullmatch(r"\w+=", line):
            line += f"{SENTINEL}-{line[:-1].lower()}"
        lines.append(line)
    path = tmp_path / "test.env"
    path.write_text("\n".join(lines) + "\n")
    return path


def clean_env() -> dict[str, str]:
    """The environment overrides .env in compose: keep the test's own DJ_* etc. out."""
    return {k: v for k, v in os.environ.items() if not re.match(r"(DJ_|DJO_|MYSQL|POSTGRES|AIRFLOW|DASK|COMPOSE_)", k)}


def compose_config(*args: str, env: Path) -> subprocess.CompletedProcess:
    cmd = [tool("docker-compose"), "-f", str(COMPOSE), "--env-file", str(env)]
    return subprocess.run([*cmd, *args, "config"], capture_output=True, text=True, cwd=ROOT, env=clean_env(), timeout=60)


@pytest.fixture(scope="module")
def spec() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(spec) -> dict[str, dict]:
    return spec["services"]


# ------------------------------------------------------------------ validators
@pytest.mark.parametrize("profiles", [(), *((p,) for p in PROFILES), PROFILES], ids=lambda p: "+".join(p) or "default")
def test_docker_compose_config_accepts_the_file(profiles, tmp_path):
    """Debian's docker-compose (1.29) parses, interpolates and validates the file with every
    profile; the credentials it renders are the .env values, nowhere written in the file."""
    out = compose_config(*(a for p in profiles for a in ("--profile", p)), env=env_file(tmp_path))
    assert out.returncode == 0, out.stderr
    rendered = yaml.safe_load(out.stdout)["services"]
    assert rendered["init"]["environment"]["DJ_PASS"] == f"{SENTINEL}-dj_pass"
    assert rendered["mysql"]["environment"]["MYSQL_ROOT_PASSWORD"] == f"{SENTINEL}-mysql_root_password"
    assert f"{SENTINEL}-dj_pass" in rendered["airflow-apiserver"]["environment"]["AIRFLOW_CONN_DATAJOINT_DEFAULT"]


def test_docker_compose_config_names_a_missing_password(tmp_path):
    """With .env.example copied but not filled in, compose refuses and names the value to set."""
    empty = tmp_path / ".env"
    empty.write_text((ROOT / ".env.example").read_text())
    out = compose_config(env=empty)
    assert out.returncode != 0
    assert re.search(r"set (DJ_PASS|MYSQL_ROOT_PASSWORD) in \.env", out.stderr), out.stderr


def test_make_env_writes_random_secrets_and_never_overwrites(tmp_path):
    """``make env`` writes .env from .env.example with every empty value a fresh random
    secret (letters, digits, - and _), the other values as they are, readable by its
    owner only; compose accepts it with every profile. A second ``make env`` refuses,
    saying why, and leaves the file as it was."""
    target = tmp_path / ".env"
    make = ["make", "-s", "-C", str(ROOT), "env", f"ENV_FILE={target}"]
    require(shutil.which("make") is not None, "make")
    out = subprocess.run(make, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    example = [line.partition("=") for line in (ROOT / ".env.example").read_text().splitlines() if re.match(r"\w+=", line)]
    written = dict(line.partition("=")[::2] for line in target.read_text().splitlines() if re.match(r"\w+=", line))
    assert list(written) == [key for key, _, _ in example]
    secrets = [written[key] for key, _, value in example if not value]
    assert len(secrets) >= 5 and len(set(secrets)) == len(secrets)  # DJ_PASS, MYSQL_ROOT_PASSWORD, Airflow's
    assert all(re.fullmatch(r"[\w-]{24,}", v) for v in secrets), secrets
    assert all(written[key] == value for key, _, value in example if value)
    assert target.stat().st_mode & 0o777 == 0o600
    assert compose_config(*(a for p in PROFILES for a in ("--profile", p)), env=target).returncode == 0
    before = target.read_bytes()
    again = subprocess.run(make, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and f"{target} exists" in again.stderr, again.stderr
    assert target.read_bytes() == before


def test_compose_spec_schema_accepts_the_file_and_rejects_a_broken_one(tmp_path):
    check = tool("check-jsonschema")
    ok = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    bad = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(broken)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0


# ------------------------------------------------------------------ structure
def test_every_reference_exists(spec, services):
    """depends_on, named volumes, secrets and bind-mounted files all resolve."""
    volumes, secrets = set(spec.get("volumes") or {}), set(spec.get("secrets") or {})
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol["source"]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        for secret in svc.get("secrets") or []:
            assert (secret if isinstance(secret, str) else secret["source"]) in secrets, f"{name}: secret {secret}"
    for secret in (spec.get("secrets") or {}).values():
        assert "file" not in secret or not Path(secret["file"]).is_absolute()


def test_images_are_pinned_by_version(services):
    for name, svc in services.items():
        image = svc.get("image")
        assert image, f"{name} has no image name (a build without a tag is `latest`)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.match(r"\d+(\.\d+)+", tag), f"{name}: {image} is not pinned to a version"
    for dockerfile in (ROOT / "Dockerfile", ROOT / "docker/airflow/Dockerfile"):
        for line in dockerfile.read_text().splitlines():
            if line.startswith("FROM "):
                image = line.split()[1]
                assert re.search(r":\d+(\.\d+){2}", image), f"{dockerfile}: {image} is not pinned to a version"


def test_every_service_has_a_healthcheck(services):
    for name, svc in services.items():
        check = svc.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"


def test_start_order_database_then_init_then_the_rest(services):
    """Databases first (healthy), then the one-shot init (successful), then everything else."""
    init = services["init"]
    assert init["command"][:2] == ["demo", "--seed-only"]
    assert init["depends_on"]["mysql"]["condition"] == "service_healthy"

    def needs_init(name: str, seen: frozenset = frozenset()) -> bool:
        deps = services[name].get("depends_on") or {}
        if deps.get("init", {}).get("condition") == "service_completed_successfully":
            return True
        return any(needs_init(d, seen | {name}) for d in deps if d not in seen)

    for name in set(services) - DATABASE_SERVICES - {"init"}:
        assert needs_init(name), f"{name} does not wait for init to succeed"
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            if dep in DATABASE_SERVICES:
                assert cond["condition"] == "service_healthy", f"{name} -> {dep}"
    assert services["airflow-init"]["depends_on"]["airflow-db"]["condition"] == "service_healthy"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_dask_scheduler_workers_and_gpu_worker(services):
    assert any(p.endswith(":8787") for p in services["scheduler"]["ports"])  # the dashboard
    assert services["worker"]["deploy"]["replicas"] >= 2
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    assert "GPU=1" in gpu["command"][gpu["command"].index("--resources") + 1]
    assert {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]} in gpu["deploy"]["resources"]["reservations"]["devices"]
    assert services["postgres"]["profiles"] == ["postgres"]


def seconds(duration: str) -> float:
    """A compose duration of whole units: "30s", "2m"."""
    value, unit = re.fullmatch(r"(\d+)([sm])", duration).groups()
    return int(value) * (60 if unit == "m" else 1)


def test_serve_keeps_the_demo_computed_on_the_dask_workers(services):
    """The pipeline is served, not run once: `serve` on the Dask cluster (its scheduler
    from DASK_SCHEDULER_ADDRESS, the scheduler service's port), restarted unless
    stopped, after init and the workers; healthy while `dj-orchestrate health` says it
    beat, checked every --interval, with time to start; `docker compose stop` leaves it
    --grace for its runs (+3 s) before SIGKILL."""
    assert "run" not in services
    svc = services["serve"]
    command = svc["command"]
    assert command[:2] == ["serve", DEMO] and command[command.index("--backend") + 1] == "dask"
    assert svc["environment"]["DASK_SCHEDULER_ADDRESS"] == "tcp://scheduler:8786"
    assert services["scheduler"]["command"][services["scheduler"]["command"].index("--port") + 1] == "8786"
    assert svc["restart"] == "unless-stopped"
    assert svc["depends_on"] == {"init": {"condition": "service_completed_successfully"}, "worker": {"condition": "service_healthy"}}
    check = svc["healthcheck"]
    assert check["test"] == ["CMD", "dj-orchestrate", "health", DEMO]
    interval = float(command[command.index("--interval") + 1])
    assert seconds(check["interval"]) == interval and seconds(check["timeout"]) < interval
    assert seconds(check["start_period"]) >= 2 * interval and check["retries"] >= 2
    grace = float(command[command.index("--grace") + 1]) if "--grace" in command else 5.0
    assert seconds(svc["stop_grace_period"]) >= grace + 3


def test_published_ports_are_local_only(services):
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_airflow_services_mount_dags_and_get_the_datajoint_connection(services):
    airflow = {n: s for n, s in services.items() if n.startswith("airflow-") and n != "airflow-db"}
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"} <= set(airflow)
    for name, svc in airflow.items():
        assert svc["profiles"] == ["airflow"]
        assert svc["image"].startswith("dj-orchestrate-airflow:"), name
        assert "./dags:/opt/airflow/dags" in svc["volumes"], name
        conn = svc["environment"]["AIRFLOW_CONN_DATAJOINT_DEFAULT"]
        assert "${DJ_PASS" in conn and "${DJ_USER" in conn and "${DJ_HOST" in conn, name
    assert services["airflow-apiserver"]["command"] == ["api-server"]
    script = services["airflow-init"]["command"][0]
    assert "airflow db migrate" in script and "airflow users create --role Admin" in script
    assert (ROOT / "dags").is_dir()


# ------------------------------------------------------- the commands are real
def argv_of(svc: dict) -> list[str]:
    """What the container runs: the image's entrypoint (dj-orchestrate) unless overridden."""
    entry = svc.get("entrypoint") or ["dj-orchestrate"]
    argv = [*entry, *(svc.get("command") or [])]
    return argv[1:] if argv[0] == "/usr/bin/env" else argv


def worker_image_services() -> list:
    """Each worker-image service's command, and its healthcheck's when that runs dj-orchestrate."""
    params = []
    for name, svc in yaml.safe_load(COMPOSE.read_text())["services"].items():
        if svc.get("build", {}).get("dockerfile", "Dockerfile") == "Dockerfile":
            params.append(pytest.param(argv_of(svc), id=name))
            test = svc["healthcheck"]["test"]
            if test[:2] == ["CMD", "dj-orchestrate"]:
                params.append(pytest.param(test[1:], id=f"{name}-healthcheck"))
    return params


@pytest.mark.parametrize("argv", worker_image_services())
def test_service_command_is_a_real_command(argv):
    """Each worker-image service's command (and a healthcheck that runs dj-orchestrate)
    is a real command line (``check_command``)."""
    check_command(argv)


def check_command(argv: list[str]) -> None:
    """A command line a container runs: its subcommand's --help works here, lists every
    option it passes, and a --backend it names exists."""
    program, rest = argv[0], argv[1:]
    sub = [rest[0]] if rest and not rest[0].startswith("-") else []
    if program == "dj-orchestrate":
        cmd = [sys.executable, "-m", "dj_orchestrate", *sub, "--help"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
    else:
        assert program == "dask", f"unexpected program {program}"
        cmd, env = [tool("dask"), *sub, "--help"], None
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    for option in (a for a in rest if a.startswith("--")):
        assert re.search(rf"(^|[\s,/]){re.escape(option)}\b", out.stdout, re.M), f"{shlex.join(cmd)} has no {option}"
    if "--backend" in rest:
        from dj_orchestrate.backends import get

        get(rest[rest.index("--backend") + 1])


# ------------------------------------------------------------------ Dockerfiles
@pytest.mark.parametrize("path", ["Dockerfile", "docker/airflow/Dockerfile"])
def test_hadolint_passes(path):
    out = subprocess.run([tool("hadolint"), str(ROOT / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_worker_image_runs_dj_orchestrate_as_a_user():
    text = (ROOT / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert re.search(r'^ENTRYPOINT \["dj-orchestrate"\]$', text, re.M)
    assert re.search(r'pip install "\./\[image\]"', text)
    airflow = (ROOT / "docker/airflow/Dockerfile").read_text()
    assert not re.search(r"^USER\s+(root|0)\b", airflow, re.M)  # the airflow image's own user
    # the build context holds only what is installed: no .env, no .git, no local data
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!dj_orchestrate/"]


# ------------------------------------------------------------------ credentials
SECRET_WORD = r"[\w.-]*(?:pass(?:wd|word)?|pwd|secret|token)[\w.-]*"
LITERALS = [
    # KEY=value / key: value / "key": "value" with a value that is not a reference
    re.compile(rf"""(?i)(?<![\w.${{-]){SECRET_WORD}["']?\s*[:=]\s*["']?(?!["'\s$]|\\["']?\$|<|\{{\{{|$)([^\s"',;)}}]+)"""),
    # user:password@host in a URL
    re.compile(r"(?i)\b[a-z][\w+.-]*://[^\s/:@]+:(?!\$)([^\s@/]+)@"),
]
NOT_SECRETS = {"None", "True", "False", "true", "false", "null", "0", "1"}
# keys whose value names a Kubernetes Secret (a reference, like ${VAR}): the manifests'
# secretName/secretRef/imagePullSecrets, and dj-orchestrate's [kubernetes] secret setting
SECRET_NAMES = re.compile(r"(?i)secret|secretName|secretRef|image_?pull_?secrets")


def literal_passwords(text: str, python: bool = False) -> list[str]:
    """Lines that give a password, secret or token a value written out, not a reference."""
    found = []
    for line in text.splitlines():
        for pattern in LITERALS:
            for m in pattern.finditer(line):
                value, rest = m.group(1), line[m.end():].lstrip("\"' ")
                if SECRET_NAMES.fullmatch(re.match(r"[\w.-]*", m.group(0)).group(0)):
                    continue  # the name of a Kubernetes Secret
                quoted = line[m.start(1) - 1] in "\"'"
                if value in NOT_SECRETS or (python and not quoted and re.fullmatch(r"[A-Za-z_][\w.]*([(\[].*)?", value)):
                    continue  # a name in code (password=password, os.environ["DJ_PASS"]), not a value
                if value.startswith("/") or rest.startswith("+"):
                    continue  # a path or a sed script; the fixed prefix of a generated value
                found.append(line.strip())
    return found


def test_the_password_scan_finds_a_planted_sentinel():
    planted = f"DJ_PASS={SENTINEL}-x\n  password: '{SENTINEL}-y'\n{{\"password\": \"{SENTINEL}-z\"}}\n" \
              f"MYSQL_ROOT_PASSWORD=8{SENTINEL}\nurl = mysql://dj:{SENTINEL}-w@db:3306\n"
    assert len(literal_passwords(planted)) == 5
    assert literal_passwords("password: hunter2\n") and not literal_passwords("password = hunter2\n", python=True)
    references = 'DJ_PASS=\nDJ_PASS: ${DJ_PASS:?set it}\nMYSQL_PWD="$$MYSQL_PASSWORD" mysql\n' \
                 "postgresql://airflow:${AIRFLOW_DB_PASSWORD:-}@airflow-db/airflow\n"
    assert literal_passwords(references) == []
    assert literal_passwords('secretName: lab-db\nsecret = "datajoint-credentials"\n') == []
    assert literal_passwords('"passwd": password,\npassword = os.environ["DJ_PASS"]\n', python=True) == []


def test_no_password_literal_in_the_repository():
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    assert "docker-compose.yml" in files and ".env.example" in files and ".env" not in files
    hits = {}
    for name in files:
        path = ROOT / name
        if name == "tests/test_compose.py" or not path.is_file():
            continue  # this file plants sentinels on purpose
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        assert SENTINEL not in text, name
        if found := literal_passwords(text, python=name.endswith(".py")):
            hits[name] = found
    assert hits == {}
    env_values = [line.partition("=")[2] for line in (ROOT / ".env.example").read_text().splitlines()
                  if re.match(r"\w*(PASS|SECRET)\w*=", line)]
    assert env_values and all(v == "" for v in env_values), ".env.example must leave passwords empty"
    assert ".env" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------- what the init service runs, on a real database
def demo_counts(db, env: dict) -> dict[str, dict]:
    out = db.cli("status", "dj_orchestrate.examples.demo", "--json", env=env)
    assert out.returncode == 0, out.stderr
    return {r["table"]: r for r in json.loads(out.stdout)["tables"]}


def test_init_seeds_the_demo_and_keeps_what_is_there(db):
    """`demo --seed-only` (the init service) declares and seeds, runs nothing, and when the
    stack starts again it adds sessions without dropping what was computed."""
    env = {"DJO_DEMO_SCHEMA": db.schema}
    out = db.cli("demo", "--seed-only", "--sessions", "5", env=env)
    assert out.returncode == 0, out.stderr
    assert "5 sessions" in out.stdout
    behavior = demo_counts(db, env)["Behavior"]
    assert (behavior["total"], behavior["done"]) == (5, 0)
    made = db.cli("run", "dj_orchestrate.examples.demo", "--table", "Behavior", "--workers", "1", env=env)
    assert made.returncode == 0, made.stderr
    again = db.cli("demo", "--seed-only", "--sessions", "8", env=env)
    assert again.returncode == 0, again.stderr
    behavior = demo_counts(db, env)["Behavior"]
    assert (behavior["total"], behavior["done"]) == (8, 5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_db_wait_gives_up_with_one_line_after_the_time_given():
    """Nothing listens: with DJO_DB_WAIT=3 the command retries about 3 s, then the usual
    one-line error, exit 2; a DJO_DB_WAIT that is not a number is bad input."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DJ_HOST": "127.0.0.1", "DJ_PORT": str(free_port()),
           "DJ_USER": "nobody", "DJ_BACKEND": "mysql", "DJO_DB_WAIT": "3"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "dj_orchestrate", "demo", "--seed-only"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and time.monotonic() - started >= 3
    assert "waiting for the database" in out.stderr and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-2].startswith("dj-orchestrate: error: cannot reach")
    bad = subprocess.run([sys.executable, "-m", "dj_orchestrate", "status", "x"], env={**env, "DJO_DB_WAIT": "soon"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "DJO_DB_WAIT='soon' is not a number" in bad.stderr


def late_proxy(port: int, target: int, opened: threading.Event) -> None:
    """A database that comes up late: once ``opened`` is set, forward ``port`` to ``target``."""

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        opened.wait()
        server = socket.create_server(("127.0.0.1", port))
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(("127.0.0.1", target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()


def test_init_waits_for_a_database_that_starts_late(db):
    """The init service may start before its database (PostgreSQL under its profile has no
    depends_on): with DJO_DB_WAIT it retries until the server answers, then seeds. The
    database appears only after the command said it is waiting, however slow its start."""
    port, opened = free_port(), threading.Event()
    late_proxy(port, int(db.env["DJ_PORT"]), opened)
    env = {**db.env, "DJ_PORT": str(port), "DJO_DB_WAIT": "120", "DJO_DEMO_SCHEMA": db.schema}
    proc = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "demo", "--seed-only", "--sessions", "3"],
                            env=env, cwd=db.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        if "waiting for the database" in line:
            opened.set()
            break
    _, rest = proc.communicate(timeout=240)
    stderr.append(rest)
    assert proc.returncode == 0, "".join(stderr)
    assert opened.is_set(), "".join(stderr)
    assert demo_counts(db, {"DJO_DEMO_SCHEMA": db.schema})["Preprocess"]["total"] == 3


def test_the_serve_healthcheck_follows_the_server(db, procs, services):
    """The serve service's healthcheck as the container runs it (``dj-orchestrate
    health``), on a real database: unhealthy (exit 1) before a server beats, healthy
    (exit 0) while the service's own command runs here (the local backend in place of
    Dask, whose scheduler is the stack's; --interval 1), unhealthy again once SIGTERM
    stopped it (exit 0)."""
    env = {"DJO_DEMO_SCHEMA": db.schema}
    health = services["serve"]["healthcheck"]["test"][2:]  # (after CMD dj-orchestrate)
    before = db.cli(*health, env=env)
    assert before.returncode == 1 and f"no serve of {DEMO} on this host" in before.stdout, before.stdout + before.stderr
    command = list(services["serve"]["command"])
    command[command.index("--backend") + 1] = "local"
    command[command.index("--interval") + 1] = "1"
    server = procs.cli(*command, env=env, name="serve")
    wait_for(lambda: db.cli(*health, env=env).returncode == 0, 120, "a healthy serve",
             detail=lambda: procs.output(server)[-2000:])
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=30) == 0, procs.output(server)[-2000:]
    after = db.cli(*health, env=env)
    assert after.returncode == 1, after.stdout + after.stderr
