"""SLURM: one array job per table via submitit (``backend``), the ``[slurm]`` resources
(``settings``), the SLURM commands and their answers (``commands``), what each array
task runs (``task``)."""

from .backend import SlurmBackend
from .settings import SlurmResources, load_config, slurm_minutes

__all__ = ["SlurmBackend", "SlurmResources", "load_config", "slurm_minutes"]
