"""``[kubernetes]`` of the config file, and the names dj-orchestrate gives what it
creates in a cluster (labels, accounts, the versions it writes for)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import BackendConfig, Settings, flag
from ...errors import UsageError

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
NAME_LIMIT = 52  # Job names: 63, less room for the pods' "-<index>-xxxxx"
CREDENTIAL_WORDS = re.compile(r"PASS|PASSWORD|TOKEN|SECRET|KEY", re.I)


@dataclass(frozen=True)
class KubernetesSettings(Settings, section="kubernetes"):
    """``[kubernetes]`` of dj_orchestrate.toml; per table: a class's ``kubernetes`` dict,
    then ``[kubernetes.tables.<Table>]``. Image, namespace, context, secret and
    cluster_version are the run's (the defaults'); the rest may differ per table."""

    label: ClassVar[str] = "Kubernetes setting"

    image: str | None = flag(None, "the worker image (default: [kubernetes] image).",
                             render="The worker image (default: [kubernetes] image).")
    namespace: str | None = flag(None, "the namespace (default: [kubernetes] namespace, then the context's).",
                                 render="The namespace (default: [kubernetes] namespace, else default).")
    context: str | None = None  # kubeconfig context (default: the current one)
    secret: str | None = flag(None, "the Secret with the database credentials (default: [kubernetes] secret).",
                              render="The Secret with the database credentials (default: [kubernetes] secret).")
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
    return BackendConfig.load(KubernetesSettings, path)


def dns_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lowercase, ``-``), deterministic, at most
    NAME_LIMIT characters: a longer one is cut and ends with a hash of the whole."""
    name = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:NAME_LIMIT - 9].rstrip('-')}-{digest}"

