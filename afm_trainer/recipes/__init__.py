"""The recipes users run, each a small folder: ``main.py`` (parse -> build -> run ->
report) and, where it has its own, the Hydra ``config/`` next to it.

- ``sft``: supervised fine-tuning with verl's SFT trainer (``recipes/train_sft.sh``).
- ``progressive``: seed 002's three SFT phases, each from the last one's final checkpoint
  (``recipes/train_progressive.sh``).
- ``grpo``: RL with verl's PPO trainer, GRPO or PPO (``recipes/train_grpo.sh``).

``common`` holds what they share: the command line, input checks, launching verl.
With no model and no data, a recipe runs its embedded default from ``afm_trainer.demo``.
"""
