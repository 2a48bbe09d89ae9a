"""Supervised fine-tuning with verl's SFT trainer (FSDP2), on CPU or GPU unchanged.

    bash recipes/train_sft.sh NPROC OUT_DIR [KEY=VALUE ...] [hydra.overrides ...]
    python -m afm_trainer.recipes.sft.main NPROC OUT_DIR ...        (the same)

Runs verl's SFT trainer (``torchrun -m afm_trainer.verl_ext.sft_trainer``: verl's, with a
fix for resuming at an epoch boundary) with ``config/sft.yaml`` beside this file
(verl's SFT config plus the project's defaults; its ``device`` group, cpu or gpu, is
picked from what torch sees). Checkpoints: ``OUT_DIR/global_step_N/`` with an HF export
in ``huggingface/``; re-running the same command resumes.
"""

from __future__ import annotations

import os
from pathlib import Path

from afm_trainer.recipes.common import (
    LAUNCH_KEYS,
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
    torchrun_argv,
    visible_gpus,
)

CONFIG_DIR = Path(__file__).resolve().parent / "config"

KEYS = {
    "MODEL": "HF model folder (or hub id) to start from",
    "TRAIN_FILES": "parquet with a `messages` column: comma-separated files, folders of shards or globs",
    "VAL_FILES": "parquet for validation, as TRAIN_FILES (optional)",
    "CONFIG": f"Hydra config name in {CONFIG_DIR} (default: sft)",
    **LAUNCH_KEYS,
}


def build_sft(
    args: RecipeArgs,
    inputs_exist: bool = True,
    trainer: str = "afm_trainer.verl_ext.sft_trainer",
    config_dir: Path = CONFIG_DIR,
    columns: tuple[str, ...] | None = None,
) -> Launch:
    """Check an SFT run's arguments and build its torchrun command.

    ``inputs_exist=False`` (dry runs of multi-phase recipes) skips the checks of a model
    and data files that earlier steps have not produced yet. A trainer built on verl's
    SFT trainer (the preference recipe) passes its module, its config folder (its default
    config is the folder's name) and the columns its data needs."""
    model = args.get("MODEL")
    if not model:
        raise RecipeError("MODEL is not set (MODEL=path/to/hf_model)")
    if inputs_exist:
        check_model(model)
    train_files = data_files(args.get("TRAIN_FILES"))
    if not train_files:
        raise RecipeError("TRAIN_FILES is not set (TRAIN_FILES=train.parquet[,more.parquet])")
    val_files = data_files(args.get("VAL_FILES"))
    custom_cls = override_value(args.overrides, "data.custom_cls.path")  # None: AgentSFTDataset, "null": verl's
    if columns is None:
        columns = (
            ((override_value(args.overrides, "data.messages_key") or "messages"),)
            if custom_cls in (None, "null")
            else ()
        )
    if inputs_exist:
        check_parquet_files(train_files, "TRAIN_FILES", columns, verls_dataset=custom_cls == "null")
        check_parquet_files(val_files, "VAL_FILES", columns, verls_dataset=custom_cls == "null")

    gpus = visible_gpus()
    config = args.get("CONFIG", config_dir.parent.name)
    if not (config_dir / f"{config}.yaml").is_file():
        raise RecipeError(f"CONFIG {config} not found in {config_dir}")
    argv, nnodes = torchrun_argv(args)
    argv += [
        "-m",
        trainer,
        f"--config-path={config_dir}",
        f"--config-name={config}",
        f"model.path={hydra_value(model_path(model), 'MODEL')}",
        f"data.train_files={hydra_list(train_files, 'TRAIN_FILES')}",
        f"data.val_files={hydra_list(val_files, 'VAL_FILES') if val_files else 'null'}",
        f"trainer.default_local_dir={hydra_value(os.path.abspath(args.out_dir), 'OUT_DIR')}",
        f"trainer.nnodes={nnodes}",
        f"trainer.n_gpus_per_node={args.nproc}",
    ]
    if override_value(args.overrides, "device") is None:  # the user may force device=cpu|gpu
        argv.append(f"device={'gpu' if gpus else 'cpu'}")
    if not val_files:
        argv.append("trainer.test_freq=-1")
    argv += args.overrides
    node_rank = args.integer("NODE_RANK", 0)
    env = {**device_env(args.nproc, gpus), **logger_env(args.out_dir), **scratch_env(args.out_dir, node_rank)}
    return Launch(argv=argv, env=env, out_dir=args.out_dir, node_rank=node_rank)


def main(argv: list[str] | None = None) -> int:
    return recipe_main(lambda args: run(build_sft(args), "sft", args.dry_run), argv, KEYS)


if __name__ == "__main__":
    raise SystemExit(main())
