"""``slurm render``: the sbatch scripts of a run and the submit.sh that chains them."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path

from ...config import BackendConfig
from ...pipeline import levels_of
from ..base import RunRequest
from .settings import SlurmResources

RENDER_LOGS = "/djo-render-logs"  # submitit makes log folders absolute; rendered scripts use logs/


def scripts(config: BackendConfig[SlurmResources], request: RunRequest, out: Path) -> list[Path]:
    """sbatch scripts for review or for a login node without Python: every table as
    a pull array (``--enqueue``), chained by ``submit.sh`` with afterany.

    The scripts are what ``run --backend slurm`` submits, less submitit: the worker
    runs as a job step (``srun``, so that the USR2 time-limit notice reaches it), logs
    go to ``logs/`` beside the scripts, and a task stopped by USR2 requeues itself.
    Nothing machine-specific and no credential is written."""
    from submitit.slurm.slurm import _make_sbatch_string

    out.mkdir(parents=True, exist_ok=True)
    written = []
    submit = ["#!/bin/bash", "# Submit the pipeline: one array per table, downstream after upstream.",
              "# The database credentials come from the environment (DJ_HOST, DJ_USER, DJ_PASS) or",
              "# datajoint.json on the compute nodes; they are never written into these scripts.",
              "set -euo pipefail", 'cd "$(dirname "$0")"', "mkdir -p logs", "deps="]
    requeue = ["code=$?",
               f"if [ \"$code\" -eq {128 + signal.SIGUSR2} ]; then  # USR2: the worker released its keys",
               '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
               "fi",
               'exit "$code"']
    levels = levels_of(request.tables)
    for n, level in enumerate(levels):
        level_vars = []
        for info in level:
            resources = config.for_table(info)
            command = ["dj-orchestrate", "work", request.pipeline, "--table", info.name, "--enqueue",
                       "--shard-index", "$SLURM_ARRAY_TASK_ID"]
            if request.key_json:
                command += ["--key", request.key_json]
            text = _make_sbatch_string(
                command=" ".join(c if c.startswith("$") else shlex.quote(c) for c in command),
                folder=RENDER_LOGS, map_count=resources.pull_workers, teardown=requeue,
                **resources.submitit_parameters(f"djo-{info.name}"))
            path = out / f"{n:02d}-{info.name}.sbatch"
            path.write_text(text.replace(RENDER_LOGS, "logs").rstrip("\n") + "\n")
            written.append(path)
            var = f"j_{info.name}"
            submit.append(f'{var}=$(sbatch --parsable ${{deps:+--dependency=afterany${{deps}}}} {path.name})')
            submit.append(f'echo "{info.name}: ${var}"')
            level_vars.append(var)
        if n + 1 < len(levels):
            submit.append("deps=" + '"${deps}' + "".join(f":${{{v}}}" for v in level_vars) + '"')
    script = out / "submit.sh"
    script.write_text("\n".join(submit) + "\n")
    script.chmod(0o755)
    return [*written, script]
