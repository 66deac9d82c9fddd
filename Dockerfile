# syntax=docker/dockerfile:1
#
# One image for every Autopack Fleet process: `autopack api` (default), `autopack worker`,
# `autopack db upgrade`, and `autopack flower`.
# See compose.yaml for how each is started.

ARG PYTHON_VERSION=3.11

# --- build: resolve and install into a virtualenv that the runtime stage copies whole ----------
FROM python:${PYTHON_VERSION}-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so this layer is rebuilt only when they change,
# not on every source edit.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project itself; its dependencies are already there.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps .

# --- runtime ---------------------------------------------------------------------------------
FROM python:${PYTHON_VERSION}-slim AS runtime

# git: workers clone, fetch, commit and push in worktrees. openssh-client: for ssh:// remotes.
# bubblewrap: the box every phase command and validation runs in (workers/sandbox); its limits are
# set with prlimit, from util-linux, which the base image already has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client ca-certificates bubblewrap \
    && rm -rf /var/lib/apt/lists/*

# Non-root user. Its home holds git's config; the workspace directory exists (and is owned by it)
# in the image, so a fresh named volume mounted there inherits that ownership.
RUN groupadd --system --gid 10001 autopack \
    && useradd --system --uid 10001 --gid autopack --home-dir /var/lib/autopack --shell /usr/sbin/nologin autopack \
    && mkdir -p /var/lib/autopack/workspace \
    && chown -R autopack:autopack /var/lib/autopack

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/var/lib/autopack \
    AUTOPACK_WORKSPACE_DIR=/var/lib/autopack/workspace \
    AUTOPACK_API_HOST=0.0.0.0 \
    AUTOPACK_API_PORT=8000

VOLUME ["/var/lib/autopack/workspace"]
WORKDIR /var/lib/autopack
USER autopack:autopack
EXPOSE 8000

CMD ["autopack", "api"]
