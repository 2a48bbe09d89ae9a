"""Everything afm-trainer plugs into verl. Importing this package registers it.

verl imports it in every process through the ``verl.plugins`` entry point (setup.py).
"""

from afm_trainer.models import attention  # noqa: F401  (registers attn_implementation="sdpa_varlen")
from afm_trainer.verl_ext import (
    cpu_engine,  # noqa: F401  (registers verl's FSDP engines for device "cpu")
    cpu_platform,  # noqa: F401  (registers the CPU platform)
    cpu_rollout,  # noqa: F401  (registers rollout.name=hf)
    tools,  # noqa: F401  (registers multi_turn.format=afm_tags)
)
