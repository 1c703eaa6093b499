"""The readout (pure): one row normalization and cosine for arrays and tensors, calibrated
probabilities, `none` below the threshold, the position layout, the steering direction."""

import numpy as np
import pytest
import torch

from seer.errors import SeerError
from seer.readout import Readout, cosines, normalize_rows


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


def _copy_with_meta(src, dst, change):
    import json
    import shutil

    shutil.copytree(src, dst)
    meta = json.loads((dst / "seer.json").read_text())
    change(meta)
    (dst / "seer.json").write_text(json.dumps(meta))
    return dst


def test_the_run_records_its_readout_and_an_old_run_reads_the_same(trained_run, tmp_path):
    """seer.json names the readout's kind; a run written before it did (no 'readout' entry)
    gives the same readings; a kind or version this seer does not know is refused."""
    from seer.core.run import read_run
    from seer.readout import KIND, VERSION

    run = read_run(trained_run)
    assert run.meta["readout"] == {"kind": KIND, "version": VERSION}
    old = read_run(_copy_with_meta(trained_run, tmp_path / "old", lambda m: m.pop("readout")))
    x = torch.randn(5, run.prototypes.shape[1])
    new_reading, old_reading = Readout.from_run(run).read(x), Readout.from_run(old).read(x)
    np.testing.assert_array_equal(new_reading.cosines, old_reading.cosines)
    np.testing.assert_array_equal(new_reading.probabilities, old_reading.probabilities)
    assert new_reading.top == old_reading.top
    for entry, words in [
        ({"kind": "linear-probe", "version": 1}, "'linear-probe'"),
        ({"kind": KIND, "version": VERSION + 1}, f"version {VERSION + 1}"),
    ]:
        other = _copy_with_meta(
            trained_run, tmp_path / str(entry["version"]), lambda m, e=entry: m.update(readout=e)
        )
        with pytest.raises(SeerError, match=f"{words}.*upgrade seer"):
            Readout.from_run(read_run(other))


def test_read_array_is_the_float64_reading_of_the_same_rows():
    """Evaluation reads arrays in float64; the engine reads tensors in float32: same tops and
    rankings, cosines equal to float32 precision."""
    r = readout(threshold=0.75)
    x = np.array([[1.0, 0.2], [0.1, 1.0], [1.0, 1.0]])
    as_array, as_tensor = r.read_array(x), r.read(torch.tensor(x, dtype=torch.float32))
    assert as_array.cosines.dtype == np.float64
    np.testing.assert_allclose(as_array.cosines, as_tensor.cosines, rtol=1e-6)
    assert as_array.top == as_tensor.top == ["a", "b", "none"]
