# One recipe, two images, each a normal (non-editable) install of the package; docker-compose.yml builds each
# service with its extras:
#   EXTRAS=web         the pages and the API, no ML library (`pip install '.[web]'`; the migration runs in it)
#   EXTRAS=web,worker,gguf  the workers: the ML stack too, and llama.cpp for the GGUF export. torch is pinned in
#                      constraints.txt; on Linux x86_64 PyPI serves its CUDA build, which brings the CUDA
#                      libraries along, so the host needs only the NVIDIA driver and the NVIDIA Container Toolkit.
FROM python:3.11-slim

ARG EXTRAS=web
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/loradeck

# llama.cpp (the gguf extra) is built from llama-cpp-python's source distribution: a compiler and cmake for it;
# only what the export needs, and portable code (no -march=native) that runs on any x86-64 with AVX2.
RUN case ",$EXTRAS," in *,gguf,*) apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
        && rm -rf /var/lib/apt/lists/* ;; esac
ENV CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=OFF"

# The dependencies first, in a layer of their own: a code change reinstalls nothing.
COPY pyproject.toml constraints.txt ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*p['dependencies'], *(d for e in sys.argv[1].split(',') for d in p['optional-dependencies'][e]), sep='\n')" "$EXTRAS" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the package itself, into site-packages with its templates, static files and migrations; the sources go.
COPY README.md ./
COPY app ./app
COPY worker ./worker
RUN pip install -c constraints.txt --no-deps . && rm -rf app worker build
# llama.cpp's converter for the installed llama-cpp-python (only in its source distribution), beside it.
RUN case ",$EXTRAS," in *,gguf,*) python -m worker.export fetch-converter ;; esac
COPY assets ./assets

# Not root. The named volumes mounted on /data and /cache take these owners when first created.
RUN useradd --create-home --uid 1000 loradeck \
    && mkdir -p /data /cache/huggingface \
    && chown loradeck:loradeck /data /cache /cache/huggingface
USER loradeck
ENV LORADECK_DATA_DIR=/data \
    LORADECK_ASSETS_DIR=/srv/loradeck/assets \
    HF_HOME=/cache/huggingface
EXPOSE 8000
CMD ["loradeck", "web", "--host", "0.0.0.0", "--port", "8000"]
