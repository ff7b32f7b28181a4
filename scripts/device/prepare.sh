#!/usr/bin/env bash
# Run HERE, before a GPU session's device call: gathers what the GPU machine lacks beside
# the working tree. Its image has torch, lightning, torchmetrics, tokenizers, huggingface-hub,
# safetensors, numpy, scikit-learn and matplotlib, but not jsonargparse (LightningCLI's
# parser), and it reaches no network; ../shared does not travel either. So:
#   .whl/      wheels for Python 3.12: jsonargparse and what its signatures extra needs
#   .devdata/  the data files the plan's jobs read (JSB chorales, MNIST t10k)
# Both folders are git-ignored; the device call names them in `carry`.
#
# The working tree travels too, at most 64 MiB, and checkpoints/ alone is about 145 MB. So
# this also takes every checkpoint folder but the ones the plan starts from out of git's
# index (not out of the tree, not out of any commit) and ignores the rest locally; after
# the call, and before any commit,
#
#   bash scripts/device/prepare.sh --restore
#
# puts the index back as it was (the tree is never touched).
set -euo pipefail
cd "$(dirname "$0")/../.."
keep=(checkpoints/image_transformer_small.mnist checkpoints/music_transformer_small.jsb)
if [[ "${1:-}" == "--restore" ]]; then
    git reset -q
    sed -i '\#^/checkpoints/$#d' .git/info/exclude
    git status --short
    exit 0
fi
if ! git diff --quiet HEAD; then
    echo "prepare.sh: commit or stash your changes first (--restore resets the index to HEAD)" >&2
    exit 1
fi
rm -rf .whl .devdata
mkdir -p .whl .devdata
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 -d .whl \
    jsonargparse==4.53.0 docstring-parser==0.18.0 typeshed-client==2.15.0
data="${ZOO_DATA_DIR:-../shared/data}"
cp -r "$data/jsb_chorales" "$data/mnist" .devdata/
git rm -r -q --cached checkpoints/
git add "${keep[@]}"
grep -qx "/checkpoints/" .git/info/exclude || echo "/checkpoints/" >> .git/info/exclude
echo "travels: $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) bytes of tracked files," \
     "$(du -sbc .whl .devdata | tail -1 | cut -f1) carried; undo after the call: bash scripts/device/prepare.sh --restore"
