"""RL on verl: GRPO (default) or PPO with a critic, from the progressive recipe's model.

    bash recipes/train_grpo.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]

runs ``python -m verl.trainer.main_ppo`` with ``afm_trainer/config/grpo.yaml``: verl's
single controller, Ray worker groups, rollouts by vLLM on GPUs or by the hf rollout on
CPU (``afm_trainer/verl_ext/cpu_rollout.py``), rewards from
``afm_trainer/verl_ext/rewards.py``, tools from ``afm_trainer/verl_ext/tools.py``.

- The start model is ``MODEL``, else the latest complete checkpoint of the progressive
  recipe's final phase under ``SFT_DIR`` (default ``out/demo``, what ``make demo`` writes).
- Data is ``TRAIN_FILES``/``VAL_FILES`` (``data_preprocess/make_rl_data.py``), else the
  demo world's easy code tasks, written to ``OUT_DIR/data``.
- Re-running the same command resumes from the last checkpoint (verl's
  ``resume_mode=auto``); a finished run (``RL_COMPLETE``) is not run again, unless
  ``STEPS`` asks for more, which continues it.
- ``DRY_RUN=1`` prints the command, the configuration verl would run and the verdict of
  verl's own config validation, without starting anything.
- Multi-node: ``RAY_ADDRESS`` joins a running Ray cluster (``ray start --head`` on node 0,
  ``ray start --address=...`` on the others); ``NNODES`` nodes of NPROC devices each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

from afm_trainer.checkpoints import finalize, latest_complete
from afm_trainer.launch import (
    CONFIG_DIR, Launch, RecipeArgs, RecipeError, check_model, check_parquet_files, device_env, hydra_list,
    parse_recipe_args, run, visible_gpus,
)  # fmt: skip
from afm_trainer.metrics import METRICS_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPLETE_MARKER = "RL_COMPLETE"
# The embedded default trains the 4M demo model on the easy code tasks (the sandbox runs
# its solve(x) on tests): the SFT model samples a passing answer ~65% of the time, so
# most groups hold both right and wrong answers, while on the algorithmic tasks (~12%,
# nearly all from the yes/no types) most groups were all wrong and taught nothing.
# A learning rate far above grpo.yaml's 1e-6 (meant for pretrained billion-parameter
# models); groups of 8; two updates a step (mini-batches of 8 prompts), since rollouts
# cost most of a step on CPU; batches in the data's order, which make_rl_data.py
# interleaves by task type, so the reward curve is not the luck of each batch's draw.
EMBEDDED_OVERRIDES = ["actor_rollout_ref.actor.optim.lr=1e-4", "actor_rollout_ref.rollout.n=8",
                      "actor_rollout_ref.actor.ppo_mini_batch_size=8", "data.shuffle=false"]  # fmt: skip
FINAL_SFT_PHASE = "phase3_summary_prefix"
ALGOS = {
    # adv_estimator, group size: GRPO compares rollout.n answers to one prompt;
    # PPO's critic (GAE) gives each answer its own baseline.
    "grpo": ["algorithm.adv_estimator=grpo"],
    "ppo": ["algorithm.adv_estimator=gae", "actor_rollout_ref.rollout.n=1", "actor_rollout_ref.actor.use_kl_loss=false"],
}
RL_KEYS = {
    "MODEL": f"HF model folder to start from (default: latest checkpoint of SFT_DIR/{FINAL_SFT_PHASE})",
    "SFT_DIR": "OUT_DIR of the progressive recipe (default out/demo)",
    "TRAIN_FILES": "RL parquet from data_preprocess/make_rl_data.py (default: the demo world's easy code tasks)",
    "VAL_FILES": "RL parquet for validation",
    "CORPUS": "JSONL corpus for the search tool (default: the demo world's, under SFT_DIR)",
    "SEARCH_URL": "a running afm_trainer.tools.search_server, instead of CORPUS",
    "ALGO": "grpo (default) or ppo",
    "ROLLOUT": "rollout backend: vllm (default with GPUs) or hf (default without)",
    "STEPS": "training steps (trainer.total_training_steps, default 20)",
    "NNODES": "number of nodes (default 1)",
    "RAY_ADDRESS": "address of a running Ray cluster to join (multi-node)",
    "DRY_RUN": "1: print the command and the validated configuration without running",
}


def start_model(args: RecipeArgs) -> str:
    model = args.get("MODEL")
    if model:
        check_model(model)
        return os.path.abspath(model) if os.path.isdir(model) else model
    sft_dir = args.get("SFT_DIR", "out/demo")
    latest = latest_complete(os.path.join(sft_dir, FINAL_SFT_PHASE))
    if latest is None:
        raise RecipeError(f"no MODEL given and no complete checkpoint in {sft_dir}/{FINAL_SFT_PHASE} "
                          "(run `make demo` first, or pass MODEL=... / SFT_DIR=...)")  # fmt: skip
    return os.path.abspath(os.path.join(latest, "huggingface"))


def demo_data(args: RecipeArgs, dry_run: bool) -> tuple[str, str]:
    """The embedded default: the demo world's easy code tasks (difficulty 1-3), rewarded
    by running the model's solve(x) on tests in the sandbox. Validation is held out
    (seed 999, none of its examples in training); with the world `make demo` built,
    no training prompt shows a held-out algorithmic task either."""
    folder = os.path.join(os.path.abspath(args.out_dir), "data")
    train, val = os.path.join(folder, "train.parquet"), os.path.join(folder, "val.parquet")
    if not dry_run and not os.path.exists(val):
        world = os.path.join(args.get("SFT_DIR", "out/demo"), "embedded", "world")
        command = [sys.executable, os.path.join(REPO, "data_preprocess", "make_rl_data.py"), "--out", folder,
                   "--suite", "code", "--difficulties", "1,2,3"]  # fmt: skip
        subprocess.run(command + (["--world", world] if os.path.isdir(world) else []), check=True)
    return train, val


def tool_config(args: RecipeArgs, dry_run: bool) -> str | None:
    """OUT_DIR/tools.yaml for verl's tool agent loop: the search tool (over CORPUS or
    SEARCH_URL) and the code sandbox; None when there is nothing to search."""
    search = {"url": args.get("SEARCH_URL")} if args.get("SEARCH_URL") else None
    corpus = args.get("CORPUS") or os.path.join(args.get("SFT_DIR", "out/demo"), "embedded", "world", "world", "corpus.jsonl")
    if search is None and os.path.isfile(corpus):
        search = {"corpus": os.path.abspath(corpus)}
    elif search is None and args.get("CORPUS"):
        raise RecipeError(f"CORPUS file not found: {corpus}")
    if search is None:
        return None
    tools = [{"class_name": "afm_trainer.verl_ext.tools.SearchTool", "config": {"type": "native", "topk": 3, **search}},
             {"class_name": "afm_trainer.verl_ext.tools.SandboxTool", "config": {"type": "native", "timeout_s": 5}}]  # fmt: skip
    path = os.path.join(os.path.abspath(args.out_dir), "tools.yaml")
    if not dry_run:
        import yaml

        os.makedirs(args.out_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump({"tools": tools}, f)
        os.replace(path + ".tmp", path)
    return path


def build_rl(args: RecipeArgs, dry_run: bool = False) -> Launch:
    algo = args.get("ALGO", "grpo")
    if algo not in ALGOS:
        raise RecipeError(f"ALGO must be one of {', '.join(ALGOS)}, got {algo!r}")
    model = start_model(args)
    train, val = args.get("TRAIN_FILES"), args.get("VAL_FILES")
    embedded = not train
    if embedded:
        train, val = demo_data(args, dry_run)
    train_files = [os.path.abspath(f) for f in train.split(",") if f]
    val_files = [os.path.abspath(f) for f in (val or train).split(",") if f]
    if not dry_run or args.get("TRAIN_FILES"):
        check_parquet_files(train_files, "TRAIN_FILES", "prompt")
        check_parquet_files(val_files, "VAL_FILES", "prompt")

    gpus = visible_gpus()
    rollout = args.get("ROLLOUT", "vllm" if gpus else "hf")
    # A GPU configuration can be previewed anywhere (DRY_RUN ... ROLLOUT=vllm).
    device = "gpu" if gpus or rollout == "vllm" else "cpu"
    if device == "gpu" and not gpus and not dry_run:
        raise RecipeError("ROLLOUT=vllm needs GPUs and none are visible (use ROLLOUT=hf on CPU)")
    env = device_env(args.nproc, gpus) if gpus or device == "cpu" else {}
    nnodes = int(args.get("NNODES", "1"))
    out_dir = os.path.abspath(args.out_dir)
    env["VERL_FILE_LOGGER_PATH"] = os.path.join(out_dir, METRICS_FILE)
    argv = [
        sys.executable, "-m", "verl.trainer.main_ppo",
        f"--config-path={CONFIG_DIR}", "--config-name=grpo",
        f"rl_device={device}",
        f"actor_rollout_ref.model.path={model}",
        f"actor_rollout_ref.rollout.name={rollout}",
        f"data.train_files={hydra_list(train_files)}",
        f"data.val_files={hydra_list(val_files)}",
        f"trainer.default_local_dir={out_dir}",
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={args.nproc}",
        f"trainer.total_training_steps={args.get('STEPS', '20')}",
        # Ray workers see this through the runtime env, on this node or a joined cluster.
        f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={env['VERL_FILE_LOGGER_PATH']}",
        *(EMBEDDED_OVERRIDES if embedded else []),
        *ALGOS[algo],
    ]  # fmt: skip
    if algo == "ppo":
        argv.append(f"critic.model.path={model}")
    tools = tool_config(args, dry_run)
    if tools:
        argv.append(f"actor_rollout_ref.rollout.multi_turn.tool_config_path={tools}")
    if device == "cpu":
        argv.append(f"++ray_kwargs.ray_init.num_gpus={args.nproc * nnodes}")  # logical GPUs, one per rank
    if args.get("RAY_ADDRESS"):
        # Joining a cluster: its resources are the cluster's, not ours to declare.
        argv += [f"+ray_kwargs.ray_init.address={args.get('RAY_ADDRESS')}",
                 "++ray_kwargs.ray_init.num_cpus=null", "++ray_kwargs.ray_init.num_gpus=null"]  # fmt: skip
    argv += args.overrides
    return Launch(argv=argv, env=env, out_dir=args.out_dir)


def validated_config(launch: Launch) -> dict:
    """Compose the configuration exactly as main_ppo will and run verl's own checks on
    it (validate_config and the dataclass conversions of actor, rollout and critic)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    overrides = [a for a in launch.argv[launch.argv.index("--config-name=grpo") + 1 :]]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        config = compose(config_name="grpo", overrides=overrides)
    with warnings.catch_warnings():  # "critic disabled for GRPO" is the point, not news
        warnings.simplefilter("ignore")
        use_critic = need_critic(config)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=use_critic)
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    if use_critic:
        omega_conf_to_dataclass(config.critic)
    keep = {
        "algorithm.adv_estimator", "actor_rollout_ref.model.path", "actor_rollout_ref.rollout.name",
        "actor_rollout_ref.rollout.n", "actor_rollout_ref.rollout.tensor_model_parallel_size",
        "actor_rollout_ref.actor.strategy", "actor_rollout_ref.actor.optim.lr", "data.train_batch_size",
        "trainer.device", "trainer.nnodes", "trainer.n_gpus_per_node", "trainer.total_training_steps",
        "ray_kwargs.ray_init", "critic.enable",
    }  # fmt: skip
    summary = {key: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(config, key)}))["v"] for key in sorted(keep)}
    summary["critic (GAE)"] = use_critic
    return summary


def write_report(out_dir: str) -> dict:
    """OUT_DIR/report.md and reward_curve.png from verl's metrics: mean reward of the first
    and last five steps, and held-out accuracy (verl's validation, greedy) over training."""
    from afm_trainer.metrics import read_metrics

    metrics = read_metrics(out_dir)
    rewards = {step: m["critic/score/mean"] for step, m in metrics.items() if "critic/score/mean" in m}
    accuracy_keys = sorted({k for m in metrics.values() for k in m if k.startswith("val-aux/") and "/correct/mean@" in k})
    validation = {key: {step: m[key] for step, m in metrics.items() if key in m} for key in accuracy_keys}
    steps = list(rewards)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    summary = {"steps": len(steps), "reward_first5": mean([rewards[s] for s in steps[:5]]),
               "reward_last5": mean([rewards[s] for s in steps[-5:]]),
               "heldout_accuracy": {key.split("/")[1] + "/" + key.split("/")[2]: series for key, series in validation.items()}}  # fmt: skip
    lines = ["# afm-trainer RL run", "", "| | value |", "|---|---|", f"| steps | {len(steps)} |",
             f"| mean reward, first 5 steps | {summary['reward_first5']:.3f} |",
             f"| mean reward, last 5 steps | {summary['reward_last5']:.3f} |"]  # fmt: skip
    for source, series in summary["heldout_accuracy"].items():
        points = ", ".join(f"step {s}: {v:.1%}" for s, v in series.items())
        lines.append(f"| held-out accuracy {source} | {points} |")
    with open(os.path.join(out_dir, "report.md.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(out_dir, "report.md.tmp"), os.path.join(out_dir, "report.md"))
    print("\n".join(lines), flush=True)
    if steps:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, [rewards[s] for s in steps], "o-", label="mean reward (training rollouts)")
        for source, series in summary["heldout_accuracy"].items():
            ax.plot(list(series), list(series.values()), "s--", label=f"held-out accuracy {source}")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "reward_curve.png"), dpi=110)
    return summary


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_recipe_args(argv, RL_KEYS)
        dry_run = args.get("DRY_RUN", "0") not in ("0", "false")
        marker = os.path.join(args.out_dir, COMPLETE_MARKER)
        steps = int(args.get("STEPS", "20"))
        if os.path.exists(marker):
            with open(marker) as f:
                done = json.load(f).get("steps", 0)
            if done >= steps:
                print(f"[rl] complete ({args.out_dir}, {done} steps), skipping", flush=True)
                return 0
        launch = build_rl(args, dry_run)
        if dry_run:
            run(launch, "rl", dry_run=True)
            try:
                summary = validated_config(launch)
            except Exception as exc:  # verl's checks raise AssertionError/ValueError/...
                print(f"error: verl rejects this configuration: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 2
            print("[rl] configuration (accepted by verl's validation):")
            for key, value in summary.items():
                print(f"  {key} = {json.dumps(value)}")
            return 0
        code = run(launch, "rl", dry_run=False)
        finalize(args.out_dir)  # exports loadable by plain transformers, also those of an interrupted run
        if code == 0:
            write_report(args.out_dir)
            with open(marker + ".tmp", "w") as f:
                json.dump({"checkpoint": latest_complete(args.out_dir), "steps": steps}, f)
            os.replace(marker + ".tmp", marker)
        return code
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
