#!/usr/bin/env bash
# The first thing to run on a new GPU node: every stage of the project, small, on one GPU.
#
#   bash scripts/gpu_smoke.sh [OUT_DIR]              (default out/gpu_smoke)
#   DRY_RUN=1 bash scripts/gpu_smoke.sh [OUT_DIR]    print and check the commands, run and write nothing
#   DRY_RUN=1 bash scripts/gpu_smoke.sh | python scripts/print_config.py -   the trainers' full configs
#
# Needs no network. The stages, each one's result recorded whatever the others did:
#   model  Qwen2.5-0.5B's shape, random weights, Qwen2.5's tokenizer (afm_trainer.models.real_shape)
#   data   SFT rows, DPO pairs (make_pairs.py), RL prompts (make_rl_data.py), a held-out set
#   sft    recipes/train_sft.sh: 2 steps, FSDP2, FlashAttention 2 where flash-attn is installed
#   dpo    recipes/train_dpo.sh: 2 steps
#   grpo   recipes/train_grpo.sh ROLLOUT=vllm: 2 steps with vLLM rollouts, then a validation
#   eval   python -m afm_trainer.eval on the newest checkpoint (HF generation, on the CPU)
# then a table: each stage's result, seconds, steps, peak GPU memory (torch's, from the
# perf/max_memory_allocated_gb verl logs in metrics.jsonl; and nvidia-smi's memory.used,
# sampled while the stage ran). Outputs, logs (OUT_DIR/logs/STAGE.log) and the table
# (OUT_DIR/summary.txt) go under OUT_DIR; each run starts its stages afresh (the model
# is reused once built). Meant to take under 8 minutes.
# Exit code: 0 every stage passed, 1 one did not, 2 no GPU (one line, nothing done).
# Environment: DRY_RUN=1, ATTN (the models' attn_implementation; default flash_attention_2
# where flash-attn works, else sdpa_varlen), STAGE_TIMEOUT (seconds a stage may run, 900), PYTHON.
set -uo pipefail # no -e: a failed stage is recorded and the next one runs
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$([ -x "$here/.venv/bin/python" ] && echo "$here/.venv/bin/python" || echo python3)}"
helper="$here/scripts/gpu_smoke.py"

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
  exit 0
fi
if [ $# -gt 1 ]; then
  echo "usage: bash scripts/gpu_smoke.sh [OUT_DIR]   (DRY_RUN=1 to preview)" >&2
  exit 2
fi
OUT="${1:-out/gpu_smoke}"
if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then
  echo "error: OUT_DIR $OUT is a file, not a folder" >&2
  exit 2
fi
case "${DRY_RUN:-0}" in 0 | false | "") DRY=0 ;; *) DRY=1 ;; esac
STAGE_TIMEOUT="${STAGE_TIMEOUT:-900}"

# Recipe arguments the recipes would take from the environment: a stale export (MODEL,
# VAL_FILES, NNODES...) must not change what the smoke runs. Each stage passes its own.
unset MODEL TRAIN_FILES VAL_FILES CONFIG NNODES NODE_RANK MASTER_ADDR MASTER_PORT SFT_DIR DEMO_CONFIG \
  CORPUS SEARCH_URL ALGO ROLLOUT VLLM_PYTHON STEPS RAY_ADDRESS DRY_RUN
# No network: hub look-ups fail at once instead of waiting for timeouts; no usage reports.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export RAY_USAGE_STATS_ENABLED=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1

# 2 steps a training stage: each training set holds two batches (SFT's validation set one:
# verl's SFT trainer drops a last partial batch, and would validate on nothing).
SMOKE_STEPS=2
SFT_BATCH=16
DPO_BATCH=8
GRPO_BATCH=8 # prompts a step, GROUP answers each
GROUP=4
sizes=(--sft_rows $((SMOKE_STEPS * SFT_BATCH)) --sft_val "$SFT_BATCH" --pairs $((SMOKE_STEPS * DPO_BATCH))
  --rl_rows $((SMOKE_STEPS * GRPO_BATCH)) --rl_val 8)

# stage_argv STAGE MODEL DATA_DIR OUT_DIR: the stage's command, in argv.
stage_argv() {
  local model="$2" data="$3" out="$4"
  case "$1" in
    model) argv=("$PYTHON" -m afm_trainer.models.real_shape --out "$out/model" --arch qwen2.5-0.5b) ;;
    data) argv=("$PYTHON" "$helper" data "$out/data" "${sizes[@]}") ;;
    sft)
      argv=(bash "$here/recipes/train_sft.sh" 1 "$out/sft" "MODEL=$model"
        "TRAIN_FILES=$data/sft/train.parquet" "VAL_FILES=$data/sft/val.parquet" "DRY_RUN=$DRY"
        device=gpu engine.strategy=fsdp2 "++model.override_config.attn_implementation=$ATTN"
        "data.train_batch_size=$SFT_BATCH" data.micro_batch_size_per_gpu=4 trainer.total_epochs=1)
      ;;
    dpo)
      argv=(bash "$here/recipes/train_dpo.sh" 1 "$out/dpo" "MODEL=$model"
        "TRAIN_FILES=$data/pairs.parquet" "DRY_RUN=$DRY"
        device=gpu engine.strategy=fsdp2 "++model.override_config.attn_implementation=$ATTN"
        "data.train_batch_size=$DPO_BATCH" data.micro_batch_size_per_gpu=2 trainer.total_epochs=1)
      ;;
    grpo)
      # vLLM shares the GPU with the FSDP actor and reference (verl's hybrid engine): 30% of
      # its memory is plenty for a 0.5B model's weights and KV cache; no tensor parallelism.
      argv=(bash "$here/recipes/train_grpo.sh" 1 "$out/grpo" "MODEL=$model"
        "TRAIN_FILES=$data/rl/train.parquet" "VAL_FILES=$data/rl/val.parquet" ROLLOUT=vllm
        "STEPS=$SMOKE_STEPS" "DRY_RUN=$DRY"
        "++actor_rollout_ref.model.override_config.attn_implementation=$ATTN"
        "data.train_batch_size=$GRPO_BATCH" "actor_rollout_ref.rollout.n=$GROUP"
        "actor_rollout_ref.actor.ppo_mini_batch_size=$GRPO_BATCH"
        actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8
        data.max_prompt_length=256 data.max_response_length=128
        actor_rollout_ref.rollout.tensor_model_parallel_size=1
        actor_rollout_ref.rollout.gpu_memory_utilization=0.3
        trainer.val_before_train=false "trainer.test_freq=$SMOKE_STEPS" "trainer.save_freq=$SMOKE_STEPS")
      ;;
    eval)
      argv=("$PYTHON" -m afm_trainer.eval --model "$model" --suite algorithmic
        --data "$data/world/heldout/algorithmic.jsonl" --out "$out/eval" --limit 8 --max_new_tokens 32)
      ;;
  esac
}

quoted() { printf '%q ' "$@" | sed 's/ $//'; }
now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "${EPOCHREALTIME/,/.}"; else date +%s; fi; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; } # seconds since $1

record() { # STAGES_FILE STAGE STATUS SECONDS DIR NOTE
  local file="$1"
  shift
  printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$file"
}

# --- DRY_RUN=1: every command, each recipe's own dry run checking it ---------------------
dry_run() {
  local out_abs tmp stage rc start secs line code=0
  out_abs="$("$PYTHON" -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$OUT")"
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu_smoke.XXXXXX")" || exit 1
  # shellcheck disable=SC2064  # expand now: the folder to remove
  trap "rm -rf '$tmp'" EXIT
  mkdir "$tmp/dry"
  echo "gpu_smoke DRY_RUN: what \`bash scripts/gpu_smoke.sh $OUT\` runs, each recipe's own dry run checking its"
  echo "inputs and configuration; nothing is run, nothing is written under $out_abs."
  echo "placeholders: $out_abs/model and $out_abs/data are made by the run's first two stages; here the"
  echo "recipes check stand-ins (the model's config.json and tokenizer without its weights, and the run's own"
  echo "small data) made in a temporary folder, removed on exit, and shown under the paths the run uses."
  if ! "$PYTHON" "$helper" standins "$tmp" "${sizes[@]}" >"$tmp/standins.log" 2>&1; then
    cat "$tmp/standins.log" >&2
    echo "error: the dry run's stand-ins could not be made (output above)" >&2
    exit 1
  fi
  ATTN="${ATTN:-$(sed -n 's/^attention: //p' "$tmp/standins.log" | tail -n 1)}"
  echo "attention: $ATTN (flash_attention_2 where flash-attn is installed and usable, else sdpa_varlen; ATTN= forces one)"
  for stage in model data sft dpo grpo eval; do
    echo
    case "$stage" in
      model | data)
        stage_argv "$stage" "" "" "$out_abs"
        echo "[$stage] would run: $(quoted "${argv[@]}")"
        record "$tmp/dry/stages.tsv" "$stage" "not run" 0 "" "made by the run"
        ;;
      eval)
        stage_argv eval "$out_abs/grpo/global_step_$SMOKE_STEPS/actor/huggingface" "$out_abs/data" "$out_abs"
        echo "[eval] would run: $(quoted "${argv[@]}")"
        echo "  (the newest checkpoint that exists then: GRPO's as here, else DPO's, SFT's or the untrained model)"
        record "$tmp/dry/stages.tsv" eval printed 0 "" "no dry run of its own; runs on the CPU"
        ;;
      *)
        stage_argv "$stage" "$tmp/model" "$tmp/data" "$out_abs"
        start=$(now)
        "${argv[@]}" >"$tmp/$stage.out" 2>&1
        rc=$?
        secs=$(since "$start")
        while IFS= read -r line || [ -n "$line" ]; do
          printf '%s\n' "${line//"$tmp"/$out_abs}"
        done <"$tmp/$stage.out"
        if [ $rc = 0 ]; then
          record "$tmp/dry/stages.tsv" "$stage" accepted "$secs" "" "the recipe's dry run"
        else
          code=1
          record "$tmp/dry/stages.tsv" "$stage" "REJECTED ($rc)" "$secs" "" \
            "$(grep '^error' "$tmp/$stage.out" | tail -n 1 | sed "s|$tmp|$out_abs|g")"
        fi
        ;;
    esac
  done
  echo
  echo "[check] the trainers' configurations, composed by Hydra as verl composes them:"
  if ! cat "$tmp/sft.out" "$tmp/dpo.out" "$tmp/grpo.out" | "$PYTHON" "$helper" check 2>&1 | sed "s|$tmp|$out_abs|g"; then
    code=1
    record "$tmp/dry/stages.tsv" check REJECTED 0 "" "a configuration does not compose (above)"
  fi
  echo
  "$PYTHON" "$helper" table "$tmp/dry" --dry_run || code=1
  return $code
}

if [ "$DRY" = 1 ]; then
  dry_run
  exit $?
fi

# --- without a GPU: one line, nothing done -------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_smoke: no GPU on this machine (nvidia-smi not found); nothing was run (DRY_RUN=1 previews the commands)" >&2
  exit 2
fi
n="$("$PYTHON" "$helper" gpus 2>/dev/null | tail -n 1)"
case "$n" in
  '' | *[!0-9]* | 0)
    echo "gpu_smoke: no GPU visible to torch (torch.cuda.device_count() is ${n:-unknown}); nothing was run" >&2
    exit 2
    ;;
esac

# --- the run ---------------------------------------------------------------------------------
mkdir -p "$OUT/logs" || exit 1
out_abs="$(cd "$OUT" && pwd)"
STAGES="$out_abs/stages.tsv"
: >"$STAGES"
gpu="${CUDA_VISIBLE_DEVICES:-0}"
gpu="${gpu%%,*}"
ATTN="${ATTN:-$("$PYTHON" "$helper" attention 2>/dev/null | tail -n 1)}"
{
  echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "$gpu" 2>&1 | head -n 1)"
  echo "torch: $("$PYTHON" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -n 1)"
  echo "vllm: $("$PYTHON" -c 'import vllm; print(vllm.__version__)' 2>/dev/null || echo 'not installed (make install TORCH_SPEC=... EXTRAS=test,gpu)')"
  echo "attention: $ATTN"
} | tee "$out_abs/node.txt"
echo "outputs: $out_abs (each stage's log: $out_abs/logs/STAGE.log)"

interrupted=0
stage_pid=""
on_signal() {
  interrupted=1
  [ -n "$stage_pid" ] && kill -TERM "$stage_pid" 2>/dev/null
}
trap on_signal INT TERM

# run_stage STAGE DIR NOTE -- command...: runs it (its output to the stage's log) with
# nvidia-smi sampling the GPU's memory, and records its result, seconds and folder.
run_stage() {
  local name="$1" dir="$2" note="$3" log="$out_abs/logs/$1.log" mem="$out_abs/logs/$1.gpumem"
  local sampler rc start secs status
  shift 4
  echo "[gpu_smoke] $name: $(quoted "$@")"
  printf '+ %s\n' "$(quoted "$@")" >"$log"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$gpu" -lms 500 >"$mem" 2>/dev/null &
  sampler=$!
  start=$(now)
  timeout -k 30 "$STAGE_TIMEOUT" "$@" >>"$log" 2>&1 </dev/null &
  stage_pid=$!
  while :; do
    wait "$stage_pid"
    rc=$?
    kill -0 "$stage_pid" 2>/dev/null || break # a signal interrupted the wait, not the stage
  done
  stage_pid=""
  secs=$(since "$start")
  kill "$sampler" 2>/dev/null
  wait "$sampler" 2>/dev/null
  if [ "$interrupted" = 1 ]; then
    status=interrupted
  elif [ "$rc" = 0 ]; then
    status=ok
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    status="timed out (${STAGE_TIMEOUT}s)"
  else
    status="failed ($rc)"
  fi
  record "$STAGES" "$name" "$status" "$secs" "$dir" "$note"
  echo "[gpu_smoke] $name: $status in ${secs}s"
  if [ "$status" != ok ]; then
    tail -n 15 "$log" | sed 's/^/    | /'
  fi
  [ "$status" = ok ]
}

have_model=0
have_data=0
# model: built once, reused by later smokes (delete OUT_DIR/model to rebuild it)
if [ -f "$out_abs/model/afm_real_shape.json" ] && [ -f "$out_abs/model/config.json" ]; then
  record "$STAGES" model ok 0 "" "reused $out_abs/model (built by an earlier smoke)"
  echo "[gpu_smoke] model: reusing $out_abs/model"
  have_model=1
else
  stage_argv model "" "" "$out_abs"
  run_stage model "" "random weights" -- "${argv[@]}" && have_model=1
fi
if [ "$interrupted" = 0 ]; then
  rm -rf "$out_abs/data"
  stage_argv data "" "" "$out_abs"
  run_stage data "" "" -- "${argv[@]}" && have_data=1
fi
for stage in sft dpo grpo; do
  [ "$interrupted" = 1 ] && break
  if [ "$have_model" = 0 ] || [ "$have_data" = 0 ]; then
    record "$STAGES" "$stage" skipped 0 "" "needs the model and data stages"
    continue
  fi
  rm -rf "${out_abs:?}/$stage" # afresh: a finished run would only resume, training nothing
  stage_argv "$stage" "$out_abs/model" "$out_abs/data" "$out_abs"
  case "$stage" in
    sft) note="$SMOKE_STEPS steps x $SFT_BATCH rows, $ATTN" ;;
    dpo) note="$SMOKE_STEPS steps x $DPO_BATCH pairs, $ATTN" ;;
    grpo) note="$SMOKE_STEPS steps x $GRPO_BATCH prompts x $GROUP answers, vllm rollout" ;;
  esac
  run_stage "$stage" "$out_abs/$stage" "$note" -- "${argv[@]}"
done
if [ "$interrupted" = 0 ]; then
  rm -rf "$out_abs/eval"
  if [ "$have_model" = 0 ] || [ "$have_data" = 0 ]; then
    record "$STAGES" eval skipped 0 "" "needs the model and data stages"
  else
    IFS=$'\t' read -r eval_model eval_which < <("$PYTHON" "$helper" eval-model "$out_abs" 2>/dev/null)
    stage_argv eval "${eval_model:-$out_abs/model}" "$out_abs/data" "$out_abs"
    run_stage eval "" "model: ${eval_which:-the untrained model}" -- "${argv[@]}"
  fi
fi

echo
"$PYTHON" "$helper" table "$out_abs"
code=$?
[ "$interrupted" = 1 ] && exit 130
exit "$code"
