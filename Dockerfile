# One CPU image for the three cubes: the pinned environment, the cxr_tutorial package and the
# task notebooks, copied from this repository. Each task runs as
#   python -m cxr_tutorial.entrypoint notebooks/NN_task.ipynb --name=/path ...
# (MLCube adds the arguments from mlcube.yaml, MedPerf takes them from container_config.yaml).
# Build from the repository root:  docker build -t cxr-tutorial/data-preparator:0.1.0 .
# (BuildKit, Docker's default builder since 23.0, or podman: the pip step mounts a secret.)
# BASE_IMAGE needs Python 3.11 with venv and useradd; `make container-test` passes a Debian
# root file system made by debootstrap instead of pulling one.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV LANG=C.UTF-8 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/cxr-tutorial \
    HOME=/tmp

# The whole dependency tree, pinned (requirements.lock, the file `make demo` installs).
# A pip certificate bundle may be passed as the build secret pip_cert (behind a proxy).
COPY requirements.lock /opt/cxr-tutorial/requirements.lock
RUN --mount=type=secret,id=pip_cert \
    python3 -m venv /opt/venv \
    && if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --quiet -r /opt/cxr-tutorial/requirements.lock

# The package and the notebooks, plus the manifests the entrypoint checks parameters with.
COPY cxr_tutorial /opt/cxr-tutorial/cxr_tutorial
COPY notebooks /opt/cxr-tutorial/notebooks
COPY mlcubes/data_preparator/mlcube.yaml /opt/cxr-tutorial/mlcubes/data_preparator/
COPY mlcubes/model_custom_cnn/mlcube.yaml /opt/cxr-tutorial/mlcubes/model_custom_cnn/
COPY mlcubes/metrics/mlcube.yaml /opt/cxr-tutorial/mlcubes/metrics/
RUN python -m compileall -q /opt/cxr-tutorial/cxr_tutorial \
    && useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home cxr

# Unprivileged by default; MLCube and MedPerf run it as the calling user instead.
USER 10001:10001
WORKDIR /opt/cxr-tutorial
CMD ["python", "-m", "cxr_tutorial.entrypoint", "--help"]
