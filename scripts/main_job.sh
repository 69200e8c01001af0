#!/usr/bin/env bash
# The main job: set up (idempotent), train an LLMEmbed head on SST-2 with the default `small` backbones,
# evaluate it on the test split, save it as a Hub-style folder, and classify a few sentences with pipeline().
#
#   bash scripts/main_job.sh                      # ../shared/datasets/sst2, seeded 8,000-example train subset
#   bash scripts/main_job.sh --full               # all 67,349 training examples (about 22 min on 2 CPU cores)
#   bash scripts/main_job.sh --dataset stanfordnlp/sst2 --text-column sentence --eval-split validation   # Hub
#
# Any other option is passed to `llmembed train` (see `llmembed train --help`) and overrides the defaults below.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
OUT=outputs/llmembed-sst2
SUBSET=(--max-train-samples 8000)
ARGS=()
for arg in "$@"; do
  if [ "$arg" = "--full" ]; then SUBSET=(); else ARGS+=("$arg"); fi
done
mkdir -p outputs
start=$(date +%s)
.venv/bin/llmembed train --dataset ../shared/datasets/sst2 --preset small --output-dir "$OUT" \
    "${SUBSET[@]}" "${ARGS[@]}" | tee "$OUT.train.json"
.venv/bin/llmembed predict --model "$OUT" \
    --text "a gorgeous, witty, seductive movie." \
    --text "the plot is tedious and the acting is flat." \
    --text "an uneven film, but the lead performance is worth the ticket."
echo "Saved the head, tokenizer, code and model card in $OUT ($(( $(date +%s) - start )) s)."
