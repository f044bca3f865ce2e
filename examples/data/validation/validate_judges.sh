#!/usr/bin/env bash
# Validate the embedded judges on the shipped validation set: one `megatron-sip judge` run per
# judge and criterion, each writing its summary to examples/data/validation/results/.
#   bash examples/data/validation/validate_judges.sh [rules] [classifier] [smollm2]   (default: all)
# Run from the repository root with the project's environment active. The per-group judgments
# go to runs/validation/ (not committed). SmolLM2 takes several minutes on 2 cores.
set -euo pipefail
here=examples/data/validation
mkdir -p "$here/results" runs/validation
judges=("${@:-rules classifier smollm2}")
judges=(${judges[*]})

settings() {  # the judge.* overrides of each judge
  case "$1" in
    rules) echo "judge.backend=rules judge.lexicon=examples/data/lexicon.txt" ;;
    classifier) echo "judge.backend=classifier" ;;
    smollm2) echo "judge.backend=embedded judge.local_model=embedded judge.decision=direct judge.logprobs=true judge.top_logprobs=20 judge.max_concurrency_per_endpoint=8" ;;
  esac
}

criteria() {  # what each judge can score
  case "$1" in
    classifier) echo "safety" ;;
    *) echo "safety quality factuality" ;;
  esac
}

for judge in "${judges[@]}"; do
  for criterion in $(criteria "$judge"); do
    # shellcheck disable=SC2046
    python -m megatron_sip judge --config examples/tiny_cpu.yaml $(settings "$judge") "judge.criteria=[$criterion]" \
      --input "$here/$criterion.jsonl" --output "runs/validation/${judge}_$criterion.jsonl" \
      --summary "$here/results/${judge}_$criterion.json"
  done
done
