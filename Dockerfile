# The novajobs image: one image for every job; the job is the first argument.
#   docker build -t novajobs:0.1.0 .
#   docker run --rm --env-file novajobs.env novajobs:0.1.0 refresh-trending
# The Kubernetes manifests in k8s-cronjobs/ run it as UID 1000 with a read-only root
# filesystem (an emptyDir on /tmp). Every dependency ships wheels (psycopg[binary],
# clickhouse-connect...), so neither stage needs a compiler.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with novajobs and its dependencies --------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/novajobs
WORKDIR /src
COPY pyproject.toml README.md ./
COPY novajobs ./novajobs
# pip writes the bytecode now: at run time the root filesystem is read-only.
RUN /opt/novajobs/bin/pip install . \
 && /opt/novajobs/bin/pip uninstall --yes pip \
 && /opt/novajobs/bin/novajobs --version

# --- run: the same base (the venv links to its python), the venv, a non-root user ----
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="novajobs" \
      org.opencontainers.image.description="Idempotent, lock-guarded back-office batch jobs"
RUN groupadd --gid 1000 novajobs \
 && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin novajobs
COPY --from=build /opt/novajobs /opt/novajobs
ENV PATH=/opt/novajobs/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 1000:1000
ENTRYPOINT ["novajobs"]
CMD ["--help"]
