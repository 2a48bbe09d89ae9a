#!/usr/bin/env bash
# Sampled pass@k of the search-agent RL demo (`make demo-rl-search-passk`, after
# `make demo-rl-search`): verl's validation of the same held-out questions with K sampled
# answers an item (temperature 1), of the start model and of each checkpoint the RL run
# saved. Each is a validation-only run of the recipe (trainer.val_only=true) into OUT_DIR;
# OUT_DIR/report.md gives pass@1..K at every step with standard errors, and the change
# from the start model to the last checkpoint paired by item. A step already validated
# is skipped, so a re-run resumes.
#
#   bash examples/demo/run_demo_rl_search_passk.sh [OUT_DIR] [RL_DIR] [SFT_DIR] [K] [KEY=VALUE ...] [hydra overrides ...]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${1:-out/demo-rl-search-passk}"
rl="${2:-out/demo-rl-search}"
sft="${3:-out/demo}"
k="${4:-8}"
checkpoints=("$rl"/global_step_*)
if [ ! -d "${checkpoints[0]}" ]; then
    echo "error: no checkpoint in $rl (run \`make demo-rl-search\` first, or pass its OUT_DIR)" >&2
    exit 2
fi
sampled=(
    trainer.val_only=true
    "actor_rollout_ref.rollout.val_kwargs.n=$k"
    actor_rollout_ref.rollout.val_kwargs.do_sample=true
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0
)
extra=("${@:5}")
validate_step() {
    local step="$1"; shift
    if [ -s "$out/validation/$step.jsonl" ]; then
        echo "[pass@k] step $step already validated ($out/validation/$step.jsonl)"
        return
    fi
    echo "[pass@k] step $step: $k sampled answers to each held-out question"
    bash "$here/examples/demo/run_demo_rl_search.sh" "$out" "$sft" "${sampled[@]}" "$@" "${extra[@]}"
}
validate_step 0 trainer.resume_mode=disable
for checkpoint in "${checkpoints[@]}"; do
    validate_step "${checkpoint##*global_step_}" trainer.resume_mode=resume_path \
        "trainer.resume_from_path=$(cd "$checkpoint" && pwd)"
done
echo "[pass@k] report: $out/report.md"
