"""How much of a concept the untrained model already carries: a linear probe per layer and
read position, before any SEER training.

SEER pulls a concept's representations together at one layer; it can sharpen a distinction
the model draws, not invent one. A logistic-regression probe on the base model's hidden
states (fit on a seeded stratified split of the concept data, scored on its held-out part:
the same split `seer train` makes with the same options) says how much there is to sharpen,
at every layer and at each read position separately.

    python studies/concept_probe.py --data ../shared/data/beavertails_binary.csv \\
        --exclude-prompts-from ../shared/data/beavertails_harmful.csv --max-per-concept 405

Prints, per position and layer, the probe's held-out accuracy and ROC AUC (two concepts) or
macro one-vs-rest AUC (more), and the share of the majority concept in the held-out part.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from seer.core.data import load_concepts, load_prompts
from seer.core.models import load_model
from seer.core.represent import representations
from seer.core.splits import split_examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--data", required=True)
    parser.add_argument("--concept-column", default="value")
    parser.add_argument("--exclude-prompts-from")
    parser.add_argument("--max-per-concept", type=int)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--positions", nargs="+", default=["last", "user_end"])
    parser.add_argument("--layers", type=int, nargs="+", help="default: every third block")
    parser.add_argument("--max-length", type=int, default=512)
    args = parser.parse_args()

    exclude = load_prompts(args.exclude_prompts_from) if args.exclude_prompts_from else ()
    examples = load_concepts(
        args.data,
        args.concept_column,
        max_per_concept=args.max_per_concept,
        seed=args.seed,
        exclude_prompts=exclude,
    )
    train, test = split_examples(examples, args.test_fraction, args.seed)
    y_train = np.array([ex["concept"] for ex in train])
    y_test = np.array([ex["concept"] for ex in test])
    model, tokenizer = load_model(args.model)
    n_layers = model.config.num_hidden_layers
    layers = args.layers or sorted({*range(1, n_layers, 3), n_layers - 1})
    majority = max(np.mean(y_test == c) for c in np.unique(y_test))
    print(
        f"{len(train)} training / {len(test)} held-out examples, concepts "
        f"{sorted(map(str, set(y_train)))}; majority share of held-out {majority:.3f}"
    )
    print(f"{'position':<10}{'layer':>6}{'accuracy':>10}{'AUC':>8}")
    started = time.time()
    for position in args.positions:
        kw = dict(positions=(position,), max_length=args.max_length)
        reps_train = representations(model, tokenizer, train, layers, **kw)
        reps_test = representations(model, tokenizer, test, layers, **kw)
        for layer in layers:
            mean = reps_train[layer].mean(0)
            probe = LogisticRegression(max_iter=2000).fit(reps_train[layer] - mean, y_train)
            proba = probe.predict_proba(reps_test[layer] - mean)
            accuracy = float(np.mean(probe.classes_[proba.argmax(1)] == y_test))
            if len(probe.classes_) == 2:
                auc = roc_auc_score(y_test == probe.classes_[1], proba[:, 1])
            else:
                auc = roc_auc_score(y_test, proba, multi_class="ovr", labels=probe.classes_)
            print(f"{position:<10}{layer:>6}{accuracy:>10.3f}{auc:>8.3f}", flush=True)
    print(f"seconds={time.time() - started:.0f}")


if __name__ == "__main__":
    main()
