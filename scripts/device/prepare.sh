#!/usr/bin/env bash
# Run HERE, before a GPU session's device call: gathers what the GPU machine lacks beside
# the working tree. Its image has torch, lightning, torchmetrics, tokenizers, huggingface-hub,
# safetensors, numpy, scikit-learn and matplotlib, but not jsonargparse (LightningCLI's
# parser), and it reaches no network; ../shared does not travel either. So:
#   .whl/      wheels for Python 3.12: jsonargparse and what its signatures extra needs
#   .devdata/  the data files the plan's jobs read (JSB chorales, MNIST t10k)
# Both folders are git-ignored; the device call names them in `carry`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl .devdata
mkdir -p .whl .devdata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .whl \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
data="${ZOO_DATA_DIR:-../shared/data}"
cp -r "$data/jsb_chorales" "$data/mnist" .devdata/
du -sh .whl .devdata
