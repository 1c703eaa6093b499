"""seer: make a language model explain itself (SEER, arXiv 2502.05242).

import seer
run = seer.train(seer.TrainConfig(data="concepts.csv", concept_column="label", output="runs/x"))
seer.evaluate(run)
seer.Explainer.from_run(run).generate("...").top
"""

from seer.config import TrainConfig
from seer.errors import SeerError
from seer.evaluate import evaluate
from seer.explain import Explainer, Explanation, Generation, Monitor
from seer.layers import get_layers
from seer.models import load_model
from seer.run import load_trained, read_run
from seer.train import train

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
