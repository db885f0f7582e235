"""The Kubernetes backend.

No API server can run here. So: manifests are checked with ``kubernetes-validate
--strict`` (the API's own OpenAPI schemas, shipped offline) for the oldest and newest
versions we support; the API client talks to kmock's ``KubernetesEmulator`` (an HTTP
server that stores objects and serves list/watch), where the test plays the Job
controller (it runs the pods and patches the Jobs' status); and each pod is its exact
container command and environment, run here as a process (``python -m dj_orchestrate``
in place of the image's ``dj-orchestrate``, with JOB_COMPLETION_INDEX, POD_NAME and
POD_NAMESPACE set and ``$(VAR)`` expanded as the kubelet does, the Secret's variables
given as the database's). Each test's docstring says which of these it uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
import tomllib
import uuid
from pathlib import Path

import kmock as km
import pytest
import yaml
from conftest import PIPELINES, ROOT, check_golden, jobs_rows, password_env, makes, require, seed, wait_for

from dj_orchestrate.jobs import JobTable

DEMO = "dj_orchestrate.examples.demo"
CHAIN = str(PIPELINES / "chain.py")
IMAGE = "dj-orchestrate:0.1.0"
SECRET = "datajoint-credentials"
K8S_DIR = ROOT / "k8s"
GOLDEN = Path(__file__).resolve().parent / "golden" / "kubernetes"
OLDEST, NEWEST = "1.28.0", "1.37.0"  # what dj-orchestrate supports; the installed validator's newest
RENDERED = "1.35.0"  # what `k8s render` writes for without cluster_version (RENDER_VERSION)
NS = "lab"
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"


# ------------------------------------------------------------------ helpers
def validate(paths: list[Path], version: str) -> None:
    require(VALIDATE.is_file(), "kubernetes-validate (pip install 'dj-orchestrate[dev]')")
    out = subprocess.run([str(VALIDATE), "--strict", "--quiet", "-k", version, *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def table_jobs(out: Path) -> list[dict]:
    """The table Jobs of a render, in sorted file order (the release order)."""
    return [d for p in sorted(out.glob("*.yaml")) for d in documents(p)
            if d["kind"] == "Job" and d["metadata"]["labels"].get("app.kubernetes.io/component") != "conductor"]


def manifests(out: Path) -> list[Path]:
    """Every file of a render (serve/ too)."""
    return sorted(out.rglob("*.yaml"))


def pod_process(job: dict, index: int, secret_env: dict, **popen) -> subprocess.Popen:
    """One pod of an Indexed Job, as the kubelet would start it (see ``pod_here``)."""
    from dj_orchestrate.backends.kubernetes.manifests import pod_here

    argv, env = pod_here(job, index, secret_env)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def run_job(job: dict, secret_env: dict) -> list[tuple[int, str]]:
    """Every index of the Job, ``parallelism`` pods at a time: (exit code, output)."""
    spec = job["spec"]
    results = []
    indexes = list(range(spec["completions"]))
    while indexes:
        batch, indexes = indexes[:spec["parallelism"]], indexes[spec["parallelism"]:]
        procs = [pod_process(job, i, secret_env) for i in batch]
        results += [(p.wait(timeout=180), p.stdout.read()) for p in procs]
    return results


def secret_env(db, schema: str | None = None) -> dict:
    """What the Secret (and the image) give a pod here: the database, the schemas."""
    return {**db.env, "DJO_DEMO_SCHEMA": schema or db.schema}


DUMP = """
import json, sys, datajoint as dj
from dj_orchestrate import pipeline
from dj_orchestrate.jobs import JobTable
demo = pipeline.load("dj_orchestrate.examples.demo")
if sys.argv[1] == "seed":
    demo.seed(int(sys.argv[2]))
elif sys.argv[1] == "populate":
    demo.seed(int(sys.argv[2]))
    for t in (demo.Preprocess, demo.Behavior, demo.SpikeSorting, demo.QualityMetrics, demo.SessionSummary):
        t.populate(reserve_jobs=True, suppress_errors=True)
elif sys.argv[1] == "declared":
    tables = (demo.Preprocess, demo.Behavior, demo.SpikeSorting, demo.QualityMetrics, demo.SessionSummary)
    print(json.dumps({"declared": any(JobTable(t()).declared for t in tables)}))
else:
    tables = {t.__name__: t for t in (demo.Preprocess, demo.Behavior, demo.SpikeSorting, demo.SpikeSorting.Unit,
                                      demo.QualityMetrics, demo.SessionSummary)}
    rows = {n: sorted(json.dumps(r, sort_keys=True, default=str) for r in t.to_dicts()) for n, t in tables.items()}
    jobs = {}
    for n, t in tables.items():
        if n != "Unit":
            rows_ = t().jobs.to_dicts()
            jobs[n] = sorted((r["status"], json.dumps({k: r[k] for k in t.primary_key}, default=str)) for r in rows_
                             if r["status"] != "success")
    print(json.dumps({"rows": rows, "jobs": jobs}))
"""


def demo(db, action: str, schema: str, n: int = 0) -> dict:
    out = subprocess.run([sys.executable, "-c", DUMP, action, str(n)], env=secret_env(db, schema),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1]) if action in ("dump", "declared") else {}


_references: dict[tuple[str, int], dict] = {}


def reference(db, n: int) -> dict:
    """The demo pipeline made by stock DataJoint ``populate(reserve_jobs=True)`` in a
    schema of its own: what every Kubernetes run must match (made once per database
    and size)."""
    if (db.backend, n) not in _references:
        schema = db.schema + "_ref"
        try:
            demo(db, "populate", schema, n)
            _references[db.backend, n] = demo(db, "dump", schema)
        finally:
            import datajoint as dj

            dj.Schema(schema, create_schema=False).drop(prompt=False)
    return _references[db.backend, n]


def render(db, out: Path, *args: str, env: dict | None = None, image: bool = True) -> subprocess.CompletedProcess:
    """``k8s render`` of the demo (with --image and --secret unless ``image`` is False)."""
    given = ["--image", IMAGE, "--secret", SECRET] if image else []
    result = db.cli("k8s", "render", DEMO, "--out", str(out), *given, *args,
                    env={"DJO_DEMO_SCHEMA": db.schema, **(env or {})}, cwd=out.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # render opens no database
# --------------------------------------------------------------- manifests
def test_render_is_the_k8s_dir_and_validates(db, tmp_path):
    """``k8s render`` of the demo pipeline (no API server: the files are checked with
    kubernetes-validate --strict against 1.35, the version it says it writes for, and
    1.37) is byte for byte the k8s/ folder (with --serve: k8s/serve/ too); sorted file names are a valid release order (the conductor first, each
    table after the tables it waits for); each table Job is Indexed, restartPolicy
    Never, and its pods run ``dj-orchestrate work`` with their shard from
    JOB_COMPLETION_INDEX. It wrote nothing to the database.
    DJO_UPDATE_GOLDEN=1 rewrites k8s/."""
    out = tmp_path / "k8s"
    result = render(db, out, "--config", str(K8S_DIR / "dj_orchestrate.toml"), "--serve")
    assert result.stdout.splitlines()[0].startswith(f"manifests for Kubernetes {RENDERED.rsplit('.', 1)[0]} "), result.stdout
    check_golden(out, K8S_DIR)
    for version in (RENDERED, NEWEST):
        validate(manifests(out), version)
    seen: set[str] = set()
    for job in table_jobs(out):
        spec = job["spec"]
        assert spec["completionMode"] == "Indexed" and spec["template"]["spec"]["restartPolicy"] == "Never"
        after = set(filter(None, job["metadata"]["annotations"].get("dj-orchestrate.io/after", "").split(",")))
        assert after <= seen and spec["suspend"] == bool(after)
        seen.add(job["metadata"]["name"])
        command = spec["template"]["spec"]["containers"][0]["command"]
        assert command[:2] == ["dj-orchestrate", "work"] and "--shard-index" not in command and "--enqueue" in command
        # no cluster_version in k8s/dj_orchestrate.toml: written for 1.35, with the per-index fields
        assert spec["backoffLimitPerIndex"] > 0 and "backoffLimit" not in spec
        assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["Ignore", "FailIndex"]
    assert demo(db, "declared", db.schema) == {"declared": False}


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # (no database is opened)
def test_render_for_an_older_cluster(db, tmp_path):
    """``cluster_version = "1.28"`` (the oldest supported) writes what 1.28 has: a
    job-wide backoffLimit and FailJob instead of the per-index fields and FailIndex, and
    says so; the files validate against 1.28."""
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text((K8S_DIR / "dj_orchestrate.toml").read_text().replace("[kubernetes]\n", '[kubernetes]\ncluster_version = "1.28"\n'))
    out = tmp_path / "k8s"
    result = render(db, out, "--config", str(config))
    assert result.stdout.splitlines()[0].startswith("manifests for Kubernetes 1.28 "), result.stdout
    validate(sorted(out.glob("*.yaml")), OLDEST)
    for job in table_jobs(out):
        spec = job["spec"]
        assert "backoffLimitPerIndex" not in spec and "maxFailedIndexes" not in spec and spec["backoffLimit"] > 0
        assert [r["action"] for r in spec["podFailurePolicy"]["rules"]] == ["Ignore", "FailJob"]


def test_render_help_names_the_version():
    """``k8s render --help`` says which version it writes for by default (RENDER_VERSION)."""
    from click.testing import CliRunner

    from dj_orchestrate.backends.kubernetes.settings import RENDER_VERSION
    from dj_orchestrate.cli import main

    out = CliRunner().invoke(main, ["k8s", "render", "--help"], terminal_width=200)
    assert out.exit_code == 0 and f"Kubernetes {RENDER_VERSION[0]}.{RENDER_VERSION[1]} " in " ".join(out.output.split())
    assert RENDERED.startswith(f"{RENDER_VERSION[0]}.{RENDER_VERSION[1]}.")


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_render_golden_every_key(db, tmp_path):
    """A config that uses every [kubernetes] key and a per-table GPU override renders
    the golden files (checked with kubernetes-validate --strict against 1.33, the
    first version the per-index fields are written for, and 1.37; no API server),
    with backoffLimitPerIndex, maxFailedIndexes, FailIndex on exit code 2, the Secret
    mounted at /run/secrets/datajoint/, the GPU limit, node selector and tolerations;
    with --serve, the server's Deployment gets the same Secret, env and pull secret, and
    its ConfigMap the config without the kubeconfig context.
    A sentinel DJ_PASS in the rendering environment appears in no file. A section for a
    table the pipeline does not have (a typo) changes no Job (the ConfigMap holds the
    config as given) and warns.
    (PostgreSQL only: its test server trusts any password, so the sentinel can be set.)
    DJO_UPDATE_GOLDEN=1 rewrites the golden files."""
    sentinel = "pw-" + uuid.uuid4().hex
    out = tmp_path / "jobs"
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text((GOLDEN / "dj_orchestrate.toml").read_text() + '\n[kubernetes.tables.SpikeSortin]\ngpus = 2\n')
    result = render(db, out, "--config", str(config), "--serve", env={"DJ_PASS": sentinel}, image=False)
    assert f"warning: [kubernetes.tables.SpikeSortin] in {config} names no table of {DEMO}" in result.stderr
    written = check_golden(out, GOLDEN)
    for name in written:
        assert sentinel not in (out / name).read_text()
    for version in ("1.33.0", NEWEST):
        validate([out / n for n in written], version)
    sorting = next(j for j in table_jobs(out) if j["metadata"]["annotations"]["dj-orchestrate.io/table"] == "SpikeSorting")
    spec = sorting["spec"]
    assert spec["backoffLimitPerIndex"] == 1 and spec["maxFailedIndexes"] == 2
    ignore, usage = spec["podFailurePolicy"]["rules"]  # preemption and drain burn no retry; bad input fails at once
    assert ignore == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert usage["action"] == "FailIndex" and usage["onExitCodes"]["values"] == [2]
    assert spec["ttlSecondsAfterFinished"] and spec["activeDeadlineSeconds"]
    pod = spec["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["volumes"] == [{"name": "datajoint-credentials", "secret": {"secretName": "lab-db"}}]
    config_map, deployment = documents(out / "serve" / "01-serve.yaml")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert {"name": "datajoint-credentials", "secret": {"secretName": "lab-db"}} in pod["volumes"]
    assert {"name": "DJ_HOST", "value": "mysql.databases.svc"} in container["env"]
    assert pod["imagePullSecrets"] == [{"name": "lab-registry"}] and pod["serviceAccountName"] == "dj-orchestrate-serve"
    served = tomllib.loads(config_map["data"]["dj_orchestrate.toml"])["kubernetes"]
    assert "context" not in served and served["image"] == "registry.lab.org/my-lab:2026.12" and served["namespace"] == "ephys"


def test_example_config_documents_every_key():
    """The golden config names every Kubernetes setting (set, or commented)."""
    import dataclasses

    from dj_orchestrate.backends.kubernetes.settings import KubernetesSettings, load_config

    config = load_config(str(GOLDEN / "dj_orchestrate.toml"))
    assert config.tables
    text = (GOLDEN / "dj_orchestrate.toml").read_text()
    for f in dataclasses.fields(KubernetesSettings):
        assert re.search(rf"^#? ?{f.name} = ", text, re.M), f.name


@pytest.mark.parametrize("folder", [K8S_DIR, GOLDEN], ids=["k8s", "golden"])
def test_rendered_serve_is_least_privilege_and_a_real_command(folder, tmp_path):
    """What ``k8s render --serve`` writes (the checked-in renders, kept fresh by the
    tests above): a Role in the Deployment's namespace granting Jobs create, get, list,
    watch, patch and delete and pods list, nothing else and nothing cluster-wide (no
    ClusterRole or ClusterRoleBinding), bound to the Deployment's ServiceAccount only.
    The container runs a real ``serve`` command line (every option ``serve --help``
    has, as the compose services are checked; parsed by ``serve``'s own parser) on the
    kubernetes backend with the mounted ConfigMap's file as its config, which loads
    and names the image and Secret; its probes run a real ``dj-orchestrate health`` of
    the same pipeline, no more often than the server beats. No file holds a credential:
    the pod's only variables are the namespace and ``env`` of the config."""
    from test_compose import check_command, literal_passwords

    from dj_orchestrate.backends.kubernetes.settings import CREDENTIAL_WORDS, load_config
    from dj_orchestrate.cli import main

    docs = {d["kind"]: d for p in manifests(folder / "serve") for d in documents(p)}
    assert sorted(docs) == ["ConfigMap", "Deployment", "Role", "RoleBinding", "ServiceAccount"]
    deployment, role, account = docs["Deployment"], docs["Role"], docs["ServiceAccount"]
    namespace = deployment["metadata"]["namespace"]
    assert {d["metadata"]["namespace"] for d in docs.values()} == {namespace}
    granted = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    assert granted == {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "patch", "delete")} | {("", "pods", "list")}
    assert docs["RoleBinding"]["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert docs["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": namespace}]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"] and deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    [container] = pod["containers"]
    command = container["command"]
    assert command[:2] == ["dj-orchestrate", "serve"]
    check_command(command)
    params = main.commands["serve"].make_context("serve", command[2:]).params
    assert params["backend"] == "kubernetes"
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "config"]
    assert {"name": "config", "configMap": {"name": docs["ConfigMap"]["metadata"]["name"]}} in pod["volumes"]
    assert params["config_path"] == f"{mount['mountPath']}/dj_orchestrate.toml"
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text(docs["ConfigMap"]["data"]["dj_orchestrate.toml"])
    served = load_config(str(config)).defaults
    assert (served.image, served.namespace, served.context) == (container["image"], namespace, None)
    named = [e["secretRef"]["name"] for e in container.get("envFrom", [])] + [
        v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert named == [served.secret]  # the Secret the table Jobs get (the config's), and only it
    for probe in (container["startupProbe"], container["livenessProbe"]):
        assert probe["exec"]["command"] == ["dj-orchestrate", "health", params["pipeline_spec"]]
    check_command(container["livenessProbe"]["exec"]["command"])
    assert container["livenessProbe"]["periodSeconds"] >= params["interval"]
    assert {e["name"] for e in container["env"]} == {"POD_NAMESPACE", *served.env}
    assert not any(CREDENTIAL_WORDS.search(e["name"]) for e in container["env"])
    for path in manifests(folder / "serve"):
        assert literal_passwords(path.read_text()) == [], path


def test_names_are_dns_labels_and_deterministic():
    """Job names: lowercase DNS-1123 labels, the same for the same run and table,
    long ones cut and told apart by a hash. (No API server: pure function.)"""
    from dj_orchestrate.backends.kubernetes.settings import NAME_LIMIT, dns_name

    assert dns_name("djo", "20261201-a1b2", "SpikeSorting") == "djo-20261201-a1b2-spikesorting"
    long_a, long_b = dns_name("djo", "r", "X" * 80 + "A"), dns_name("djo", "r", "X" * 80 + "B")
    assert long_a != long_b and len(long_a) <= NAME_LIMIT and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", long_a)



def test_connect_in_cluster_or_kubeconfig_context(tmp_path, monkeypatch):
    """Where the client's configuration comes from (no API server: only the
    configuration is checked, nothing is asked). In a pod (KUBERNETES_SERVICE_HOST set):
    the service account's token and CA, the pod's namespace. Elsewhere: the kubeconfig,
    its current context, or the context named in the config, with that context's
    namespace unless one is given."""
    from kubernetes.config import incluster_config

    from dj_orchestrate.backends.kubernetes.api import Api

    token, ca = tmp_path / "token", tmp_path / "ca.crt"
    token.write_text("sa-token")
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(token))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(ca))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("POD_NAMESPACE", "ephys")
    api = Api.connect()
    configuration = api.client.configuration
    assert (api.namespace, configuration.host, configuration.ssl_ca_cert) == ("ephys", "https://10.96.0.1:443", str(ca))
    assert configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer sa-token"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "laptop",
        "clusters": [{"name": "a", "cluster": {"server": "https://a.example:6443"}},
                     {"name": "b", "cluster": {"server": "https://b.example:6443"}}],
        "users": [{"name": "u", "user": {"token": uuid.uuid4().hex}}],
        "contexts": [{"name": "laptop", "context": {"cluster": "a", "user": "u"}},
                     {"name": "lab", "context": {"cluster": "b", "user": "u", "namespace": "ephys"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(path))
    current, named = Api.connect(), Api.connect(context="lab")
    assert (current.namespace, current.client.configuration.host) == ("default", "https://a.example:6443")
    assert (named.namespace, named.client.configuration.host) == ("ephys", "https://b.example:6443")
    assert Api.connect(context="lab", namespace="other").namespace == "other"


# ------------------------------------------------------------ pod contract
@pytest.mark.slow
def test_rendered_pods_compute_the_demo_like_populate(db, tmp_path):
    """The pod contract of ``kubectl apply -f k8s/``: every rendered table Job's pods
    (their exact command and env, run here as processes: no cluster), every index, Job
    after Job in release order, compute the demo pipeline (part table, fan-in, keys
    that fail on purpose) exactly as plain ``populate()`` does: the same rows, the
    same failed keys, nothing left reserved or pending."""
    n = 20
    out = tmp_path / "k8s"
    render(db, out, "--config", str(K8S_DIR / "dj_orchestrate.toml"))
    demo(db, "seed", db.schema, n)
    for job in table_jobs(out):
        results = run_job(job, secret_env(db))
        assert all(code == 0 for code, _ in results), results
    mine = demo(db, "dump", db.schema)
    assert mine == reference(db, n)
    assert {s for rows in mine["jobs"].values() for s, _ in rows} == {"error"}  # the two broken recordings
    assert len(mine["jobs"]["Preprocess"]) == 2


def test_same_index_twice_makes_each_key_once(chain, db):
    """Kubernetes may run two pods for one index (after a node failure): both claim
    through the jobs table, so every key of the shard is made once. (The pods are
    processes here, with the same JOB_COMPLETION_INDEX; no cluster.)"""
    from dj_orchestrate import ledger
    from dj_orchestrate.planner import encode_bound

    seed(chain, 200)
    JobTable(chain.Square()).enqueue()
    run_id = ledger.new_run(CHAIN, "kubernetes", ["Square"])
    ledger.add_shards(run_id, "Square", [(encode_bound(None), encode_bound(None))])
    cmd = [sys.executable, "-m", "dj_orchestrate", "work", CHAIN, "--table", "Square", "--run-id", run_id, "--fixed-shard"]
    env = {**db.env, "JOB_COMPLETION_INDEX": "0", "POD_NAMESPACE": NS, "DJO_TEST_SLEEP": "0.005"}
    procs = [subprocess.Popen(cmd, env={**env, "POD_NAME": f"djo-x-square-0-{i}"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert makes(chain) == {("Square", i): 1 for i in range(200)}
    [shard] = ledger.shards_of(run_id)
    assert shard["backend_job_id"].startswith(f"kubernetes:{NS}/djo-x-square-0-")


def _pull_pod(db, extra_env: dict) -> subprocess.Popen:
    job = {"metadata": {"name": "djo-t-square", "namespace": NS},
           "spec": {"template": {"spec": {"containers": [{"command": ["dj-orchestrate", "work", CHAIN, "--table", "Square",
                                                                      "--enqueue", "--grace", "1"],
                                                          "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                                                                  {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                                                  {"name": "DJO_LOG_PATH", "value": "kubectl logs -n $(POD_NAMESPACE) $(POD_NAME)"}]}]}}}}
    return pod_process(job, 0, {**db.env, **extra_env})


def test_sigterm_releases_claims_within_grace(chain, db):
    """A pod told to stop (SIGTERM: preemption, node drain, Job deleted) lets its key
    in flight finish or rolls it back within --grace, releases every claim and exits
    well inside terminationGracePeriodSeconds (grace + 30). (The pod is a process
    with the rendered command shape and env; no cluster.)"""
    seed(chain, 30)
    pod = _pull_pod(db, {"DJO_TEST_SLEEP": "0.5"})
    wait_for(lambda: any(r["status"] == "reserved" for r in jobs_rows(chain.Square)), 60, what="a claim")
    row = next(r for r in jobs_rows(chain.Square) if r["status"] == "reserved")
    assert row["backend_job_id"].startswith(f"kubernetes:{NS}/djo-t-square-0-")
    assert row["log_path"] == f"kubectl logs -n {NS} {row['backend_job_id'].partition('/')[2]}"
    started = time.monotonic()
    pod.send_signal(signal.SIGTERM)
    assert pod.wait(timeout=31) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 1 + 30
    statuses = [r["status"] for r in jobs_rows(chain.Square)]
    assert "reserved" not in statuses and "pending" in statuses


# ------------------------------------------------------------- the emulator
def kubeconfig(tmp_path: Path, server: km.Server | km.KubernetesEmulator) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": str(server.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "tester", "namespace": NS}}]}))
    return path


def cluster(kmock, version: str = "33") -> None:
    """What the emulator lacks: a server version we support, and our namespace."""
    kmock["get /version"] << {"major": "1", "minor": version, "gitVersion": f"v1.{version}.0"}
    kmock[f"get /api/v1/namespaces/{NS}"] << {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    kmock[f"get /api/v1/namespaces/{NS}/pods"] << {"apiVersion": "v1", "kind": "PodList", "items": []}


def api_for(kmock, sleeps: list | None = None):
    from kubernetes import client as kc

    from dj_orchestrate.backends.kubernetes.api import Api

    configuration = kc.Configuration()
    configuration.host = str(kmock.url).rstrip("/")
    return Api(kc.ApiClient(configuration), NS, sleep=sleeps.append if sleeps is not None else time.sleep)


def job(name: str, run: str = "r1", after: str = "", suspend: bool = False) -> dict:
    meta = {"name": name, "namespace": NS, "labels": {"dj-orchestrate.io/run": run}}
    if after:
        meta["annotations"] = {"dj-orchestrate.io/after": after}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"suspend": suspend}}


async def finish(kmock, name: str, failed: bool = False, succeeded: int = 1) -> None:
    """The test as the Job controller: the Job's pods ended."""
    status = {"succeeded": succeeded, "active": 0, "failed": int(failed),
              "conditions": [{"type": "Failed" if failed else "Complete", "status": "True"}]}
    response = await kmock.patch(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}", json={"status": status})
    assert response.status == 200


def stored_jobs(kmock) -> dict[str, dict]:
    return {name: obj.raw for (res, ns, name), obj in kmock.objects.items() if res.plural == "jobs" and not obj.deleted}


@pytest.mark.asyncio
async def test_create_adopts_on_409_and_retries_after_429(kmock):
    """Against the API emulator (no API server here): a create answered 429 with
    Retry-After: 2 is retried after 2 s (the emulator stored the first attempt, so the
    retry meets 409 and adopts the Job, as after a lost response); a 503 without
    Retry-After is retried with backoff; a 403 is not retried and carries the API's words."""
    cluster(kmock)
    kmock[f"post /apis/batch/v1/namespaces/{NS}/jobs"][:1] << 429 << {"Retry-After": "2"} << {"kind": "Status", "code": 429}
    sleeps: list[float] = []
    api = api_for(kmock, sleeps)
    obj, new = await asyncio.to_thread(api.create, job("djo-r1-a"))
    assert (obj["metadata"]["name"], new, sleeps) == ("djo-r1-a", False, [2.0])
    obj, new = await asyncio.to_thread(api.create, job("djo-r1-b"))
    assert new and sleeps == [2.0]
    kmock["get /version"][:2] ** 1 << 503
    assert await asyncio.to_thread(api.version) == (1, 33)
    assert sleeps == [2.0, 0.5, 1.0]
    kmock[f"get /apis/batch/v1/namespaces/{NS}/jobs/forbidden"] << 403 << {"kind": "Status", "code": 403, "reason": "Forbidden",
                                                                           "message": "jobs.batch is forbidden"}
    from dj_orchestrate.backends.kubernetes.api import ApiError

    with pytest.raises(ApiError, match="jobs.batch is forbidden"):
        await asyncio.to_thread(api.request, "GET", api.jobs_path("forbidden"))
    assert len(sleeps) == 3


@pytest.mark.asyncio
async def test_conductor_releases_downstream_and_relists_after_410(kmock, tmp_path):
    """Against the API emulator (no API server here), the conductor that rendered
    manifests and ``run`` without --wait leave in the cluster: ``k8s conduct`` keeps a
    downstream Job suspended until every Job it is after has finished (a failed one
    counts: its keys are errors, the rest can go on), releases it then, and exits once
    nothing is suspended. Its first watch ends in 410 Gone: it lists again. Every
    request it made is one its Role grants (list, watch, patch on Jobs): the least
    rights it needs are the rights it has. The test plays the Job controller by
    patching the Jobs' status."""
    cluster(kmock)
    watch = kmock[km.action.WATCH, f"/apis/batch/v1/namespaces/{NS}/jobs"][:1] << (
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}},)
    api = api_for(kmock)
    for manifest in (job("djo-r1-a"), job("djo-r1-b"), job("djo-r1-c", after="djo-r1-a,djo-r1-b", suspend=True)):
        await asyncio.to_thread(api.create, manifest)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, kmock)), "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", "k8s", "conduct", "--run", "r1",
                                                "--jobs", "3", env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 60  # (the conductor's first watch: answered 410, so it lists again)
    while not list(watch) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    await asyncio.sleep(1)
    assert proc.returncode is None and stored_jobs(kmock)["djo-r1-c"]["spec"]["suspend"] is True
    await finish(kmock, "djo-r1-a")
    await asyncio.sleep(1.5)
    assert stored_jobs(kmock)["djo-r1-c"]["spec"]["suspend"] is True
    await finish(kmock, "djo-r1-b", failed=True)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert stored_jobs(kmock)["djo-r1-c"]["spec"]["suspend"] is False
    assert "released djo-r1-c" in err.decode()
    assert len(list(watch)) == 1
    lists = [r for r in kmock if r.method == "GET" and r.action == km.action.LIST]
    assert len(lists) >= 2  # the first list, and the one after 410 Gone
    from dj_orchestrate.backends.kubernetes.settings import CONDUCTOR_VERBS

    mine, theirs = list(kmock)[:3], list(kmock)[3:]  # the test's three creates, then the conductor's requests
    assert [r.method for r in mine] == ["POST"] * 3
    asked = {(rbac_verb(r), r.resource.plural if r.resource else r.url.path) for r in theirs}
    assert asked <= {(verb, "jobs") for verb in CONDUCTOR_VERBS}, asked  # (the test's own status patches: patch, jobs)


@pytest.mark.asyncio
async def test_run_ended_when_every_table_job_finished(kmock, tmp_path, monkeypatch):
    """Against the API emulator: what an Airflow wait task in kubernetes mode asks of a
    run (its ledger row): not ended while a table Job runs or is suspended (waiting for
    the conductor), ended once each finished (a failed one too) or is gone; no answer
    from the API is no answer (None), not an end. A server takes such a run up with a
    conductor for the Jobs that exist, not every recorded name (it waited for ever for
    one never created), or, when its driver died before it released the Jobs that wait
    for none, deletes them (``k8s cancel``): their pods could not work."""
    from dj_orchestrate.backends.kubernetes.backend import KubernetesBackend

    cluster(kmock)
    api = api_for(kmock)
    for manifest in (job("djo-r1-a"), job("djo-r1-b", after="djo-r1-a", suspend=True)):
        await asyncio.to_thread(api.create, manifest)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path, kmock)))
    backend = KubernetesBackend()
    run = {"run_id": "r1", "backend_info": f"{NS}/djo-r1-a,djo-r1-b,djo-r1-gone"}
    assert await asyncio.to_thread(backend.run_ended, run) is False
    # taken up by a conductor that expects the Jobs that exist (one never made: its driver died mid-submit)
    assert await asyncio.to_thread(backend.resume, run) == ["k8s", "conduct", "--run", "r1", "--jobs", "2", "--namespace", NS]
    # a Job that waits for none still suspended: its driver died mid-submit, before its keys were recorded
    await asyncio.to_thread(api.create, job("djo-r3-a", run="r3", suspend=True))
    assert await asyncio.to_thread(backend.resume, {"run_id": "r3", "backend_info": f"{NS}/djo-r3-a,djo-r3-b"}) == \
        ["k8s", "cancel", "r3", "--namespace", NS]
    await finish(kmock, "djo-r1-a")
    assert await asyncio.to_thread(backend.run_ended, run) is False  # b is still suspended
    await finish(kmock, "djo-r1-b", failed=True)
    assert await asyncio.to_thread(backend.run_ended, run) is True
    assert await asyncio.to_thread(backend.run_ended, {"run_id": "r2", "backend_info": f"{NS}/"}) is True  # no Job
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert await asyncio.to_thread(backend.run_ended, run) is None


@pytest.mark.asyncio
@pytest.mark.parametrize("db", ["mysql"], indirect=True)  # (the database's part is airflow's tests')
async def test_airflow_kubernetes_mode_submit_then_progress(chain, db, kmock, tmp_path):
    """The two commands an Airflow DAG in kubernetes mode runs, against the API emulator:
    its submit task's ``run --table Square --backend kubernetes --no-wait --json`` creates
    the table's Job and returns; the wait trigger's ``airflow progress`` says not
    finished while that Job runs, and once it ended with keys left (the test as the Job
    controller: it failed, no pod made a key) finished with those keys left, so the wait
    fails instead of waiting forever."""
    seed(chain, 3)
    cluster(kmock)
    env = {**db.env, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}

    async def cli(*args: str) -> dict:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", *args, env=env, cwd=str(db.home),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, err.decode()
        return json.loads(out.decode())

    submitted = await cli("run", "chain", "--table", "Square", "--backend", "kubernetes", "--image", IMAGE, "--secret",
                          SECRET, "--no-wait", "--json")
    run_id = submitted["run_id"]
    assert submitted["state"] == "submitted" and f"djo-{run_id}-square" in stored_jobs(kmock)
    progress = ("airflow", "progress", "chain", "--table", "Square", "--run", run_id)
    assert {k: v for k, v in (await cli(*progress)).items() if k in ("finished", "workers_ended", "left")} == {
        "finished": False, "workers_ended": False, "left": 3}
    await finish(kmock, f"djo-{run_id}-square", failed=True, succeeded=0)
    assert {k: v for k, v in (await cli(*progress)).items() if k in ("finished", "workers_ended", "left")} == {
        "finished": True, "workers_ended": True, "left": 3}


def rbac_verb(request) -> str:
    """The RBAC verb the API server would check for an HTTP request."""
    if request.method == "GET":
        return "watch" if request.params.get("watch") in ("true", "1") else "get" if request.name else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[request.method.value]


@pytest.mark.asyncio
async def test_cancel_deletes_the_runs_jobs(kmock, tmp_path):
    """Against the API emulator (no API server here): ``k8s cancel RUN`` deletes the
    run's Jobs and its conductor, and nothing of another run."""
    cluster(kmock)
    api = api_for(kmock)
    for manifest in (job("djo-r1-a"), job("djo-r1-b", after="djo-r1-a", suspend=True), job("djo-r2-a", run="r2")):
        await asyncio.to_thread(api.create, manifest)
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path, kmock)), "PYTHONPATH": str(ROOT)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", "k8s", "cancel", "r1", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "deleted 2 Job(s): djo-r1-a, djo-r1-b" in out.decode()
    assert set(stored_jobs(kmock)) == {"djo-r2-a"}


async def play_controller(kmock, proc, db, ran: list[str]) -> None:
    """The Job controller and kubelet: each released Job's pods run (here, as
    processes), then its status says Complete."""
    while proc.returncode is None:
        for name, obj in stored_jobs(kmock).items():
            if name in ran or obj["spec"].get("suspend") or obj["metadata"]["labels"].get("app.kubernetes.io/component"):
                continue
            ran.append(name)
            results = await asyncio.to_thread(run_job, obj, secret_env(db))
            assert all(code == 0 for code, _ in results), results
            await finish(kmock, name, succeeded=len(results))
        await asyncio.sleep(0.3)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_wait_against_the_emulator_like_populate(db, kmock, tmp_path):
    """``run --backend kubernetes --wait`` against the API emulator (no API server
    here; the test plays the Job controller and runs each pod's exact command and env
    as a process): first-level tables as fixed shards (each pod's shard is its
    JOB_COMPLETION_INDEX), downstream Jobs created suspended and released by the CLI as
    upstream Jobs complete, in order. The demo pipeline ends exactly as plain
    ``populate()`` leaves it; the ledger records each pod as kubernetes:<ns>/<pod>, and
    ``errors`` says how to read a failed key's log."""
    n = 20
    demo(db, "seed", db.schema, n)
    cluster(kmock)
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("\n".join(["[kubernetes]", f'image = "{IMAGE}"', f'secret = "{SECRET}"', "parallelism = 2", ""]))
    env = {**db.env, "DJO_DEMO_SCHEMA": db.schema, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dj_orchestrate", "run", DEMO, "--backend", "kubernetes", "--config", str(config),
        "--wait", "--no-progress", "--shards", "2", env=env, cwd=str(db.home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    ran: list[str] = []
    controller = asyncio.create_task(play_controller(kmock, proc, db, ran))
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    await controller
    assert proc.returncode == 1, out.decode() + err.decode()  # the demo's broken recordings
    run_id = re.search(r"run (\S+): errors", out.decode()).group(1)
    tag = run_id
    assert [name.removeprefix(f"djo-{tag}-") for name in ran[2:]] == ["spikesorting", "qualitymetrics", "sessionsummary"]
    assert sorted(ran[:2]) == [f"djo-{tag}-behavior", f"djo-{tag}-preprocess"]
    jobs = stored_jobs(kmock)
    assert jobs[f"djo-{tag}-preprocess"]["spec"]["completions"] == 2
    assert "--fixed-shard" in jobs[f"djo-{tag}-preprocess"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "backoffLimitPerIndex" in jobs[f"djo-{tag}-preprocess"]["spec"]  # the server said 1.33
    assert demo(db, "dump", db.schema) == reference(db, n)
    errors = json.loads(subprocess.run([sys.executable, "-m", "dj_orchestrate", "errors", DEMO, "--json"], env=env,
                                       capture_output=True, text=True, timeout=120).stdout)
    assert len(errors) == 2 and all(e["backend_job_id"].startswith(f"kubernetes:{NS}/djo-{tag}-preprocess-") for e in errors)
    assert all(e["log_path"] == f"kubectl logs -n {NS} {e['backend_job_id'].partition('/')[2]}" for e in errors)


@pytest.mark.asyncio
async def test_rendered_serve_against_the_emulator(db, kmock, tmp_path):
    """The Deployment ``k8s render --serve`` writes, against the API emulator (no API
    server here; the test plays the Job controller and the kubelet, runs the serve
    pod's exact command and env as a process, with --interval 1 and its ConfigMap's
    file where it is mounted): it starts a ``run --backend kubernetes`` whose Jobs have
    the image and Secret of the ConfigMap, and the demo ends made (but its two broken
    recordings); meanwhile the liveness probe's command exits 0, and after SIGTERM (exit
    0) it exits 1. Every request the server and its runs made is one its Role grants,
    but /version (any authenticated user may read it) and reading the namespace (a
    refusal is no answer, not an error); what it grants and they did not ask is what
    only a lost answer, a rejected run or keys held by pods need."""
    from dj_orchestrate.backends.kubernetes.manifests import pod_here
    from dj_orchestrate.backends.kubernetes.settings import SERVER_RULES

    demo(db, "seed", db.schema, 3)
    cluster(kmock)
    out = tmp_path / "k8s"
    render(db, out, "--config", str(K8S_DIR / "dj_orchestrate.toml"), "--namespace", NS, "--serve")
    config_map, deployment = documents(out / "serve" / "01-serve.yaml")
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text(config_map["data"]["dj_orchestrate.toml"])
    kube = {"KUBECONFIG": str(kubeconfig(tmp_path, kmock)), "DJO_LOG_DIR": str(tmp_path / "logs")}
    argv, env = pod_here(deployment, 0, {**os.environ, **secret_env(db), **kube})
    env.pop("KUBERNETES_SERVICE_HOST", None)
    env.pop("JOB_COMPLETION_INDEX")
    argv[argv.index("--config") + 1], argv[argv.index("--interval") + 1] = str(config), "1"
    probe = [sys.executable, "-m", "dj_orchestrate", *deployment["spec"]["template"]["spec"]["containers"][0][
        "livenessProbe"]["exec"]["command"][1:]]
    log = tmp_path / "serve.log"
    with open(log, "wb") as f:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=str(tmp_path), stdout=f, stderr=f)
    ran: list[str] = []
    controller = asyncio.create_task(play_controller(kmock, proc, db, ran))

    def made() -> bool:
        tables = json.loads(db.cli("status", DEMO, "--json", env={"DJO_DEMO_SCHEMA": db.schema}).stdout)["tables"]
        return all(t["total"] and t["done"] + t["error"] == t["total"] for t in tables)

    try:
        await asyncio.to_thread(wait_for, made, 240, "the demo made by the server's run", detail=lambda: log.read_text()[-3000:])
        healthy = await asyncio.to_thread(subprocess.run, probe, env=env, capture_output=True, text=True, timeout=120)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0, log.read_text()[-3000:]
        await controller
    stopped = await asyncio.to_thread(subprocess.run, probe, env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    jobs = stored_jobs(kmock)
    assert len(ran) == len(jobs) == 5, log.read_text()[-3000:]
    for job in jobs.values():
        [container] = job["spec"]["template"]["spec"]["containers"]
        assert container["image"] == IMAGE and container["envFrom"] == [{"secretRef": {"name": SECRET}}]
    granted = {(verb, resource) for rule in SERVER_RULES for resource in rule["resources"] for verb in rule["verbs"]}
    asked = {(rbac_verb(r), r.resource.plural) if r.resource and r.resource.plural else (r.method.value, r.url.path) for r in kmock}
    assert asked - granted == {("GET", "/version"), ("GET", f"/api/v1/namespaces/{NS}")}, asked  # (the test's status patches: patch, jobs)
    # unasked here: adopting a Job after a lost answer, deleting a rejected or cancelled run's
    # Jobs, and asking which pods ended (reconcile asks when pods hold keys)
    assert granted - asked <= {("get", "jobs"), ("delete", "jobs"), ("list", "pods")}


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
@pytest.mark.asyncio
async def test_a_new_server_takes_up_the_run_of_one_that_died(db, kmock, tmp_path):
    """Against the API emulator (no API server here; the test plays the Job controller):
    a serve pod that dies mid-run (SIGKILL of the server and its run, as a pod's end kills
    every process in it) leaves its downstream Jobs suspended, which only a conductor
    releases. The next server takes up that run (``k8s conduct``) instead of waiting for
    it for ever, starts no second run of those tables while it is live, and the demo ends
    made (but its two broken recordings); the run is recorded as interrupted."""
    import psutil

    from dj_orchestrate import ledger

    demo(db, "seed", db.schema, 3)
    cluster(kmock)
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("\n".join(["[kubernetes]", f'image = "{IMAGE}"', f'secret = "{SECRET}"', ""]))
    env = {**db.env, "DJO_DEMO_SCHEMA": db.schema, "KUBECONFIG": str(kubeconfig(tmp_path, kmock)),
           "DJO_LOG_DIR": str(tmp_path / "logs")}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    argv = [sys.executable, "-m", "dj_orchestrate", "serve", DEMO, "--backend", "kubernetes", "--config", str(config),
            "--interval", "1"]
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    with open(logs[0], "wb") as f:
        first = await asyncio.create_subprocess_exec(*argv, env=env, cwd=str(tmp_path), stdout=f, stderr=f)
    await asyncio.to_thread(wait_for, lambda: any(j["spec"].get("suspend") for j in stored_jobs(kmock).values()), 120,
                            "the first server's run to create its Jobs", detail=lambda: logs[0].read_text()[-3000:])
    for proc in [*psutil.Process(first.pid).children(recursive=True), psutil.Process(first.pid)]:
        proc.kill()
    await first.wait()
    [run] = ledger.open_runs(DEMO, "kubernetes", ["Preprocess"])
    alive = types.SimpleNamespace(returncode=None)
    ran: list[str] = []
    controller = asyncio.create_task(play_controller(kmock, alive, db, ran))
    with open(logs[1], "wb") as f:
        second = await asyncio.create_subprocess_exec(*argv, env=env, cwd=str(tmp_path), stdout=f, stderr=f)

    def made() -> bool:
        tables = json.loads(db.cli("status", DEMO, "--json", env={"DJO_DEMO_SCHEMA": db.schema}).stdout)["tables"]
        return all(t["total"] and t["done"] + t["error"] == t["total"] for t in tables)

    try:
        await asyncio.to_thread(wait_for, made, 240, "the demo made", detail=lambda: logs[1].read_text()[-3000:])
        await asyncio.to_thread(wait_for, lambda: not ledger.open_runs(DEMO, "kubernetes", ["Preprocess"]), 60,
                                "the run recorded as ended", detail=lambda: logs[1].read_text()[-3000:])
    finally:
        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 60) == 0, logs[1].read_text()[-3000:]
        alive.returncode = 0
        await controller
    assert f"taking up run {run['run_id']}" in logs[1].read_text(), logs[1].read_text()
    taken = ledger.run_row(run["run_id"])
    assert taken["state"] == "interrupted"
    later = [r for r in ledger.recent_runs(limit=20) if r["run_id"] != run["run_id"]]  # (keys its pull pods left)
    assert all(r["started"] >= taken["ended"] for r in later), (taken, later)


@pytest.mark.parametrize("db", ["mysql"], indirect=True)  # the backend's behaviour, the same on either database; MySQL: a user whose password is real
@pytest.mark.asyncio
async def test_run_without_wait_leaves_a_conductor(chain, db, kmock, tmp_path):
    """``run --backend kubernetes`` without --wait, against the API emulator (no API
    server here): the CLI returns once every Job exists; the first level's Job is
    released and its keys enqueued, the downstream Job stays suspended, and the
    conductor (ServiceAccount, a Role that may only list/watch/patch Jobs, its
    RoleBinding, and a Job running ``k8s conduct``) is left to release it. ``status``
    shows each Job's pods as the API reports them. A sentinel DJ_PASS in the CLI's
    environment (a user whose password it is) is in no object or request sent to the
    API, and not in the ledger or the jobs table."""
    seed(chain, 4)
    cluster(kmock, version="30")
    kube = {"KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    with password_env(db) as secret:
        sentinel = secret["DJ_PASS"]
        env = {**db.env, **secret, **kube}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dj_orchestrate", "run", "chain", "--backend", "kubernetes", "--image", IMAGE,
            "--secret", SECRET, "--no-progress", env=env, cwd=str(tmp_path), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0 and "submitted" in out.decode(), out.decode() + err.decode()
    run_id = re.search(r"run (\S+): submitted", out.decode()).group(1)
    jobs = stored_jobs(kmock)
    square, total, conductor = (jobs[f"djo-{run_id}-square"], jobs[f"djo-{run_id}-total"], jobs[f"djo-{run_id}-conductor"])
    assert square["spec"]["suspend"] is False and total["spec"]["suspend"] is True
    assert "backoffLimitPerIndex" not in square["spec"] and square["spec"]["backoffLimit"] > 0  # 1.30: job-wide
    assert conductor["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "dj-orchestrate", "k8s", "conduct", "--run", run_id, "--jobs", "2"]
    [role] = [o.raw for (res, ns, name), o in kmock.objects.items() if res.plural == "roles"]
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "watch", "patch"]}]
    assert {r["status"] for r in jobs_rows(chain.Square)} == {"pending"} and not JobTable(chain.Total()).declared
    await finish(kmock, f"djo-{run_id}-square", succeeded=1)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", "status", "chain", env={**db.env, **kube},
                                                cwd=str(tmp_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert f"djo-{run_id}-square: active 0, succeeded 1, failed 0; djo-{run_id}-total: suspended" in out.decode(), out.decode()
    from dj_orchestrate import ledger

    created = json.dumps([o.raw for o in kmock.objects.values()]) + "".join(r.text for r in kmock)
    assert sentinel not in created + json.dumps(ledger.recent_runs(), default=str) + json.dumps(jobs_rows(chain.Square), default=str)


@pytest.mark.asyncio
async def test_killed_pod_is_reconciled(chain, db, kmock, tmp_path):
    """A pod killed outright (SIGKILL: no chance to release) leaves its keys reserved;
    ``reconcile`` asks the API (the emulator: no API server here) which pods ended —
    this one is gone — and puts its keys back to pending, the key in flight charged an
    attempt. While the API does not answer, reconcile gets no hint from it, and the
    key of a live owner stays reserved."""
    from dj_orchestrate.backends.kubernetes.backend import KubernetesBackend
    from dj_orchestrate.jobs import Owner

    seed(chain, 3)
    cluster(kmock)
    pod = _pull_pod(db, {"DJO_TEST_CRASH": "1", "DJO_TEST_SLEEP": "0.2"})
    await asyncio.to_thread(pod.wait, 60)
    assert pod.returncode == -signal.SIGKILL
    row = next(r for r in jobs_rows(chain.Square) if r["item_id"] == 1)
    assert row["status"] == "reserved" and row["backend_job_id"].startswith(f"kubernetes:{NS}/")
    env = {"KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", "reconcile", CHAIN, "--json",
                                                env={**db.env, **env}, cwd=str(db.home), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert json.loads(out.decode())["charged_an_attempt"] == 1, err.decode()
    row = next(r for r in jobs_rows(chain.Square) if r["item_id"] == 1)
    assert row["status"] == "pending" and row["attempts"] == 1 and "ended" in row["error_message"]
    # a live owner, and no API to ask: no hint
    jt = JobTable(chain.Square())
    [claim] = jt.claim(Owner.of(jt.conn, backend_job_id=f"kubernetes:{NS}/alive-0-abcde"), 1)
    os.environ["KUBECONFIG"] = str(tmp_path / "missing")
    try:
        assert KubernetesBackend.ended_jobs({f"kubernetes:{NS}/alive-0-abcde"}) == set()
    finally:
        os.environ.pop("KUBECONFIG")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "dj_orchestrate", "reconcile", CHAIN, "--json",
                                                env={**db.env, "KUBECONFIG": str(tmp_path / "missing")},
                                                cwd=str(tmp_path), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    row = next(r for r in jobs_rows(chain.Square) if r["item_id"] == claim.key["item_id"])
    assert row["status"] == "reserved" and row["backend_job_id"] == f"kubernetes:{NS}/alive-0-abcde"


# ---------------------------------------------------------------- bad input
def _fake_missing_kubernetes(tmp_path: Path) -> str:
    """A ``kubernetes`` that fails to import as a missing package does."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "kubernetes.py").write_text("raise ModuleNotFoundError(\"No module named 'kubernetes'\", name='kubernetes')\n")
    return str(fake)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before a key is claimed: one database
@pytest.mark.parametrize("case, config, message", [
    ("no-kubeconfig", f'[kubernetes]\nimage = "{IMAGE}"\n', "no Kubernetes cluster to talk to"),
    ("no-image", "[kubernetes]\n", "no image for the Kubernetes pods"),
    ("unknown-key", f'[kubernetes]\nimage = "{IMAGE}"\ngpu = 1\n', "unknown Kubernetes setting 'gpu'"),
    ("credential-in-env", f'[kubernetes]\nimage = "{IMAGE}"\nenv = {{ DJ_PASS = "$DJ_PASS" }}\n', "credentials belong in the Secret"),
    ("no-package", f'[kubernetes]\nimage = "{IMAGE}"\n', "pip install 'dj-orchestrate[kubernetes]'"),
])
def test_bad_input_exit_2_nothing_reserved(chain, db, tmp_path, case, config, message):
    """One or two lines, exit 2, no traceback, no jobs table declared, nothing in the
    ledger's runs. (No API server: the cases fail before one would be asked.)"""
    seed(chain, 3)
    path = tmp_path / "dj_orchestrate.toml"
    path.write_text(config)
    env = {"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    if case == "no-package":
        env["PYTHONPATH"] = os.pathsep.join([_fake_missing_kubernetes(tmp_path), db.env["PYTHONPATH"]])
    out = db.cli("run", CHAIN, "--backend", "kubernetes", "--config", str(path), "--no-progress", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert message in out.stderr and "Traceback" not in out.stderr and len(lines) <= 2, out.stderr
    if case == "unknown-key":
        assert "valid keys: image, namespace" in out.stderr
    assert not JobTable(chain.Square()).declared


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before a key is claimed: one database
@pytest.mark.asyncio
async def test_unknown_namespace_or_old_cluster_exit_2(chain, db, kmock, tmp_path):
    """Against the API emulator (no API server here): a namespace the API says does
    not exist, or a cluster older than 1.28, is refused in one line with exit 2;
    no Job was created and no key reserved."""
    seed(chain, 3)
    cluster(kmock)
    kmock["get /api/v1/namespaces/nope"] << 404 << {"kind": "Status", "code": 404, "reason": "NotFound",
                                                     "message": 'namespaces "nope" not found'}
    env = {**db.env, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    for args, message in ((["--namespace", "nope"], "namespace 'nope' does not exist"), ([], "Kubernetes 1.27 is too old")):
        if not args:
            kmock["get /version"] ** 1 << {"major": "1", "minor": "27"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dj_orchestrate", "run", CHAIN, "--backend", "kubernetes", "--image", IMAGE, *args,
            env=env, cwd=str(db.home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 2 and message in err.decode() and "Traceback" not in err.decode(), err.decode()
    assert not stored_jobs(kmock) and not JobTable(chain.Square()).declared


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
@pytest.mark.asyncio
async def test_rejected_job_deletes_the_others(chain, db, kmock, tmp_path):
    """Against the API emulator (no API server here): when the API refuses the second
    table's Job (422, its own words), the first one, created suspended and never
    started, is deleted, nothing is enqueued, and the run is recorded as rejected."""
    seed(chain, 3)
    cluster(kmock)
    kmock[f"post /apis/batch/v1/namespaces/{NS}/jobs"][1:2] ** 1 << 422 << {
        "kind": "Status", "code": 422, "reason": "Invalid", "message": 'Job.batch "x" is invalid: spec.template: quota exceeded'}
    env = {**db.env, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dj_orchestrate", "run", "chain", "--backend", "kubernetes", "--image", IMAGE,
        env=env, cwd=str(db.home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and "Kubernetes rejected the run: Job.batch \"x\" is invalid" in lines[0], err.decode()
    assert len(lines) <= 2 and "Traceback" not in err.decode()
    assert not stored_jobs(kmock) and not JobTable(chain.Square()).declared
    from dj_orchestrate import ledger

    assert [r["state"] for r in ledger.recent_runs() if r["backend"] == "kubernetes"] == ["rejected"]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
@pytest.mark.asyncio
async def test_ctrl_c_in_wait_cancels_the_run(chain, db, kmock, tmp_path):
    """Against the API emulator (no API server here): Ctrl-C in ``run --wait`` deletes
    the run's Jobs (in a cluster their pods get SIGTERM and release their keys) and
    exits 130, the run recorded as interrupted."""
    seed(chain, 3)
    cluster(kmock)
    env = {**db.env, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dj_orchestrate", "run", "chain", "--backend", "kubernetes", "--image", IMAGE, "--wait",
        "--no-progress", env=env, cwd=str(db.home), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(stored_jobs(kmock)) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert len(stored_jobs(kmock)) >= 2, stored_jobs(kmock)  # else the signal came before the run existed
    await asyncio.sleep(1)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 130, out.decode() + err.decode()
    assert not stored_jobs(kmock) and "interrupted" in out.decode()
