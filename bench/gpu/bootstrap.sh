#!/usr/bin/env bash
# On the device (no network), first in its command: install the wheels carried in .whl/ (bench/gpu/wheels.sh)
# into /tmp/site without touching the image's packages, and put them first on the path. Source it:
#     . bench/gpu/bootstrap.sh && python3 bench/gpu/run.py ...
# (sourced, so PYTHONPATH stays set for run.py and the children it spawns).
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "bootstrap: no wheels in .whl/ (run bench/gpu/wheels.sh where there is a network; carry .whl)" >&2
    return 1 2>/dev/null || exit 1
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "bootstrap: pip install from .whl/ failed" >&2; return 1 2>/dev/null || exit 1; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.metadata as m
import torch
print("bootstrap:", torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU",
      *(f"{n} {m.version(n)}" for n in ("transformers", "peft", "trl", "bitsandbytes", "datasets")))
PY
