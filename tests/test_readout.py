"""The readout (pure): one row normalisation and cosine for arrays and tensors, calibrated
probabilities, `none` below the threshold, the position layout, the steering direction."""

import numpy as np
import pytest
import torch

from seer.errors import SeerError
from seer.inference.readout import Readout, cosines, normalize_rows


def test_normalize_rows_and_cosines_for_arrays_and_tensors():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e6, 0.0]])
    np.testing.assert_allclose(normalize_rows(x), [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-15)
    assert normalize_rows(x).dtype == np.float64
    t = normalize_rows(torch.tensor(x, dtype=torch.float64))
    assert t.dtype == torch.float32 and torch.allclose(
        t, torch.tensor([[0.6, 0.8], [0, 0], [1, 0]])
    )
    p = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(cosines(x, p), [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-15)


def readout(threshold=0.5, positions=("last",)):
    protos = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    if positions != ("last",):  # both: the 'last' block first, then 'user_end'
        protos = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    return Readout(["a", "b"], protos, positions, temperature=0.1, threshold=threshold)


def test_read_ranks_calibrates_and_says_none():
    r = readout(threshold=0.9)
    reading = r.read(r.vectors(torch.zeros(2), torch.tensor([[1.0, 0.2], [1.0, 1.0]])))
    assert reading.top == ["a", "none"]  # cos 0.98 vs 0.71 at most
    assert reading.probabilities.sum(axis=1) == pytest.approx([1, 1])
    expected = np.exp(reading.cosines[0] / 0.1) / np.exp(reading.cosines[0] / 0.1).sum()
    np.testing.assert_allclose(reading.probabilities[0], expected, rtol=1e-6)
    ranking = r.ranking(reading.cosines[0], reading.probabilities[0])
    assert [x["concept"] for x in ranking] == ["a", "b"]
    explanation = r.explanation(reading.cosines[1], reading.probabilities[1], "reply")
    assert explanation.top == "none" and explanation.reply == "reply"


def test_two_positions_and_the_steering_direction():
    r = readout(positions=("last", "user_end"))
    v = r.vectors(torch.tensor([0.0, 3.0]), torch.tensor([[5.0, 0.0]]))
    torch.testing.assert_close(v, torch.tensor([[1.0, 0.0, 0.0, 1.0]]) / 2**0.5)
    assert r.read(v).cosines[0] == pytest.approx([1.0, 0.0])
    assert r.hidden_size == 2
    torch.testing.assert_close(r.direction("b", "a"), torch.tensor([-1.0, 1.0]) / 2**0.5)
    with pytest.raises(SeerError, match="towards itself"):
        r.direction("a", "a")
    with pytest.raises(SeerError, match="not in this run"):
        r.direction("a", "c")
