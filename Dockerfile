# Two images from one file, each a normal (non-editable) install of the package; docker-compose.yml builds
# each service from its target:
#   web     `pip install '.[web]'`: the pages and the API, no torch (the migration runs in it too)
#   worker  `pip install '.[web,worker]'`: the ML stack as well. torch is pinned in constraints.txt; on Linux
#           x86_64 PyPI serves its CUDA build, which brings the CUDA libraries along, so the host needs only
#           the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/loradeck
COPY pyproject.toml constraints.txt ./
# Not root. The named volumes mounted on /data and /cache take these owners when first created.
RUN useradd --create-home --uid 1000 loradeck \
    && mkdir -p /data /cache/huggingface \
    && chown loradeck:loradeck /data /cache /cache/huggingface

# --- the web image
FROM base AS web
# The dependencies first, in a layer of their own: a code change reinstalls nothing.
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['web'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY app ./app
COPY worker ./worker
# Into site-packages, templates, static files and migrations with it; the sources go.
RUN pip install -c constraints.txt --no-deps . && rm -rf app worker build
COPY assets ./assets
USER loradeck
ENV LORADECK_DATA_DIR=/data \
    LORADECK_ASSETS_DIR=/srv/loradeck/assets
EXPOSE 8000
CMD ["loradeck", "web", "--host", "0.0.0.0", "--port", "8000"]

# --- the worker image
FROM base AS worker
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *p['optional-dependencies']['web'], *p['optional-dependencies']['worker'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install -c constraints.txt --no-deps . && rm -rf app worker build
COPY assets ./assets
USER loradeck
ENV LORADECK_DATA_DIR=/data \
    LORADECK_ASSETS_DIR=/srv/loradeck/assets \
    HF_HOME=/cache/huggingface
CMD ["loradeck", "worker"]
