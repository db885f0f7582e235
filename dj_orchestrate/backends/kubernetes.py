"""Kubernetes: one Indexed Job per table, downstream Jobs released when upstream ends.

The launch plan is the shared one (``plan_launches``): first-level tables get fixed
shards (index ``i`` of the Job claims shard ``i``, read by ``dj-orchestrate work`` from
``JOB_COMPLETION_INDEX``), later tables pull slots that enqueue their table when they
start. Every Job is created suspended; once the API accepted all of them the first
level's keys are enqueued and its Jobs released. A downstream Job is released when
every Job it is ``after`` has finished (Complete or Failed), by ``run --wait`` or,
without it, by a small conductor Job in the cluster (``dj-orchestrate k8s conduct``),
so that no pod waits on a node for its upstream and closing the laptop stops nothing.

The jobs table is the truth: a pod stopped by SIGTERM releases its claims within
``terminationGracePeriodSeconds``; one killed outright holds keys that reconcile
releases (its database connection is gone; ``ended_jobs`` says which pods ended). Two
pods of one index both claim through the jobs table, so no key is made twice.

Credentials come from a Secret (``envFrom``, or files in ``/run/secrets/datajoint/``
that DataJoint reads itself); no manifest, annotation, log line or ledger row holds one.

Supported clusters: Kubernetes 1.28 and newer; ``k8s render`` writes for RENDER_VERSION
unless ``cluster_version`` says otherwise. ``backoffLimitPerIndex``,
``maxFailedIndexes`` and the ``FailIndex`` action are used from 1.33 (GA; beta 1.29-1.32,
where a cluster may have them off and then drops the fields silently); below, a
job-wide ``backoffLimit`` and ``FailJob`` take their place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator

import kubernetes  # noqa: F401  (the extra: a missing package names it)
import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from tqdm import tqdm

from .. import ledger
from ..db import retrying
from ..config import BackendConfig, Settings, dumps
from ..errors import UsageError
from ..jobs import JobTable
from ..pipeline import TableInfo
from .base import (SUBMITTED, Backend, Mismatch, RunRequest, TableLaunch, check_identity, outcome, plan_launches,
                   reconcile_run, record_fixed)

MIN_VERSION = (1, 28)
# what `k8s render` writes for without cluster_version: the oldest minor release upstream
# still maintains (it maintains the three newest; 1.35-1.37 on 2026-12-07)
RENDER_VERSION = (1, 35)
PER_INDEX_SINCE = (1, 33)  # backoffLimitPerIndex, maxFailedIndexes, FailIndex: GA
USAGE_EXIT = 2  # dj-orchestrate's exit code for bad input: retrying cannot help
GROUP = "dj-orchestrate.io"
RUN_LABEL, TABLE_LABEL, AFTER = f"{GROUP}/run", f"{GROUP}/table", f"{GROUP}/after"
MANAGED = {"app.kubernetes.io/managed-by": "dj-orchestrate"}
CONDUCTOR = "dj-orchestrate-conductor"  # its ServiceAccount, Role and RoleBinding
CONDUCTOR_VERBS = ["list", "watch", "patch"]  # on Jobs: what `k8s conduct` does, nothing more
SERVER = "dj-orchestrate-serve"  # the ServiceAccount, Role and RoleBinding of a rendered `serve`
# what `serve --backend kubernetes` and the `run --wait` it starts ask of the API (``Api``), in
# its namespace only: Jobs created (``create``; adopted on 409: get), followed (list, watch),
# released (patch), deleted (a rejected or cancelled run); the pods of Jobs listed, for
# reconcile's hint of which ended. /version needs no Role; reading the namespace may be refused.
SERVER_RULES = [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "patch", "delete"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
CONFIG_DIR = "/etc/dj-orchestrate"  # where a rendered `serve` reads its dj_orchestrate.toml (a ConfigMap)
SECRETS_DIR = "/run/secrets/datajoint"  # DataJoint reads database.user / database.password here
GRACE_MARGIN = 30  # seconds beyond --grace for releasing claims after SIGTERM
RETRIES = 8
HINT_RETRIES = 2  # for status and reconcile, whose answer is only a hint: do not make them wait
NAME_LIMIT = 52  # Job names: 63, less room for the pods' "-<index>-xxxxx"
WHO = "kubernetes --wait"
DB_PATIENCE = 300.0  # seconds --wait waits for a database that restarts (the Jobs do not need us)
FIX = "set the variables that name the pipeline's schemas in the pods' env ([kubernetes] env)"
CREDENTIAL_WORDS = re.compile(r"PASS|PASSWORD|TOKEN|SECRET|KEY", re.I)


@dataclass(frozen=True)
class KubernetesSettings(Settings):
    """``[kubernetes]`` of dj_orchestrate.toml; per table: a class's ``kubernetes`` dict,
    then ``[kubernetes.tables.<Table>]``. Image, namespace, context, secret and
    cluster_version are the run's (the defaults'); the rest may differ per table."""

    label: ClassVar[str] = "Kubernetes setting"

    image: str | None = None
    namespace: str | None = None  # default: the context's namespace, else "default"
    context: str | None = None  # kubeconfig context (default: the current one)
    secret: str | None = None  # the Secret with the database credentials
    secret_files: bool = False  # false: envFrom (DJ_HOST, DJ_USER, DJ_PASS); true: mounted at /run/secrets/datajoint/
    env: dict[str, Any] = field(default_factory=dict)  # plain variables for the pods (no credentials)
    parallelism: int = 4  # pods at once per table; also the pull slots of downstream tables
    cpu: str | float | None = None  # request, e.g. "500m" or 2
    memory: str | None = None  # request and limit, e.g. "4Gi"
    gpus: int | None = None  # nvidia.com/gpu limit
    node_selector: dict[str, Any] = field(default_factory=dict)
    tolerations: tuple[dict, ...] = ()
    service_account: str | None = None  # for the table pods (e.g. workload identity)
    priority_class: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    backoff_limit_per_index: int = 2  # failed pods an index may lose (not counting preemption)
    max_failed_indexes: int | None = None  # fail the Job once this many indexes failed
    ttl_seconds_after_finished: int | None = 86400
    active_deadline_seconds: int | None = None
    cluster_version: str | None = None  # "1.30": what `k8s render` writes for (run asks the server)
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "KubernetesSettings":
        leaks = sorted(k for k in self.env if CREDENTIAL_WORDS.search(k))
        if leaks:
            raise UsageError(f"env in {where} names {leaks[0]!r}: credentials belong in the Secret, not the config",
                             "put it in the Secret (kubectl create secret generic ... --from-literal) and set secret")
        for name in ("parallelism", "backoff_limit_per_index", "max_failed_indexes", "gpus",
                     "ttl_seconds_after_finished", "active_deadline_seconds"):
            value = getattr(self, name)
            if value is not None and value < (1 if name in ("parallelism", "active_deadline_seconds") else 0):
                raise UsageError(f"{name} in {where} is too small: {value}", f"e.g. {name} = 2")
        if self.cluster_version is not None:
            version_tuple(self.cluster_version, where)
        return self


def version_tuple(text: str, where: str = "the server") -> tuple[int, int]:
    """``"1.30"``, ``"v1.30.2"`` or the server's ``minor: "30+"`` as (1, 30)."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)\+?(\.\d+.*)?", text.strip())
    if not m:
        raise UsageError(f"Kubernetes version {text!r} in {where} is not MAJOR.MINOR", 'e.g. cluster_version = "1.30"')
    return int(m.group(1)), int(m.group(2))


def load_config(path: str | None = None) -> BackendConfig[KubernetesSettings]:
    return BackendConfig.load("kubernetes", KubernetesSettings, path)


def dns_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lowercase, ``-``), deterministic, at most
    NAME_LIMIT characters: a longer one is cut and ends with a hash of the whole."""
    name = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:NAME_LIMIT - 9].rstrip('-')}-{digest}"


# ------------------------------------------------------------------ the API
class ApiError(Exception):
    def __init__(self, status: int, reason: str, message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status, self.reason, self.message = status, reason, message


class Gone(ApiError):
    """410: the watch's resourceVersion is too old; list again."""


API_ERRORS = (ApiError, urllib3.exceptions.HTTPError, k8s_client.ApiException)  # no (usable) answer from the API


class Api:
    """The few calls dj-orchestrate makes, as JSON over the ``kubernetes`` package's
    authenticated client: retried with backoff on 429 and 5xx (honouring Retry-After)
    and on connection errors; other errors raise ApiError with the API's message."""

    def __init__(self, api_client: Any, namespace: str, sleep: Callable[[float], None] = time.sleep,
                 retries: int = RETRIES) -> None:
        self.client = api_client
        self.namespace = namespace
        self.sleep = sleep
        self.retries = retries

    @classmethod
    def connect(cls, context: str | None = None, namespace: str | None = None, retries: int = RETRIES) -> "Api":
        """In a pod: its service account. Else the kubeconfig ($KUBECONFIG or
        ~/.kube/config) and its current context (or ``context``)."""
        configuration = k8s_client.Configuration()
        default_ns = None
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not context:
                k8s_config.load_incluster_config(client_configuration=configuration)
                default_ns = os.environ.get("POD_NAMESPACE") or _read("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            else:
                path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration)
                contexts, current = k8s_config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c["name"] == context), current) if context else current
                default_ns = (chosen or {}).get("context", {}).get("namespace")
        except (k8s_config.ConfigException, OSError, TypeError, ValueError) as err:
            raise UsageError(f"no Kubernetes cluster to talk to: {str(err).splitlines()[0] if str(err) else 'no kubeconfig'}",
                             "set KUBECONFIG or ~/.kube/config (kubectl config get-contexts), or run inside a cluster") from None
        return cls(k8s_client.ApiClient(configuration), namespace or default_ns or "default", retries=retries)

    def request(self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None,
                content_type: str = "application/json", stream: bool = False, timeout: float | None = 60) -> Any:
        delay = 0.5
        for attempt in range(self.retries):
            params = self.client.param_serialize(method, path, query_params=list((query or {}).items()),
                                                 header_params={"Content-Type": content_type, "Accept": "application/json"},
                                                 body=body, auth_settings=["BearerToken"])
            try:
                response = self.client.call_api(*params, _request_timeout=(10, timeout) if timeout else None) \
                    if not stream else self.client.rest_client.pool_manager.request(
                        params[0], params[1], headers=params[2], preload_content=False,
                        timeout=urllib3.Timeout(connect=10, read=timeout))
            except (urllib3.exceptions.HTTPError, k8s_client.ApiException) as err:
                if attempt + 1 == self.retries or isinstance(err, urllib3.exceptions.ReadTimeoutError):
                    raise
                self.sleep(delay)
                delay = min(delay * 2, 30)
                continue
            raw = response.response if hasattr(response, "response") else response
            if 200 <= raw.status < 300:
                return raw if stream else json.loads(raw.data or b"{}")
            data = raw.data if not stream else raw.read()
            if (raw.status == 429 or raw.status >= 500) and attempt + 1 < self.retries:
                self.sleep(_retry_after(raw.headers.get("Retry-After")) or delay)
                delay = min(delay * 2, 30)
                continue
            status = _json(data)
            raise (Gone if raw.status == 410 else ApiError)(raw.status, status.get("reason") or raw.reason or "",
                                                            status.get("message", ""))
        raise AssertionError("unreachable")

    # -- the objects
    def jobs_path(self, name: str = "") -> str:
        return f"/apis/batch/v1/namespaces/{self.namespace}/jobs" + (f"/{name}" if name else "")

    def version(self) -> tuple[int, int]:
        answer = self.request("GET", "/version")
        return version_tuple(f"{answer.get('major', '')}.{answer.get('minor', '')}")

    def namespace_exists(self) -> bool | None:
        """None when we may not ask (no right to read namespaces)."""
        try:
            self.request("GET", f"/api/v1/namespaces/{self.namespace}")
            return True
        except ApiError as err:
            return False if err.status == 404 else None

    def create(self, manifest: dict) -> tuple[dict, bool]:
        """Create ``manifest`` in its namespace; a 409 means it exists (this run's
        deterministic name): adopt it. Returns the object and whether it was new."""
        kind = manifest["kind"]
        path = _collection(kind, self.namespace)
        try:
            return self.request("POST", path, body=manifest), True
        except ApiError as err:
            if err.status != 409:
                raise
        return self.request("GET", f"{path}/{manifest['metadata']['name']}"), False

    def jobs(self, run: str) -> tuple[dict[str, dict], str]:
        """The run's Jobs by name, and the list's resourceVersion (for a watch)."""
        answer = self.request("GET", self.jobs_path(), query={"labelSelector": f"{RUN_LABEL}={run}"})
        items = {j["metadata"]["name"]: j for j in answer.get("items", [])
                 if j.get("metadata", {}).get("labels", {}).get(RUN_LABEL) == run}
        return items, answer.get("metadata", {}).get("resourceVersion", "")

    def watch_jobs(self, run: str, resource_version: str, seconds: float) -> Iterator[dict]:
        """Events of the run's Jobs until ``seconds`` pass without one. Gone (410) when
        the resourceVersion expired: the caller lists again."""
        query = {"labelSelector": f"{RUN_LABEL}={run}", "watch": "true", "allowWatchBookmarks": "true"}
        if resource_version:
            query["resourceVersion"] = resource_version
        response = self.request("GET", self.jobs_path(), query=query, stream=True, timeout=seconds)
        try:
            buffer = b""
            for chunk in response.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in filter(None, (li.strip() for li in lines)):
                    event = json.loads(line)
                    obj = event.get("object", {})
                    if event.get("type") == "ERROR":
                        raise (Gone if obj.get("code") == 410 else ApiError)(obj.get("code", 500), obj.get("reason", ""),
                                                                            obj.get("message", ""))
                    yield event
        except (urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.ProtocolError):
            return
        finally:
            response.release_conn()

    def release(self, name: str) -> None:
        self.request("PATCH", self.jobs_path(name), body={"spec": {"suspend": False}},
                     content_type="application/merge-patch+json")

    def delete(self, kind: str, name: str) -> None:
        """Delete (pods with it: Background propagation; their workers get SIGTERM)."""
        try:
            self.request("DELETE", f"{_collection(kind, self.namespace)}/{name}",
                         body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise

    def pods(self, namespace: str) -> dict[str, str]:
        """Our pods in ``namespace``: name -> phase."""
        answer = self.request("GET", f"/api/v1/namespaces/{namespace}/pods",
                              query={"labelSelector": "app.kubernetes.io/managed-by=dj-orchestrate"})
        return {p["metadata"]["name"]: p.get("status", {}).get("phase", "") for p in answer.get("items", [])}


def _collection(kind: str, namespace: str) -> str:
    group = {"Job": "/apis/batch/v1", "Role": "/apis/rbac.authorization.k8s.io/v1",
             "RoleBinding": "/apis/rbac.authorization.k8s.io/v1", "ServiceAccount": "/api/v1"}[kind]
    return f"{group}/namespaces/{namespace}/{kind.lower()}s"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _json(data: bytes | None) -> dict:
    try:
        value = json.loads(data or b"{}")
        return value if isinstance(value, dict) else {}
    except ValueError:
        return {}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# -------------------------------------------------------------- manifests
@dataclass
class Manifests:
    """What one run (or one render) is made of, in release order."""

    namespace: str
    run: str  # the run label (a run id, or the pipeline's name for a render)
    version: tuple[int, int]
    jobs: list[dict] = field(default_factory=list)  # table Jobs, upstream before downstream

    def conductor(self, image: str, config: KubernetesSettings) -> list[dict]:
        """The in-cluster conductor: a ServiceAccount that may list, watch and patch Jobs
        in this namespace (all that ``conduct`` asks: no get, create, delete, nor any
        other resource), and a Job that releases the run's suspended Jobs."""
        command = ["dj-orchestrate", "k8s", "conduct", "--run", self.run, "--jobs", str(len(self.jobs))]
        container = {"name": "conductor", "image": image, "command": command, "env": [_field_env("POD_NAMESPACE", "metadata.namespace")],
                     "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}
        pod: dict[str, Any] = {"serviceAccountName": CONDUCTOR, "restartPolicy": "OnFailure", "containers": [container]}
        if config.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
        labels = {**MANAGED, "app.kubernetes.io/component": "conductor"}
        job = {"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": conductor_name(self.run), "namespace": self.namespace, "labels": labels},
               "spec": {"backoffLimit": 6, "template": {"metadata": {"labels": labels}, "spec": pod}}}
        if config.ttl_seconds_after_finished is not None:
            job["spec"]["ttlSecondsAfterFinished"] = config.ttl_seconds_after_finished
        return [*account(CONDUCTOR, self.namespace, [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": CONDUCTOR_VERBS}]), job]

    def server(self, image: str, config: KubernetesSettings, command: list[str], toml: str, interval: float,
               grace: float) -> list[dict]:
        """``serve`` always on: a ConfigMap with its config (``toml``) and a Deployment of
        one replica running ``command`` (``dj-orchestrate serve PIPELINE ...``) under the
        ``SERVER`` ServiceAccount, restarted when ``dj-orchestrate health`` says it
        stopped beating."""
        name = dns_name("djo", self.run, "serve")
        meta = {"name": name, "namespace": self.namespace, "labels": dict(MANAGED)}
        config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"dj_orchestrate.toml": toml}}
        # health fails after 3 intervals without a beat; a slow start (imports, declaring tables) gets 5 minutes
        probe = {"exec": {"command": ["dj-orchestrate", "health", command[2]]}, "timeoutSeconds": 30}
        container: dict[str, Any] = {"name": "serve", "image": image, "command": command,
                                     "env": [_field_env("POD_NAMESPACE", "metadata.namespace"), *plain_env(config)],
                                     "volumeMounts": [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}],
                                     "startupProbe": {**probe, "periodSeconds": 10, "failureThreshold": 30},
                                     "livenessProbe": {**probe, "periodSeconds": max(30, math.ceil(interval)), "failureThreshold": 3},
                                     "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}}
        pod: dict[str, Any] = {"serviceAccountName": SERVER, "terminationGracePeriodSeconds": math.ceil(grace) + GRACE_MARGIN,
                               "containers": [container], "volumes": [{"name": "config", "configMap": {"name": name}}]}
        with_credentials(container, pod, config)
        if config.image_pull_secrets:
            pod["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
        selector = {"app.kubernetes.io/component": "serve", "app.kubernetes.io/instance": name}
        labels = {**MANAGED, **selector}
        deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {**meta, "labels": labels},
                      "spec": {"replicas": 1, "selector": {"matchLabels": selector},
                               "template": {"metadata": {"labels": labels}, "spec": pod}}}
        return [config_map, deployment]


def account(name: str, namespace: str, rules: list[dict]) -> list[dict]:
    """A ServiceAccount, a Role in ``namespace`` granting ``rules`` and nothing else, and
    the RoleBinding between them (all named ``name``)."""
    meta = {"namespace": namespace, "labels": dict(MANAGED)}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name, **meta}, "rules": rules}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name, **meta},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]}
    return [{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, **meta}}, role, binding]


def plain_env(settings: KubernetesSettings) -> list[dict]:
    """``env`` of the settings (no credentials: ``parsed`` refuses them)."""
    return [{"name": k, "value": str(v)} for k, v in sorted(settings.env.items())]


def with_credentials(container: dict, pod: dict, settings: KubernetesSettings) -> None:
    """The database credentials from the Secret: its keys as variables (``envFrom``), or
    with ``secret_files`` its files in SECRETS_DIR, where DataJoint reads them."""
    if settings.secret and not settings.secret_files:
        container["envFrom"] = [{"secretRef": {"name": settings.secret}}]
    elif settings.secret:
        container.setdefault("volumeMounts", []).append({"name": "datajoint-credentials", "mountPath": SECRETS_DIR, "readOnly": True})
        pod.setdefault("volumes", []).append({"name": "datajoint-credentials", "secret": {"secretName": settings.secret}})


def conductor_name(run: str) -> str:
    """Not labelled with the run: it is not one of the Jobs it conducts."""
    return dns_name("djo", run, "conductor")


def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def table_job(launch: TableLaunch, command: list[str], settings: KubernetesSettings, image: str, namespace: str,
              run: str, after: list[str], version: tuple[int, int], grace: float, suspend: bool) -> dict:
    """One table's Indexed Job: ``launch.slots`` indexes, each a ``dj-orchestrate work``
    whose shard is its JOB_COMPLETION_INDEX."""
    per_index = version >= PER_INDEX_SINCE
    labels = {**MANAGED, RUN_LABEL: run, TABLE_LABEL: dns_name(launch.info.name)}
    env = [_field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
           {"name": "DJO_LOG_PATH", "value": "kubectl logs -n $(POD_NAMESPACE) $(POD_NAME)"}, *plain_env(settings)]
    container: dict[str, Any] = {"name": "worker", "image": image, "command": command, "env": env}
    pod: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": math.ceil(grace) + GRACE_MARGIN}
    with_credentials(container, pod, settings)
    requests = {k: str(v) for k, v in (("cpu", settings.cpu), ("memory", settings.memory)) if v is not None}
    limits = {k: str(v) for k, v in (("memory", settings.memory), ("nvidia.com/gpu", settings.gpus)) if v}
    if requests or limits:
        container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    pod["containers"] = [container]
    for key, value in (("serviceAccountName", settings.service_account), ("priorityClassName", settings.priority_class),
                       ("nodeSelector", {k: str(v) for k, v in settings.node_selector.items()}),
                       ("tolerations", list(settings.tolerations)),
                       ("imagePullSecrets", [{"name": s} for s in settings.image_pull_secrets])):
        if value:
            pod[key] = value
    rules = [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
             {"action": "FailIndex" if per_index else "FailJob",
              "onExitCodes": {"containerName": "worker", "operator": "In", "values": [USAGE_EXIT]},
              "onPodConditions": []}]  # (empty: required by the API schema before 1.30)
    spec: dict[str, Any] = {"completionMode": "Indexed", "completions": launch.slots,
                            "parallelism": min(settings.parallelism, launch.slots), "suspend": suspend}
    if per_index:
        spec["backoffLimitPerIndex"] = settings.backoff_limit_per_index
        if settings.max_failed_indexes is not None:  # (the API refuses more than completions)
            spec["maxFailedIndexes"] = min(settings.max_failed_indexes, launch.slots)
    else:
        spec["backoffLimit"] = settings.backoff_limit_per_index * launch.slots
    spec["podFailurePolicy"] = {"rules": rules}
    if settings.ttl_seconds_after_finished is not None:
        spec["ttlSecondsAfterFinished"] = settings.ttl_seconds_after_finished
    if settings.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = settings.active_deadline_seconds
    spec["template"] = {"metadata": {"labels": labels}, "spec": pod}
    annotations = {f"{GROUP}/table": launch.info.name}
    if after:
        annotations[AFTER] = ",".join(after)
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": dns_name("djo", run, launch.info.name), "namespace": namespace, "labels": labels,
                         "annotations": annotations},
            "spec": spec}


def pod_command(argv: list[str]) -> list[str]:
    """The worker command as the image runs it: its ``dj-orchestrate`` entry point."""
    return ["dj-orchestrate", *argv]


def pod_here(job: dict, index: int, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """Index ``index`` of ``job`` as the kubelet would start it, as a process on this
    machine (argv, env): this Python in place of the image's ``dj-orchestrate``, the
    downward-API fields and ``$(VAR)`` references filled in, JOB_COMPLETION_INDEX set;
    ``env`` is what the Secret and the image would give. For running the pod contract
    of manifests without a cluster (tests, benchmarks)."""
    [container] = job["spec"]["template"]["spec"]["containers"]
    pod = f"{job['metadata']['name']}-{index}-{hashlib.sha1(os.urandom(8)).hexdigest()[:5]}"
    env = {**env, "JOB_COMPLETION_INDEX": str(index), "HOSTNAME": pod}
    fields = {"metadata.name": pod, "metadata.namespace": job["metadata"].get("namespace", "default")}
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
    assert container["command"][0] == "dj-orchestrate", container["command"]
    return [sys.executable, "-m", "dj_orchestrate", *container["command"][1:]], env


# -------------------------------------------------------------- following
def finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def ready_to_release(jobs: dict[str, dict], expected: int) -> list[str]:
    """Suspended Jobs whose upstream Jobs have all finished (or are gone, deleted by
    their TTL after finishing): once every expected Job of the run exists."""
    if len(jobs) < expected:
        return []
    return sorted(name for name, job in jobs.items() if job.get("spec", {}).get("suspend")
                  and all(a not in jobs or finished(jobs[a])
                          for a in filter(None, job["metadata"].get("annotations", {}).get(AFTER, "").split(","))))


def conduct(api: Api, run: str, expected: int, until_finished: bool = False, tick: Callable[[dict], None] = lambda jobs: None,
            watch_seconds: float = 5.0) -> dict[str, dict]:
    """Release the run's suspended Jobs as their upstream Jobs finish, following a
    watch (listed again after 410 Gone). Ends once every Job is released, or with
    ``until_finished`` once every Job finished. Returns the last state of the Jobs."""
    jobs, version = api.jobs(run)
    while True:
        for name in ready_to_release(jobs, expected):
            api.release(name)
            jobs[name].setdefault("spec", {})["suspend"] = False
            print(f"released {name}", file=sys.stderr, flush=True)
        tick(jobs)
        if len(jobs) >= expected and (all(map(finished, jobs.values())) if until_finished
                                      else not any(j.get("spec", {}).get("suspend") for j in jobs.values())):
            return jobs
        try:
            for event in api.watch_jobs(run, version, watch_seconds):
                obj = event.get("object", {})
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if event.get("type") == "BOOKMARK" or obj.get("metadata", {}).get("labels", {}).get(RUN_LABEL) != run:
                    continue
                if event.get("type") == "DELETED":
                    jobs.pop(obj["metadata"]["name"], None)
                else:
                    jobs[obj["metadata"]["name"]] = obj
                if ready_to_release(jobs, expected) or (until_finished and all(map(finished, jobs.values()))):
                    break
        except Gone:
            jobs, version = api.jobs(run)


# ---------------------------------------------------------------- backend
class KubernetesBackend(Backend):
    name = "kubernetes"
    options = ("image", "namespace", "secret")

    def __init__(self, config: BackendConfig[KubernetesSettings] | None = None, api: Api | None = None) -> None:
        self.config = config or load_config()
        self.api = api

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "KubernetesBackend":
        config = load_config(path)
        given = {k: v for k, v in options.items() if v is not None}
        if given:
            config.defaults = config.defaults.merged(given, "the command line")
        return cls(config)

    @property
    def settings(self) -> KubernetesSettings:
        return self.config.defaults

    def _api(self) -> Api:
        if self.api is None:
            self.api = Api.connect(self.settings.context, self.settings.namespace)
        return self.api

    def check(self, tables: list[TableInfo], embedded: bool = False, wait: bool = False) -> None:
        """Before anything is written: an image, a database pods can reach, a cluster
        that answers, is recent enough, and has the namespace; every table's settings."""
        if not self.settings.image:
            raise UsageError("no image for the Kubernetes pods", "pass --image, or set image in [kubernetes] of dj_orchestrate.toml")
        if embedded:
            raise UsageError("the embedded database runs on this machine, so pods in the cluster could not reach it",
                             "configure a database server the cluster can reach (its credentials in a Secret: --secret)")
        for t in tables:
            self.config.for_table(t)
        api = self._api()
        try:
            self.version = api.version()
            exists = api.namespace_exists()
        except API_ERRORS as err:
            raise UsageError(f"the Kubernetes API does not answer: {err}", "check `kubectl cluster-info` and your context") from None
        if self.version < MIN_VERSION:
            raise UsageError(f"Kubernetes {self.version[0]}.{self.version[1]} is too old",
                             f"dj-orchestrate needs {MIN_VERSION[0]}.{MIN_VERSION[1]} or newer")
        if exists is False:
            raise UsageError(f"namespace {api.namespace!r} does not exist", "create it, or pick another with --namespace")

    def manifests(self, request: RunRequest, launches: list[TableLaunch], run: str, namespace: str,
                  version: tuple[int, int], suspend_all: bool) -> Manifests:
        """Each launch as a Job (suspended if it waits for others, or ``suspend_all``)."""
        names = {launch.info.name: dns_name("djo", run, launch.info.name) for launch in launches}
        result = Manifests(namespace, run, version)
        for launch in launches:
            settings = self.config.for_table(launch.info)
            after = [names[a] for a in launch.after if a in names]
            result.jobs.append(table_job(launch, pod_command(launch.argv(request)), settings, settings.image or self.settings.image or "",
                                         namespace, run, after, version, request.worker.grace, suspend_all or bool(after)))
        return result

    def run(self, request: RunRequest) -> int:
        if not hasattr(self, "version"):
            self.check(request.tables, bool(request.target.embedded), request.wait)
        api = self._api()
        launches = plan_launches(request, lambda info: self.config.for_table(info).parallelism)
        run = request.run_id
        made = self.manifests(request, launches, run, api.namespace, self.version, suspend_all=True)
        try:
            for job in made.jobs:
                api.create(job)
            if not request.wait and made.jobs:
                for obj in made.conductor(self.settings.image or "", self.settings):
                    api.create(obj)
            record_fixed(request, launches)
        except BaseException as err:
            for job in made.jobs:  # none of them ran: suspended until now (and a lost answer may have made one)
                api.delete("Job", job["metadata"]["name"])
            ledger.finish_run(request.run_id, "rejected")
            if isinstance(err, API_ERRORS):
                raise UsageError(f"Kubernetes rejected the run: {getattr(err, 'message', '') or err}",
                                 "check the image, resources and your rights in the namespace") from None
            raise
        for job in made.jobs:
            if not job["metadata"].get("annotations", {}).get(AFTER):
                api.release(job["metadata"]["name"])
        info = f"{api.namespace}/" + ",".join(j["metadata"]["name"] for j in made.jobs)
        ledger.set_backend_info(request.run_id, info)
        print(f"created {len(made.jobs)} Job(s) in {api.namespace}: "
              f"{', '.join(j['metadata']['name'] for j in made.jobs) or 'nothing to do'}", file=sys.stderr)
        if not request.wait:
            return SUBMITTED
        return self._follow(request, api, run, len(made.jobs))

    def _follow(self, request: RunRequest, api: Api, run: str, expected: int) -> int:
        """--wait: release downstream Jobs as upstream ones finish, until all finished;
        then reconcile (pods killed outright leave keys reserved by a dead connection).
        Ctrl-C deletes the run's Jobs: their workers get SIGTERM and release their keys."""
        tables = [JobTable(t.instance()) for t in request.tables]
        conn = request.tables[0].cls.connection
        with tqdm(desc="kubernetes", unit="key", disable=not request.progress or None) as bar:
            def tick(jobs: dict[str, dict]) -> None:
                counts = retrying(conn, lambda: [jt.status_counts() for jt in tables], WHO, DB_PATIENCE)
                active = sum(j.get("status", {}).get("active", 0) or 0 for j in jobs.values())
                bar.set_postfix_str(f"pending={sum(c['pending'] for c in counts)} "
                                    f"reserved={sum(c['reserved'] for c in counts)} pods={active}")
                bar.refresh()
                retrying(conn, lambda: check_identity(request.run_id, request.tables, FIX), WHO, DB_PATIENCE)
            try:
                if expected:
                    conduct(api, run, expected, until_finished=True, tick=tick)
            except KeyboardInterrupt:
                cancel(api, run)
                return 130
            except Mismatch:  # its workers would make nothing
                cancel(api, run)
                raise
        retrying(conn, lambda: reconcile_run(request, self.ended_jobs), WHO, DB_PATIENCE)
        return outcome(request.run_id)

    def _jobs_of(self, run: dict) -> tuple[list[str], dict[str, dict]] | None:
        """The names of a run's table Jobs (its ledger row) and the Jobs of the run that
        still exist; None when none are recorded or the API does not answer."""
        namespace, recorded, names = (run.get("backend_info") or "").partition("/")
        if not names:
            return ([], {}) if recorded else None
        try:
            api = Api.connect(self.settings.context, namespace, retries=HINT_RETRIES)
            return names.split(","), api.jobs(run["run_id"])[0]
        except (UsageError, *API_ERRORS):
            return None

    def run_ended(self, run: dict) -> bool | None:
        """Every table Job of the run finished or is gone (a suspended one waits for the
        conductor: not ended)."""
        found = self._jobs_of(run)
        if found is None:
            return None
        names, jobs = found
        return all(name not in jobs or finished(jobs[name]) for name in names)

    def resume(self, run: dict) -> list[str] | None:
        """A run whose driver is gone with Jobs still suspended: only a conductor releases them."""
        found = self._jobs_of(run)
        if not found or not any(found[1].get(n, {}).get("spec", {}).get("suspend") for n in found[0]):
            return None
        return ["k8s", "conduct", "--run", run["run_id"], "--jobs", str(len(found[0])),
                "--namespace", run["backend_info"].partition("/")[0]]

    def describe(self, run: dict) -> str:
        """Each Job's pods: active, succeeded, failed (and suspended), for ``status``."""
        found = self._jobs_of(run)
        if found is None:
            return ""
        names, jobs = found
        parts = []
        for name in names:
            s = jobs.get(name, {}).get("status", {})
            state = "suspended" if jobs.get(name, {}).get("spec", {}).get("suspend") else \
                f"active {s.get('active') or 0}, succeeded {s.get('succeeded') or 0}, failed {s.get('failed') or 0}"
            parts.append(f"{name}: {state if name in jobs else 'gone'}")
        return "; ".join(parts)

    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        """Pods (``kubernetes:<ns>/<pod>``) that succeeded, failed or no longer exist.
        No answer from the API is no hint."""
        by_ns: dict[str, set[str]] = {}
        for job_id in job_ids:
            ns, _, pod = job_id.removeprefix("kubernetes:").partition("/")
            if job_id.startswith("kubernetes:") and pod:
                by_ns.setdefault(ns, set()).add(job_id)
        ended: set[str] = set()
        try:
            api = Api.connect(load_config().defaults.context, retries=HINT_RETRIES) if by_ns else None
        except UsageError:
            return set()
        for ns, ids in by_ns.items():
            try:
                phases = api.pods(ns)
            except API_ERRORS:
                continue
            ended |= {j for j in ids if phases.get(j.partition("/")[2], "Succeeded") in ("Succeeded", "Failed")}
        return ended

    # ----------------------------------------------------------------- render
    def render_version(self) -> tuple[int, int]:
        """The Kubernetes version ``render`` writes for: cluster_version, else RENDER_VERSION."""
        if self.settings.cluster_version:
            return version_tuple(self.settings.cluster_version, "cluster_version")
        return RENDER_VERSION

    def render(self, request: RunRequest, out: Path) -> list[Path]:
        """Manifests that run the pipeline by themselves (``kubectl apply -f``): the
        conductor and its RBAC, then one Job per table, each a pull Job (``--enqueue``):
        without a database at render time no key range is known, and pull slots need
        none. First-level Jobs start at once, later ones suspended until the conductor
        releases them. Sorted file names are a valid release order."""
        if not self.settings.image:
            raise UsageError("no image for the Kubernetes pods", "pass --image, or set image in [kubernetes] of dj_orchestrate.toml")
        for t in request.tables:
            self.config.for_table(t)
        run = render_name(request)
        version = self.render_version()
        launches = plan_launches(request, lambda info: self.config.for_table(info).parallelism, fixed_first=False)
        made = self.manifests(request, launches, run, self.settings.namespace or "default", version, suspend_all=False)
        files = [(out / "00-conductor.yaml", made.conductor(self.settings.image, self.settings))]
        width = max(2, len(str(len(launches))))
        files += [(out / f"{n + 1:0{width}d}-{launch.info.name}.yaml", [job]) for n, (launch, job) in enumerate(zip(launches, made.jobs))]
        return write_manifests(files, f"# dj-orchestrate {request.pipeline}: written by `dj-orchestrate k8s render`\n")

    def render_serve(self, request: RunRequest, out: Path, config: dict[str, dict], interval: float,
                     tables: tuple[str, ...]) -> list[Path]:
        """Manifests that keep the pipeline computed (``kubectl apply -f out``): a
        Deployment running ``serve --backend kubernetes`` every ``interval`` seconds, with
        ``config`` (the whole config file, as read) and the image, namespace and Secret
        this render was given in a ConfigMap, and a ServiceAccount whose Role allows
        only ``SERVER_RULES`` in the namespace. The kubeconfig ``context`` stays out: in
        the pod the API is the cluster's own."""
        namespace = self.settings.namespace or "default"
        section = {k: v for k, v in config.get("kubernetes", {}).items() if k != "context"}
        section.update(image=self.settings.image, namespace=namespace)
        if self.settings.secret:
            section["secret"] = self.settings.secret
        command = ["dj-orchestrate", "serve", request.pipeline, "--backend", "kubernetes", "--config",
                   f"{CONFIG_DIR}/dj_orchestrate.toml", "--interval", f"{interval:g}"]
        command += [a for t in tables for a in ("--table", t)] + (["--key", request.key_json] if request.key_json else [])
        made = Manifests(namespace, render_name(request), self.render_version())
        server = made.server(self.settings.image or "", self.settings, command, dumps({**config, "kubernetes": section}),
                             interval, request.worker.grace)
        header = f"# dj-orchestrate {request.pipeline}: written by `dj-orchestrate k8s render --serve`\n"
        return write_manifests([(out / "00-account.yaml", account(SERVER, namespace, SERVER_RULES)),
                                (out / "01-serve.yaml", server)],
                               header, {"01-serve.yaml": REPLICAS_NOTE})


REPLICAS_NOTE = """\
# replicas: 2 is safe: one server leads (a database lock named after the pipeline's schemas,
# held by its connection) and starts the runs; the other stands by and leads within seconds
# of the leader's end. One is enough: Kubernetes replaces a server that dies or stops beating
# (livenessProbe: `dj-orchestrate health`), and during a rollout the new pod stands by until
# the old one has stopped.
"""


def render_name(request: RunRequest) -> str:
    """A render's run label: the pipeline module's (or file's) name."""
    return dns_name(request.pipeline.rsplit(".", 1)[-1].removesuffix(".py").rsplit("/", 1)[-1])


def write_manifests(files: list[tuple[Path, list[dict]]], header: str, notes: dict[str, str] | None = None) -> list[Path]:
    """Each file's manifests as YAML documents under ``header`` (and its note)."""
    for path, docs in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + (notes or {}).get(path.name, "")
                        + yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False))
    return [p for p, _ in files]


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases (``&id001``): each manifest reads on its own."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    """A string of several lines (a ConfigMap's file) as a block, as it reads in the file."""
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|" if "\n" in data else None)


_PlainDumper.add_representer(str, _text)


def cancel(api: Api, run: str) -> list[str]:
    """Delete the run's Jobs (and its conductor): their pods get SIGTERM, and their
    workers release every claim within the grace period."""
    jobs, _ = api.jobs(run)
    for name in [conductor_name(run), *sorted(jobs)]:
        api.delete("Job", name)
    return sorted(jobs)
