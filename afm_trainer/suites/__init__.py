"""Task suites. A suite is one ``Suite`` object (base.py), registered once by name; data
building (afm_trainer.data.rl_data), the RL reward (afm_trainer.verl_ext.rewards),
evaluation (afm_trainer.eval) and the demo's reports all find it here.

Adding a suite is one module in this folder that builds a ``Suite`` and ``register``s it:
importing this package imports every module in it, so the suite is known everywhere
(a suite elsewhere is known once its module is imported).
"""

import importlib
import pkgutil

from afm_trainer.suites.base import SUITES, EvalRun, RLDataRequest, Suite, get_suite, register, rl_row, suite_for_source

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SUITES", "EvalRun", "RLDataRequest", "Suite", "get_suite", "register", "rl_row", "suite_for_source"]
