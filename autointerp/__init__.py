"""autointerp: explain and score the latents of sparse autoencoders with LLM judges.

The Python API, for notebooks and scripts (the command line is a thin layer over it):

- `Run(out, **options)`: a run folder and the options of its stages; `.cache()`, `.explain()`,
  `.score()`, `.run()`, then `.results()` and `.judgments()` as pandas DataFrames, `.report()`,
  `.publish()`. Options are named as on the command line (`n_test=5` for `--n-test 5`).
- `RunConfig` and the settings it nests (`SamplingSettings`, `ExplainerSettings`...), and the
  settings each scorer owns (`ClassifierSettings`...): every setting, its default and its checks.
- `AutointerpError`: the base of every error about the user's input or environment.

The names are imported on first use, so `import autointerp` costs nothing: torch and the models load
only when a stage needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from autointerp.version import __version__

_EXPORTS = {
    "Run": "autointerp.api",
    "Outcome": "autointerp.api",
    "RunConfig": "autointerp.config",
    "CacheSettings": "autointerp.settings",
    "SamplingSettings": "autointerp.settings",
    "ExplainerSettings": "autointerp.settings",
    "ClassifierSettings": "autointerp.scorers.classify",
    "SimulationSettings": "autointerp.scorers.simulation",
    "InterventionSettings": "autointerp.scorers.intervention",
    "AutointerpError": "autointerp.errors",
    "ConfigError": "autointerp.errors",
}

__all__ = [
    "AutointerpError",
    "CacheSettings",
    "ClassifierSettings",
    "ConfigError",
    "ExplainerSettings",
    "InterventionSettings",
    "Outcome",
    "Run",
    "RunConfig",
    "SamplingSettings",
    "SimulationSettings",
    "__version__",
]

if TYPE_CHECKING:
    from autointerp.api import Outcome, Run
    from autointerp.config import RunConfig
    from autointerp.errors import AutointerpError, ConfigError
    from autointerp.scorers.classify import ClassifierSettings
    from autointerp.scorers.intervention import InterventionSettings
    from autointerp.scorers.simulation import SimulationSettings
    from autointerp.settings import CacheSettings, ExplainerSettings, SamplingSettings


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autointerp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
