#!/usr/bin/env bash
# Where there is a network (here, not on the device): the wheels bench/gpu/run.py needs on a bare CUDA PyTorch
# image (Python 3.12, x86-64, CUDA 13), at constraints.txt's versions, into .whl/ (git-ignored), which a device
# call carries (`carry: [".whl"]`) and bench/gpu/bootstrap.sh installs there without a network.
#
# bitsandbytes' wheel holds a library for every CUDA from 11.8 to 13.2 (43 MB): it is rewritten keeping the
# CUDA 13 ones and the CPU one (~4 MB), so the wheels and the tree fit the device's 64 MiB. Unsloth is not
# fetched: see bench/gpu/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}
pin() { grep -i "^$1==" constraints.txt | head -1; }
names=(transformers peft trl bitsandbytes datasets dill multiprocess SQLAlchemy greenlet alembic Mako pydantic
       pydantic_core annotated-types typing-inspection pydantic-settings python-dotenv redis)
pins=()
for n in "${names[@]}"; do p=$(pin "$n"); pins+=("${p:-$n}"); done
mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "${pins[@]}"
"$PYTHON" - <<'PY'
import pathlib, re, zipfile
for wheel in pathlib.Path(".whl").glob("bitsandbytes-*.whl"):
    drop = re.compile(r"bitsandbytes/libbitsandbytes_(cuda1[12]\d|rocm\d+|xpu\d+)\.so$")
    with zipfile.ZipFile(wheel) as src:
        names = [n for n in src.namelist() if not drop.search(n)]
        if len(names) == len(src.namelist()):
            continue
        slim = wheel.with_suffix(".slim")
        with zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as out:
            for n in names:
                data = src.read(n)
                if n.endswith(".dist-info/RECORD"):
                    data = b"".join(l for l in data.splitlines(keepends=True) if not drop.search(l.split(b",")[0].decode()))
                out.writestr(src.getinfo(n), data)
    slim.replace(wheel)
    print(f"{wheel.name}: kept the CUDA 13 and CPU libraries")
PY
du -ch .whl/*.whl | tail -1
