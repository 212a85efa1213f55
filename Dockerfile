# kvsched: the controller and the scheduler extender (`kvsched serve`), the chart's main container.
# Build: docker build -t kvsched/kvsched:0.1.0 .   (context: the repository root; see .dockerignore)
#   or, without a registry to pull the base from: see docs/deploy.md, "The image" (buildah, a base made with
#   mmdebstrap, --build-arg PYTHON_IMAGE=...); tests/image builds it that way.
# Every dependency is pinned by constraints.txt (`make constraints`), which `make` also installs from.
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz (helm/kvsched/templates/deployment.yaml).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Build-time pip settings, for a mirror or a TLS-inspecting proxy's CA bundle mounted into the build; they stay in
# this stage, not in the image. Unset unless given with --build-arg.
ARG PIP_INDEX_URL
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/kvsched
# Dependencies first, so a code change does not reinstall them: this layer depends only on the pins and
# pyproject.toml (its [project] dependencies, read with tomllib).
COPY constraints.txt pyproject.toml ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
        > requirements.txt \
    && /opt/kvsched/bin/pip install --constraint constraints.txt --requirement requirements.txt
# Then the code, without dependencies (all installed above; `pip check` fails the build if one is missing).
COPY README.md ./
COPY kvsched/ ./kvsched/
RUN /opt/kvsched/bin/pip install --no-deps . \
    && /opt/kvsched/bin/pip check \
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
