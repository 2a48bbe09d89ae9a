"""Everything afm-trainer plugs into verl. Importing this package registers it.

verl imports it in every process through the ``verl.plugins`` entry point (setup.py).
"""

from afm_trainer.models import attention  # noqa: F401  (registers attn_implementation="sdpa_varlen")
from afm_trainer.verl_ext import (
    cpu_platform,  # registers the CPU platform
    cpu_rollout,  # noqa: F401  (registers rollout.name=hf)
    tools,  # noqa: F401  (registers multi_turn.format=afm_tags)
)

# Importing verl's engines selects the platform: only after the CPU platform is registered,
# and only where it is the one selected.
if cpu_platform.runs_here():
    from afm_trainer.verl_ext import cpu_engine  # noqa: F401  (registers verl's FSDP engines for device "cpu")
