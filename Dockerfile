# The worker image: dj-orchestrate with every backend a worker runs under (Dask, Kubernetes,
# SLURM), the MySQL and PostgreSQL drivers, and the example pipeline
# (dj_orchestrate.examples.demo). docker-compose.yml builds it; k8s/ and the SLURM docs
# refer to it.
#
#   docker build -t dj-orchestrate:0.1.0 .
#   docker run --rm dj-orchestrate:0.1.0 status my_lab.pipeline     # arguments go to dj-orchestrate
#
# A lab's own pipeline goes into an image built FROM this one (pip install it, or COPY it
# and set PYTHONPATH). Credentials never go into the image: DJ_HOST/DJ_USER/DJ_PASS come
# from the environment, or DataJoint reads /run/secrets/datajoint/database.{user,password}.
FROM python:3.12.12-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/dj-orchestrate
COPY pyproject.toml README.md ./
COPY dj_orchestrate ./dj_orchestrate
# Every dependency has a wheel for this platform: no compiler, no apt packages. The user has
# a fixed uid, so that files it writes to mounted volumes have a known owner.
RUN pip install "./[image]" \
 && useradd --create-home --uid 10001 --user-group djo
USER 10001:10001
WORKDIR /home/djo
ENV DJO_LOG_DIR=/home/djo/logs

ENTRYPOINT ["dj-orchestrate"]
CMD ["--help"]
