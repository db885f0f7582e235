"""slurm/start-cluster.sh on a machine that has a SLURM of its own.

The test cluster lives in a directory of its own (tests/conftest.py points SLURM_CONF at
it); the machine's /etc/slurm and its daemons must stay exactly as they were. On this
machine /etc/slurm holds another cluster's config (the one an earlier version of the
script set up there, still running); where it holds none, the test writes a foreign
slurm.conf there for its duration and removes it afterwards. A foreign daemon is stood
in for by a process named ``slurmctld`` (a copy of ``sleep``): a script that stopped
daemons by name would kill it. Needs root, as the script does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ROOT, SLURM_DIR, require, wait_for

pytestmark = pytest.mark.slurm

START = ROOT / "slurm" / "start-cluster.sh"
ETC = Path("/etc/slurm")
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd")


def pids_of(name: str) -> set[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return {int(p) for p in out.stdout.split()}


def ours() -> set[int]:
    found = set()
    for pidfile in [*(SLURM_DIR / "run").glob("*.pid"), *(SLURM_DIR / "munge").glob("*.pid")]:
        try:
            found.add(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            pass
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.timeout(900)  # start-cluster.sh is allowed 600 s
def test_start_cluster_leaves_the_machines_own_slurm_alone(tmp_path):
    require(os.geteuid() == 0 and shutil.which("pgrep") is not None, "root (start-cluster.sh starts daemons)")
    require(bool(shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()), "SLURM (slurm-wlm)")
    created = not (ETC / "slurm.conf").exists()
    if created:
        ETC.mkdir(exist_ok=True)
        (ETC / "slurm.conf").write_text("# another cluster's config\nClusterName=theirs\n")
    before = {p: p.read_bytes() for p in ETC.rglob("*") if p.is_file()}
    fake = tmp_path / "slurmctld"
    shutil.copy("/bin/sleep", fake)
    stand_in = subprocess.Popen([str(fake), "600"])
    try:
        wait_for(lambda: stand_in.pid in pids_of("slurmctld"), 10, what="the stand-in to run as slurmctld")
        foreign = {p for name in DAEMONS for p in pids_of(name)} - ours()
        assert stand_in.pid in foreign, foreign  # else the checks below check nothing
        out = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout + out.stderr
        assert out.stdout.strip().splitlines()[-1] == f"export SLURM_CONF={SLURM_DIR / 'etc' / 'slurm.conf'}"
        assert {p: p.read_bytes() for p in ETC.rglob("*") if p.is_file()} == before, "/etc/slurm was changed"
        assert stand_in.poll() is None, "a process named slurmctld that is not ours was stopped"
        assert all(alive(p) for p in foreign), "a daemon the script did not start was stopped"
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60).stdout
        assert "djorchestrate" in config and str(SLURM_DIR) in config
    finally:
        stand_in.kill()
        stand_in.wait()
        if created:
            (ETC / "slurm.conf").unlink()


def test_a_cluster_that_cannot_come_up_says_so_and_fails(tmp_path):
    require(os.geteuid() == 0, "root (start-cluster.sh starts daemons)")
    require(bool(shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()), "SLURM (slurm-wlm)")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("")
    env = {**os.environ, "DJO_SLURM_DIR": str(blocked), "SLURM_SKIP_INSTALL": "1"}
    out = subprocess.run(["bash", str(START)], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "ERROR" in out.stderr and str(blocked) in out.stderr, out.stderr
    services = subprocess.run(["bash", str(ROOT / "scripts" / "services.sh")], env=env, capture_output=True,
                              text=True, timeout=300)
    assert services.returncode != 0 and "SLURM did NOT come up" in services.stdout, services.stdout + services.stderr


@pytest.mark.timeout(900)  # start-cluster.sh is allowed 600 s
def test_the_cluster_comes_back_after_munged_died():
    """The state a finished session leaves for the next CI run on the same machine: the
    cluster's directory is there (its run/ directory owned by the private MariaDB's user),
    but munged is gone. start-cluster.sh must start munged again and bring the cluster up."""
    require(os.geteuid() == 0, "root (start-cluster.sh starts daemons)")
    require(bool(shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()), "SLURM (slurm-wlm)")
    pidfile = SLURM_DIR / "munge" / "munged.pid"
    require(pidfile.exists(), "the test cluster's own munged (scripts/services.sh)")
    pid = int(pidfile.read_text().strip())
    os.kill(pid, 15)
    for _ in range(100):
        if not alive(pid):
            break
        time.sleep(0.1)
    out = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "starting munged" in out.stdout
    token = subprocess.run(["munge", "-n"], capture_output=True, timeout=30).stdout
    assert subprocess.run(["unmunge"], input=token, capture_output=True, timeout=30).returncode == 0
    assert subprocess.run(["sinfo", "-h"], capture_output=True, timeout=60).returncode == 0
