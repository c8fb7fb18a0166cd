#!/usr/bin/env bash
# Wheels the GPU machine's image lacks (its python3 is 3.12 with torch, numpy, pyarrow, pyyaml,
# pillow, fsspec, timm, huggingface_hub, regex, tqdm): fetched here into .whl/, carried with the
# run (carry: [".whl"]), installed by benchmarks/gpu_suite.sh. ~40 MB.
set -euo pipefail
cd "$(dirname "$0")/.."
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
pip=${PIP:-python3 -m pip}
$pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d .whl \
  "open_clip_torch==$(.venv/bin/python -c 'import open_clip; print(open_clip.__version__)')" ftfy wcwidth \
  webdataset==0.2.86 braceexpand "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic_core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  annotated_types typing_inspection "faiss-cpu==$(.venv/bin/python -c 'import faiss; print(faiss.__version__)')"
ls -la .whl
