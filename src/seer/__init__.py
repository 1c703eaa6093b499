"""seer: make a language model explain itself (SEER, arXiv 2502.05242).

import seer
run = seer.train(seer.TrainConfig(data="concepts.csv", concept_column="label", output="runs/x"))
seer.evaluation.evaluate(run)
seer.Explainer.from_run(run).generate("...").top
"""

from seer.core.layers import get_layers
from seer.core.models import load_model
from seer.core.run import load_trained, read_run
from seer.errors import SeerError
from seer.evaluation.evaluate import evaluate
from seer.inference.explainer import Explainer, Explanation, Generation, Monitor
from seer.training.config import TrainConfig
from seer.training.train import train

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
