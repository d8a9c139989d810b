"""`python -m worker.export fetch-converter [VERSION [SDIST]]`: put llama.cpp's converter where the export
finds it, from the given llama-cpp-python source distribution or one pip downloads."""

import sys
from pathlib import Path

from worker.export.converter import fetch_converter

if __name__ == "__main__":
    if sys.argv[1:2] != ["fetch-converter"]:
        raise SystemExit("usage: python -m worker.export fetch-converter [llama-cpp-python version [sdist path]]")
    version = sys.argv[2] if len(sys.argv) > 2 else None
    print(fetch_converter(version, sdist=Path(sys.argv[3]) if len(sys.argv) > 3 else None))
