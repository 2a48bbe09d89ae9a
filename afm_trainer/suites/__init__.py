"""Task suites. A suite is one ``Suite`` object (base.py), registered once by name; data
building (afm_trainer.data.rl_data), the RL reward (afm_trainer.verl_ext.rewards),
evaluation (afm_trainer.eval) and the demo's reports all find it here.

Adding a suite is one module: build a ``Suite`` and ``register`` it (import the module
before use, as this file imports the built-in ones).
"""

from afm_trainer.suites import algorithmic, code, qa  # noqa: F401  (built-in suites register themselves)
from afm_trainer.suites.base import SUITES, EvalRun, RLDataRequest, Suite, get_suite, register, rl_row, suite_for_source

__all__ = ["SUITES", "EvalRun", "RLDataRequest", "Suite", "get_suite", "register", "rl_row", "suite_for_source"]
