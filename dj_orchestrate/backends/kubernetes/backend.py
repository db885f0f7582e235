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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import ledger
from ...config import BackendConfig, dumps
from ...errors import UsageError
from ...pipeline import TableInfo
from ..base import RunRequest, SchedulerBackend, Submission
from ..follow import Poll
from ..plan import TableLaunch, plan_launches, record_fixed
from .api import API_ERRORS, HINT_RETRIES, Api
from .conductor import Conductor, cancel as cancel_run, finished
from .manifests import REPLICAS_NOTE, Manifests, account, pod_command, render_name, table_job, write_manifests
from .settings import (AFTER, CONFIG_DIR, MIN_VERSION, RENDER_VERSION, SERVER, SERVER_RULES, KubernetesSettings,
                       dns_name, load_config, version_tuple)


@dataclass
class Jobs(Submission):
    """The run's table Jobs: how many, and (once followed) their conductor."""

    run: str = ""
    expected: int = 0
    conductor: Conductor | None = None


class KubernetesBackend(SchedulerBackend):
    name = "kubernetes"
    resubmits = False  # an index's pods are retried by the Job itself (backoffLimitPerIndex)
    poll_every, shown_as = 5.0, "pods"  # poll_every: the longest a watch waits for an event
    workers_are, reaches_embedded = "pods in the cluster", False
    fix_identity = "set the variables that name the pipeline's schemas in the pods' env ([kubernetes] env)"

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

    def verify(self, tables: list[TableInfo], embedded: bool, wait: bool) -> None:
        """Before anything is written: an image, a database pods can reach, a cluster
        that answers, is recent enough, and has the namespace; every table's settings."""
        if not self.settings.image:
            raise UsageError("no image for the Kubernetes pods", "pass --image, or set image in [kubernetes] of dj_orchestrate.toml")
        self.refuse_embedded(embedded, wait)
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

    def submit(self, request: RunRequest, levels: list[list[TableInfo]], first: bool) -> Jobs:
        """Every Job created suspended; once the API accepted all of them (and, without
        --wait, the conductor) the first level's keys are enqueued and the Jobs that wait
        for none released. A refusal deletes what was created (none of it ran)."""
        api = self._api()
        launches = plan_launches(request, lambda info: self.config.for_table(info).parallelism, fixed_first=first,
                                 levels=levels)
        run = request.run_id
        made = self.manifests(request, launches, run, api.namespace, self.version, suspend_all=True)
        names = [j["metadata"]["name"] for j in made.jobs]
        info = f"{api.namespace}/" + ",".join(names)
        ledger.set_backend_info(run, info)  # (before any Job exists: a driver killed mid-submit leaves Jobs a server can find)
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
            if isinstance(err, API_ERRORS):
                raise UsageError(f"Kubernetes rejected the run: {getattr(err, 'message', '') or err}",
                                 "check the image, resources and your rights in the namespace") from None
            raise
        for job in made.jobs:
            if not job["metadata"].get("annotations", {}).get(AFTER):
                api.release(job["metadata"]["name"])
        return Jobs(info,
                    f"created {len(names)} Job(s) in {api.namespace}: {', '.join(names) or 'nothing to do'}", run, len(names))

    def poll(self, submission: Jobs) -> Poll:
        """Downstream Jobs released as upstream ones finish (the conductor's work, while
        we wait); ended once every Job finished."""
        if not submission.expected:
            return Poll(0, ended=True)
        if submission.conductor is None:
            submission.conductor = Conductor(self._api(), submission.run, submission.expected)
        conductor = submission.conductor
        conductor.release_ready()
        active = sum(j.get("status", {}).get("active", 0) or 0 for j in conductor.jobs.values())
        return Poll(active, ended=conductor.done(until_finished=True))

    def wait_for_change(self, submission: Jobs, timeout: float) -> None:
        """The watch, instead of a sleep: back as soon as a Job can be released or all finished."""
        assert submission.conductor is not None
        submission.conductor.wait(timeout, until_finished=True)

    def cancel(self, submission: Jobs) -> None:
        """Delete the run's Jobs: their workers get SIGTERM and release their keys."""
        cancel_run(self._api(), submission.run)

    def interrupt(self, submission: Jobs) -> int:
        self.cancel(submission)
        return 130

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
        """A run whose driver is gone with Jobs still suspended: only a conductor releases
        them. It expects the Jobs that exist (a finished one may be gone: its TTL). A Job
        that waits for none still suspended means the driver died mid-submit, before the
        run's shards and keys were recorded: its pods could not work, so its Jobs are
        deleted (none ran) and the run ends; the next run makes its keys."""
        found = self._jobs_of(run)
        if not found:
            return None
        present = [found[1][n] for n in found[0] if n in found[1]]
        suspended = [j for j in present if j.get("spec", {}).get("suspend")]
        if not suspended:
            return None
        namespace = run["backend_info"].partition("/")[0]
        if any(not j["metadata"].get("annotations", {}).get(AFTER) for j in suspended):
            return ["k8s", "cancel", run["run_id"], "--namespace", namespace]
        return ["k8s", "conduct", "--run", run["run_id"], "--jobs", str(len(present)), "--namespace", namespace]

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
