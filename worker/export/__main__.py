"""`python -m worker.export fetch-converter [VERSION]`: put llama.cpp's converter where the export finds it."""

import sys

from worker.export.converter import fetch_converter

if __name__ == "__main__":
    if sys.argv[1:2] != ["fetch-converter"]:
        raise SystemExit("usage: python -m worker.export fetch-converter [llama-cpp-python version]")
    print(fetch_converter(sys.argv[2] if len(sys.argv) > 2 else None))
