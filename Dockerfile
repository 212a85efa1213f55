# kvsched: the controller and the scheduler extender (`kvsched serve`), the chart's main container.
# Build: docker build -t kvsched/kvsched:0.1.0 .   (context: the repository root; see .dockerignore)
# Every dependency is pinned by constraints.txt (`make constraints`), which `make` also installs from.
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (helm/kvsched/templates/deployment.yaml).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/kvsched
# Dependencies first, so a code change does not reinstall them.
COPY constraints.txt pyproject.toml README.md ./
COPY kvsched/ ./kvsched/
RUN /opt/kvsched/bin/pip install --constraint constraints.txt . \
    && /opt/kvsched/bin/kvsched --version

FROM ${PYTHON_IMAGE}
RUN groupadd --system --gid 65532 kvsched \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin kvsched
COPY --from=build /opt/kvsched /opt/kvsched
ENV PATH=/opt/kvsched/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib
USER 65532:65532
ENTRYPOINT ["kvsched"]
