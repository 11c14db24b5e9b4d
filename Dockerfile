# syntax=docker/dockerfile:1
# Image of `reconciler`. Build:  docker build -t reconciler:0.1.0 .
# Runs as uid/gid 10001; works with a read-only root filesystem as long as
# /var/lib/reconciler (the root), /tmp and $GNUPGHOME are writable volumes
# (the Helm chart in charts/reconciler mounts exactly those).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: the project and its dependencies into a self-contained venv ----
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Only what `pip install .` needs: a change to tests or docs does not rebuild.
# (README.md* : the build does not fail while the README is missing.)
COPY pyproject.toml README.md* ./
COPY reconciler ./reconciler
# pip byte-compiles what it installs: nothing needs writing at run time.
# The postgres extra (psycopg with its own libpq): a PostgreSQL state
# (RECONCILER_STATE=postgresql://...), which several `serve` replicas share.
RUN pip install '.[postgres]'

# ---- runtime ----
FROM ${PYTHON_IMAGE} AS runtime
# gpg + gpg-agent sign published trees, gpgv checks upstream Release files,
# openssh-client fetches specs from git over ssh. No recommends: nothing heavy.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates gpg gpg-agent gpgv openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 reconciler \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/reconciler \
      --create-home --shell /usr/sbin/nologin reconciler \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/reconciler \
 && install -d -o 10001 -g 10001 -m 0700 /home/reconciler/.gnupg

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/reconciler \
    GNUPGHOME=/home/reconciler/.gnupg \
    RECONCILER_ROOT=/var/lib/reconciler

USER 10001:10001
WORKDIR /var/lib/reconciler
EXPOSE 8080

ENTRYPOINT ["reconciler"]
CMD ["serve", "--help"]
