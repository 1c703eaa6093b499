"""The subcommands: parsers generated from their config dataclasses, help texts, and the
option checks that must run before a model is loaded or anything is written."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from dataclasses import dataclass, fields
from typing import Literal

import pytest
from conftest import BENIGN, HARMFUL, needs_minilm, tiny_llama
from hypothesis import given, settings
from hypothesis import strategies as st

from seer import cli
from seer.commands.options import add_arguments, from_namespace
from seer.core.fields import option
from seer.training.config import TrainConfig

SUBCOMMANDS = ("train", "evaluate", "explain", "export", "detox-eval")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def _error(status_and_err: tuple[int, str]) -> str:
    status, err = status_and_err
    assert status == 2 and "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("seer: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    status = cli.main(argv)
    return status, capsys.readouterr().err


# --- help ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_shows_every_default_and_the_global_flags(name, capsys):
    parser = _subparsers()[name]
    for action in _options(parser):
        if action.dest in ("debug", "quiet"):
            continue
        assert "(default: " in (action.help or ""), f"seer {name} {action.option_strings[0]}"
    with pytest.raises(SystemExit):
        cli.main([name, "--help"])
    text = capsys.readouterr().out
    assert "--debug" in text and "--quiet" in text


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_help_texts_quote_no_figures(name):
    """Measured figures go stale: help texts point at docs/results.md instead."""
    figure = re.compile(r"\d+\.\d+|\d+e-\d+|%|\bpoints\b|\+\d+")
    for action in _options(_subparsers()[name]):
        text = (action.help or "").split(" (default: ")[0]
        assert not figure.search(text), f"seer {name} {action.option_strings[0]}: {text}"


def test_train_help_lists_choices_and_constraints():
    options = {a.dest: a for a in _options(_subparsers()["train"])}
    assert list(options["objective"].choices) == ["paper", "supcon"]
    assert set(options["positions"].choices) == {"last", "user_end", "mean"}
    assert re.search(r"supcon.*2 or more|2 or more.*supcon", options["batch_size"].help)
    assert "'text'" in options["retain_data"].help


def test_detox_eval_help_shows_the_data_paths():
    options = {a.dest: a for a in _options(_subparsers()["detox-eval"])}
    for dest, name in (
        ("harmful", "beavertails_harmful.csv"),
        ("xstest", "xstest_v2_prompts.csv"),
        ("judge_data", "beavertails_binary.csv"),
    ):
        assert name in options[dest].help


# --- the parser generator ------------------------------------------------------------------
@dataclass
class Sample:
    path: str = option(help="a positional")
    modes: list[Literal["a", "b"]] = option(["a"], "modes")
    size: int | None = option(None, "optional size")
    probs: tuple[float, float] = option((0.5, 0.5), "two numbers")
    names: tuple[str, ...] = option(("x",), "names")
    flag: bool = option(False, "a flag, 100%% sure")


def _parse(cls: type, argv: list[str]):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return from_namespace(cls, parser.parse_args(argv))


def test_parser_maps_types_from_annotations():
    got = _parse(Sample, ["p", "--modes", "b", "a", "--size", "3", "--probs", "0.1", "0.9"])
    assert got == Sample("p", ["b", "a"], 3, (0.1, 0.9), ("x",), False)
    got = _parse(Sample, ["p", "--names", "u", "v", "--flag"])
    assert got.names == ("u", "v") and got.flag and got.size is None and got.modes == ["a"]
    assert _parse(Sample, ["p", "--no-flag"]).flag is False
    with pytest.raises(SystemExit):
        _parse(Sample, ["p", "--modes", "c"])  # not a choice
    with pytest.raises(SystemExit):
        _parse(Sample, ["p", "--probs", "0.1"])  # exactly two


def test_parser_refuses_a_type_it_cannot_map():
    @dataclass
    class Bad:
        table: dict = option({}, "no command-line form")

    with pytest.raises(TypeError, match="Bad.table"):
        add_arguments(argparse.ArgumentParser(), Bad)


def test_every_train_config_field_is_an_option():
    """A field added to TrainConfig gets its option with no change to the CLI."""
    options = {a.dest for a in _options(_subparsers()["train"])}
    assert {f.name for f in fields(TrainConfig)} <= options

    @dataclass
    class Extended(TrainConfig):
        new_knob: int = option(7, "a field added later")

    got = _parse(Extended, ["--new-knob", "9", "--epochs", "3"])
    assert got.new_knob == 9 and got.epochs == 3 and isinstance(got, TrainConfig)


# --- checks before anything runs -----------------------------------------------------------
@pytest.mark.parametrize("limit", ["0", "-1"])
def test_detox_eval_refuses_a_limit_below_one(tmp_path, limit, capsys):
    line = _error(_run(["detox-eval", str(tmp_path / "run"), "--limit", limit], capsys))
    assert "--limit" in line and limit in line


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "RUN", "--prompt", "hi", "--threshold", "0.9"],
        ["explain", "RUN", "--prompt", "hi", "--reply-end"],
        ["detox-eval", "RUN", "--threshold", "0.9"],
    ],
)
def test_monitor_options_without_a_monitor_are_refused(tmp_path, argv, capsys):
    argv = [str(tmp_path / "run") if a == "RUN" else a for a in argv]
    line = _error(_run(argv, capsys))
    assert "--monitor" in line and "no effect" in line


def _csv(path, header, rows) -> str:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def detox_inputs(tmp_path, trained_run, tokenizer, monkeypatch):
    """A copy of the tiny run, the tiny model in place of its base, and small BT, XSTest and
    judge files."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    monkeypatch.setattr(
        "seer.core.models.load_model", lambda *a, **k: (tiny_llama(len(tokenizer)), tokenizer)
    )
    bt = _csv(tmp_path / "bt.csv", ["prompt"], [[p] for p, _ in HARMFUL[:5]])
    xst = _csv(tmp_path / "xst.csv", ["prompt"], [[f"how do I kill process {i}"] for i in range(4)])
    rows = [[p, r, False] for p, r in HARMFUL] + [[p, r, True] for p, r in BENIGN]
    judge = _csv(tmp_path / "judge.csv", ["prompt", "response", "is_safe"], rows)
    argv = ["detox-eval", str(run), "--harmful", bt, "--xstest", xst, "--judge-data", judge]
    return run, argv


def test_detox_eval_refuses_judge_data_with_the_wrong_columns(detox_inputs, tmp_path, capsys):
    run, argv = detox_inputs
    bad = _csv(tmp_path / "bad.csv", ["prompt", "answer", "label"], [["q", "a", "1"]])
    at = argv.index("--judge-data") + 1
    line = _error(_run([*argv[:at], bad, *argv[at + 1 :]], capsys))
    assert "is_safe" in line and "bad.csv" in line
    assert not (run / "detox").exists()


@pytest.mark.parametrize("option_name", ["--harmful", "--xstest", "--judge-data"])
def test_detox_eval_checks_its_data_before_writing(detox_inputs, tmp_path, option_name, capsys):
    run, argv = detox_inputs
    at = argv.index(option_name) + 1
    missing = str(tmp_path / "missing.csv")
    line = _error(_run([*argv[:at], missing, *argv[at + 1 :]], capsys))
    assert "missing.csv" in line and option_name in line
    assert not (run / "detox").exists()


@needs_minilm
def test_detox_eval_skip_base_refuses_a_base_made_with_other_settings(detox_inputs, capsys):
    run, argv = detox_inputs
    argv += ["--limit", "3", "--max-new-tokens", "2"]
    assert cli.main(argv) == 0
    base = json.loads((run / "detox" / "base.json").read_text())
    assert base["refusal_rule"] == base["settings"]["refusal_rule"] == "strict"
    capsys.readouterr()
    for changed, word in (
        (["--max-new-tokens", "3"], "--max-new-tokens"),
        (["--seed", "1"], "prompts"),
        (["--refusal-rule", "paper"], "--refusal-rule"),  # the base scores count refusals
    ):
        line = _error(_run([*argv, "--skip-base", *changed], capsys))
        assert word in line and "--skip-base" in line
    # The same settings reuse it; a base.json that does not say its settings is refused.
    assert cli.main([*argv, "--skip-base"]) == 0
    # one written before --refusal-rule was recorded counted with the strict rule
    older = {**base, "settings": {k: v for k, v in base["settings"].items() if k != "refusal_rule"}}
    (run / "detox" / "base.json").write_text(json.dumps(older))
    assert cli.main([*argv, "--skip-base"]) == 0
    capsys.readouterr()
    assert _error(_run([*argv, "--skip-base", "--refusal-rule", "paper"], capsys))
    del base["settings"]
    (run / "detox" / "base.json").write_text(json.dumps(base))
    capsys.readouterr()
    line = _error(_run([*argv, "--skip-base"], capsys))
    assert "base.json" in line and "--skip-base" in line


# --- shared helpers ------------------------------------------------------------------------
def test_length_batches_sort_stably_and_unbatch_restores_order():
    import numpy as np

    from seer.core.batching import length_batches, unbatch

    lengths = [3, 1, 3, 2, 1]
    assert length_batches(lengths, 2) == [[1, 4], [3, 0], [2]]
    assert length_batches(lengths, 3, longest_first=True) == [[0, 2, 3], [1, 4]]
    batches = length_batches(lengths, 2)
    chunks = [np.array([[float(i)] for i in b]) for b in batches]  # each row: its position
    assert unbatch(chunks, batches)[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_group_by_concept_sorts_concepts_and_keeps_item_order():
    from seer.core.splits import group_by_concept

    assert group_by_concept(["b", "a", "b", "c", "a"]) == {"a": [1, 4], "b": [0, 2], "c": [3]}


def test_replacing_a_file_is_all_or_nothing(tmp_path):
    from seer.core.files import replacing, write_text_atomic

    path = write_text_atomic(tmp_path / "a" / "f.json", "old")
    with pytest.raises(RuntimeError), replacing(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in path.parent.iterdir()] == ["f.json"]
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and len(list(path.parent.iterdir())) == 1


VALUES = ["0", "-1", "1", "0.5", "nan", "inf", "-inf", "1e309", "", " ", "x", "\u00e9", "--", "3"]
OPTIONS = {
    "explain": ["--prompt", "--response", "--file", "--max-new-tokens", "--monitor", "--concept",
                "--threshold", "--towards", "--steer-scale", "--watch-tokens", "--refusal"],
    "detox-eval": ["--limit", "--seed", "--max-new-tokens", "--monitor", "--threshold",
                   "--steer-scale", "--watch-tokens", "--target", "--harmful", "--unsafe-concept"],
    "evaluate": ["--generations"],
}  # fmt: skip
FLAGS = ["--reply-end", "--skip-base", "--json", "--trace", "--no-sweep", "--quiet"]


@settings(max_examples=150, deadline=None)
@given(
    command=st.sampled_from(sorted(OPTIONS)),
    picks=st.lists(
        st.tuples(st.integers(0, 20), st.lists(st.sampled_from(VALUES), max_size=3)), max_size=5
    ),
    flags=st.lists(st.sampled_from(FLAGS), max_size=2),
)
def test_bad_option_values_give_one_line_errors(tmp_path_factory, command, picks, flags):
    """Whatever the values, a command on a missing run exits 2 with one `seer: error:` line
    (argparse's own usage errors exit 2 too), never a traceback, and writes nothing."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("bad")
    argv = [command, str(root / "run")]
    names = OPTIONS[command]
    for k, values in picks:
        argv += [names[k % len(names)], *values]
    argv += flags
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as exc:  # argparse: a usage error
            status = exc.code
    assert status == 2, (argv, err.getvalue())
    assert "Traceback" not in err.getvalue()
    assert list(root.iterdir()) == []


@needs_minilm
def test_detox_eval_retrains_a_cached_judge_when_its_data_changes(detox_inputs, tmp_path):
    run, argv = detox_inputs
    argv += ["--limit", "2", "--max-new-tokens", "1"]
    assert cli.main(argv) == 0
    first = json.loads((run / "detox" / "judge.json").read_text())["n_train"]
    rows = [[p, r, False] for p, r in HARMFUL[5:]] + [[p, r, True] for p, r in BENIGN[:7]]
    fewer = _csv(tmp_path / "fewer.csv", ["prompt", "response", "is_safe"], rows)
    at = argv.index("--judge-data") + 1
    assert cli.main([*argv[:at], fewer, *argv[at + 1 :]]) == 0
    assert json.loads((run / "detox" / "judge.json").read_text())["n_train"] < first
