"""What a run or a render is made of in a cluster: the table Jobs (Indexed, suspended
until released), the conductor and its RBAC, a rendered ``serve``; written as YAML."""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..base import RunRequest
from ..plan import TableLaunch
from .settings import (AFTER, CONDUCTOR, CONDUCTOR_VERBS, CONFIG_DIR, GRACE_MARGIN, GROUP, MANAGED, PER_INDEX_SINCE,
                       RUN_LABEL, SECRETS_DIR, SERVER, TABLE_LABEL, USAGE_EXIT, KubernetesSettings, dns_name)


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

