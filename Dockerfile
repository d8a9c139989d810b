# One image for every loradeck service; docker-compose.yml picks the command.
# torch is pinned in constraints.txt; on Linux x86_64 PyPI serves its CUDA build, which brings the CUDA
# libraries along, so the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/loradeck

# The dependencies first, in a layer of their own: a code change does not reinstall torch.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY README.md alembic.ini ./
COPY app ./app
COPY worker ./worker
COPY assets ./assets
# Editable: the app finds assets/ beside its package (app/config.py's REPO_ROOT), so the package must run
# from here, not from a copy in site-packages.
RUN pip install -c constraints.txt --no-deps -e .

# Not root. The named volumes mounted on /data and /cache take these owners when first created.
RUN useradd --create-home --uid 1000 loradeck \
    && mkdir -p /data /cache/huggingface \
    && chown loradeck:loradeck /data /cache /cache/huggingface
USER loradeck
ENV LORADECK_DATA_DIR=/data \
    HF_HOME=/cache/huggingface
EXPOSE 8000
CMD ["loradeck", "web", "--host", "0.0.0.0", "--port", "8000"]
