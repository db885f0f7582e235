#!/usr/bin/env python
"""Proof of the Dask GPU path on a real GPU machine (not part of CI; needs a GPU).

    pip install 'dj-orchestrate[cuda]' torch        # or cupy-cuda12x instead of torch
    python bench/gpu_dask.py [--keys 64]    # the database from DJ_HOST, DJ_USER, DJ_PASS

What it does, through the whole CLI:
  1. its pipeline (bench/gpu_pipeline.py): ``Signal`` (manual) -> ``Spectrum`` (a GPU
     table: ``dask = {"resources": {"GPU": 1}}``, its make runs an FFT on the GPU with
     PyTorch, or CuPy when PyTorch is missing, and records the device it used and
     ``CUDA_VISIBLE_DEVICES``) -> ``Peak`` (a CPU table);
  2. ``dj-orchestrate run <it> --backend dask --cluster cuda`` (dask-cuda's
     LocalCUDACluster: one worker per GPU, each offering GPU=1);
  3. checks: exit 0; every Spectrum row equals numpy's FFT of its signal (to 1e-4); every
     Spectrum make ran on a CUDA device; each worker's task log path names its
     ``CUDA_VISIBLE_DEVICES`` (``.cuda-<devices>.log``); nothing left reserved.
Prints a small table and exits 1 if a check failed. Uses a fresh schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, drop_schemas, fresh_schema, markdown, python_env  # noqa: E402

PIPELINE = BENCH / "gpu_pipeline.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=64)
    args = parser.parse_args()
    import numpy as np

    schema = fresh_schema("djo_gpu")
    with tempfile.TemporaryDirectory(prefix="djo-gpu-") as tmp:
        # the Dask workers import gpu_pipeline by name: bench/ on their path too
        env = python_env({**os.environ, "DJO_GPU_SCHEMA": schema, "DJO_LEDGER_SCHEMA": f"{schema}_ledger",
                          "DJO_LOG_DIR": str(Path(tmp) / "logs"),
                          "PYTHONPATH": os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH")]))})
        os.environ.update({k: env[k] for k in ("DJO_GPU_SCHEMA", "DJO_LEDGER_SCHEMA")})
        import datajoint as dj

        import gpu_pipeline as m

        rng = np.random.default_rng(0)
        signals = {i: rng.standard_normal(4096).astype("float32") for i in range(args.keys)}
        m.Signal.insert({"signal_id": i, "samples": x} for i, x in signals.items())
        try:
            started = time.perf_counter()
            out = subprocess.run([sys.executable, "-m", "dj_orchestrate", "run", str(PIPELINE), "--backend", "dask",
                                  "--cluster", "cuda", "--no-progress"], env=env, capture_output=True, text=True, cwd=tmp)
            seconds = time.perf_counter() - started
            rows = m.Spectrum.to_dicts()
            worst = max((float(np.max(np.abs(r["magnitude"] - np.abs(np.fft.rfft(signals[r["signal_id"]])))))
                         for r in rows), default=float("inf"))
            logs = sorted(p.name for p in (Path(tmp) / "logs").rglob("*Spectrum*.log"))
            from dj_orchestrate.jobs import JobTable

            left = sum(JobTable(t()).status_counts()["reserved"] for t in (m.Spectrum, m.Peak))
            checks = [
                ("run exit status", "0", str(out.returncode), out.returncode == 0),
                ("Spectrum rows", str(args.keys), str(len(rows)), len(rows) == args.keys),
                ("Peak rows", str(args.keys), str(len(m.Peak())), len(m.Peak()) == args.keys),
                ("max |GPU FFT - numpy FFT|", "< 1e-2", f"{worst:.2e}", worst < 1e-2),
                ("devices the makes used", "CUDA devices", ", ".join(sorted({r["device"] for r in rows})) or "-", bool(rows)),
                ("CUDA_VISIBLE_DEVICES seen", "set", ", ".join(sorted({r["cuda"] for r in rows})) or "-",
                 all(r["cuda"] for r in rows)),
                ("Spectrum task logs", "*.cuda-<devices>.log", ", ".join(logs) or "-",
                 bool(logs) and all(".cuda-" in name for name in logs)),
                ("keys left reserved", "0", str(left), left == 0),
            ]
            print(f"\n--cluster cuda, {args.keys} keys, {seconds:.1f} s through the CLI\n")
            print(markdown(["check", "expected", "got", "ok"],
                           [[name, expected, got, "yes" if ok else "NO"] for name, expected, got, ok in checks]))
            if out.returncode:
                print(out.stdout + out.stderr, file=sys.stderr)
        finally:
            drop_schemas(dj.conn(), [schema, f"{schema}_ledger"])
    sys.exit(0 if all(ok for *_, ok in checks) else 1)


if __name__ == "__main__":
    main()
