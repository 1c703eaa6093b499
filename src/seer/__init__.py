"""seer: make a language model explain itself (SEER, arXiv 2502.05242).

import seer
run = seer.train(seer.TrainConfig(data="concepts.csv", concept_column="label", output="runs/x"))
seer.evaluation.evaluate(run)
seer.Explainer.from_run(run).generate("...").top
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

# The public names load on first use, so `import seer` (and the `seer` command's start-up,
# which must answer Ctrl-C in one line) does not import torch and transformers.
_WHERE = {
    "get_layers": "seer.core.architecture",
    "load_model": "seer.core.models",
    "load_trained": "seer.core.run",
    "read_run": "seer.core.run",
    "SeerError": "seer.errors",
    "evaluate": "seer.evaluation.evaluate",
    "Explainer": "seer.inference.explainer",
    "Explanation": "seer.inference.explainer",
    "Generation": "seer.inference.explainer",
    "Monitor": "seer.inference.explainer",
    "TrainConfig": "seer.training.config",
    "train": "seer.training.train",
}

if TYPE_CHECKING:
    from seer.core.architecture import get_layers
    from seer.core.models import load_model
    from seer.core.run import load_trained, read_run
    from seer.errors import SeerError
    from seer.evaluation.evaluate import evaluate
    from seer.inference.explainer import Explainer, Explanation, Generation, Monitor
    from seer.training.config import TrainConfig
    from seer.training.train import train


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'seer' has no attribute {name!r}")


__all__ = [
    "Explainer",
    "Explanation",
    "Generation",
    "Monitor",
    "SeerError",
    "TrainConfig",
    "evaluate",
    "get_layers",
    "load_model",
    "load_trained",
    "read_run",
    "train",
]

__version__ = "0.1.0"
