"""seer deletes or replaces only what carries its own mark (issue 40): a user's ``X.partial``,
an input of the running command, a file it did not write are never lost; a damaged checkpoint
is never resumed from silently; file-system faults are one line that names the cause."""

import contextlib
import importlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import refused, train_argv_of, write_concepts, write_retain

from seer import cli
from seer.core.folders import lock_path
from seer.core.run import last_checkpoint, partial_dir, read_run


def train_argv(model_dir: Path, output: Path, *extra: str, data: Path | None = None) -> list[str]:
    folder = output.parent
    data = data or folder / "concepts.jsonl"
    if not data.exists():
        write_concepts(data)
    retain = folder / "retain.jsonl"
    if not retain.exists():
        write_retain(retain)
    return train_argv_of(model_dir, data, retain, output, *extra, epochs=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, model_dir):
    folder = tmp_path_factory.mktemp("run")
    assert cli.main(train_argv(model_dir, folder / "run")) == 0
    return folder / "run"


# --- item 1: a refused command never deletes a .partial it did not make ------------------------


def test_a_refused_train_keeps_a_users_partial_folder(tmp_path, model_dir, capsys):
    out = tmp_path / "r" / "X"
    mine = partial_dir(out)
    mine.mkdir(parents=True)
    (mine / "thesis.txt").write_text("mine")
    assert "X.partial" in refused(train_argv(model_dir, out), capsys)
    assert (mine / "thesis.txt").read_text() == "mine"
    for flag in ("--overwrite", "--resume"):  # what the refusal advised
        assert "not written by seer" in refused(train_argv(model_dir, out, flag), capsys)
        assert (mine / "thesis.txt").read_text() == "mine"
    assert not out.exists() and not lock_path(out).exists()


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_refused_train_keeps_a_run_killed_before_its_first_checkpoint(
    tmp_path, model_dir, capsys, monkeypatch
):
    out = tmp_path / "X"
    train_module = importlib.import_module("seer.training.train")
    monkeypatch.setattr(train_module, "build_trainer", _interrupt)
    assert cli.main(train_argv(model_dir, out)) == 130
    monkeypatch.undo()
    partial = partial_dir(out)
    assert (partial / "config.json").is_file() and last_checkpoint(out) is None
    assert "--resume" in refused(train_argv(model_dir, out), capsys)
    assert (partial / "config.json").is_file()  # the run the refusal says to resume
    assert cli.main(train_argv(model_dir, out, "--resume")) == 0
    assert (out / "seer.json").is_file() and not partial.exists()


def test_overwrite_replaces_seers_own_partial(tmp_path, model_dir, monkeypatch):
    out = tmp_path / "X"
    train_module = importlib.import_module("seer.training.train")
    monkeypatch.setattr(train_module, "build_trainer", _interrupt)
    assert cli.main(train_argv(model_dir, out)) == 130
    monkeypatch.undo()
    assert cli.main(train_argv(model_dir, out, "--overwrite")) == 0
    assert (out / "seer.json").is_file() and not partial_dir(out).exists()


def test_export_keeps_a_users_partial_folder(tmp_path, run_dir, capsys, monkeypatch):
    out = tmp_path / "OUT"
    mine = partial_dir(out)
    mine.mkdir()
    (mine / "thesis.txt").write_text("mine")
    assert "not written by seer" in refused(["export", str(run_dir), str(out)], capsys)
    assert (mine / "thesis.txt").read_text() == "mine" and not out.exists()
    shutil.rmtree(mine)
    # a partial export left by a killed export is seer's own: the next export replaces it
    export_module = importlib.import_module("seer.inference.export")
    monkeypatch.setattr(export_module, "replace_folder", _interrupt)
    assert cli.main(["export", str(run_dir), str(out)]) == 130
    monkeypatch.undo()
    assert mine.is_dir()
    assert cli.main(["export", str(run_dir), str(out)]) == 0
    assert (out / "seer.json").is_file() and not mine.exists()


# --- item 2: --overwrite never destroys an input of the command --------------------------------


@pytest.mark.parametrize("flag", ["--data", "--retain-data"])
def test_overwrite_keeps_an_input_inside_the_output(tmp_path, model_dir, run_dir, capsys, flag):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    inside = out / "input.jsonl"
    (write_concepts if flag == "--data" else write_retain)(inside)
    argv = train_argv(model_dir, out, "--overwrite")
    argv[argv.index(flag) + 1] = str(inside)
    line = refused(argv, capsys)
    assert flag in line and "input" in line
    assert inside.is_file() and (out / "seer.json").is_file()


def test_overwrite_keeps_the_base_model(tmp_path, model_dir, run_dir, capsys):
    export = tmp_path / "E"
    assert cli.main(["export", str(run_dir), str(export)]) == 0
    before = sorted(p.name for p in export.iterdir())
    argv = train_argv(model_dir, tmp_path / "unused", "--overwrite")
    argv[argv.index("--model") + 1] = str(export)
    argv[argv.index("--output") + 1] = str(export)
    assert "--model" in refused(argv, capsys)
    assert sorted(p.name for p in export.iterdir()) == before


# --- item 3: an output file that seer did not write needs consent ------------------------------


def test_explain_html_never_replaces_a_file_seer_did_not_write(tmp_path, run_dir, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    meta = (run / "seer.json").read_text()
    data = write_concepts(tmp_path / "data.csv")
    argv = ["explain", str(run), "--prompt", "hi", "--max-new-tokens", "2"]
    for target in (run / "seer.json", data):
        before = target.read_bytes()
        assert "not a page seer wrote" in refused([*argv, "--html", str(target)], capsys)
        assert target.read_bytes() == before
    page = tmp_path / "page.html"
    assert cli.main([*argv, "--html", str(page)]) == 0
    assert cli.main([*argv, "--html", str(page)]) == 0  # its own page: replaced
    assert (run / "seer.json").read_text() == meta


# --- items 4 and 10: resume is exact, or says what it cannot restore ---------------------------


def _stopped_run(tmp_path: Path, model_dir: Path, monkeypatch, *extra: str) -> list[str]:
    """A run interrupted after its last step (checkpoints saved): its argv."""
    argv = train_argv(model_dir, tmp_path / "X", "--checkpoint-every", "1", *extra)
    train_module = importlib.import_module("seer.training.train")
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "fit_readout", _interrupt)
        assert cli.main(argv) == 130
    return argv


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "optimizer.pt": lambda p: p.unlink(),
    "adapter_model.safetensors": _truncate,
    "trainer_state.json": _truncate,
    "random optimizer.pt": lambda p: p.write_bytes(os.urandom(4096)),
}


def _damage(checkpoint: Path, case: str) -> str:
    name = case.split()[-1]
    DAMAGE[case](checkpoint / name)
    return name


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_in_one_line(
    tmp_path, model_dir, capsys, monkeypatch, case
):
    argv = _stopped_run(tmp_path, model_dir, monkeypatch)
    checkpoint = last_checkpoint(tmp_path / "X")
    name = _damage(checkpoint, case)
    line = refused([*argv, "--resume"], capsys)
    assert name in line and "--overwrite" in line
    assert partial_dir(tmp_path / "X").is_dir()  # nothing lost


@pytest.mark.parametrize("case", ["optimizer.pt", "trainer_state.json"])
def test_a_damaged_checkpoint_falls_back_to_the_one_before(
    tmp_path, model_dir, run_dir, capsys, monkeypatch, caplog, case
):
    argv = _stopped_run(tmp_path, model_dir, monkeypatch, "--save-total-limit", "2")
    newest = last_checkpoint(tmp_path / "X")
    name = _damage(newest, case)
    capsys.readouterr()
    assert cli.main([*argv, "--resume"]) == 0, capsys.readouterr().err
    assert f"{newest.name}" in caplog.text and name in caplog.text
    # exact: the same run as one never interrupted
    resumed, uninterrupted = read_run(tmp_path / "X"), read_run(run_dir)
    torch.testing.assert_close(resumed.prototypes, uninterrupted.prototypes, rtol=0, atol=0)


# --- item 13: a schedule too long to build is refused at once -----------------------------------


def test_a_huge_epoch_count_is_refused_at_once(tmp_path, model_dir, capsys):
    started = time.monotonic()
    assert "--epochs" in refused(
        [*train_argv(model_dir, tmp_path / "X"), "--epochs", "1e9"], capsys
    )
    assert time.monotonic() - started < 60
    assert not partial_dir(tmp_path / "X").exists()


# --- the file system: one line that names the cause -------------------------------------------


@pytest.mark.parametrize("output, words", [("/", "root of the file system"), (".", "--output")])
def test_an_output_without_a_folder_name_is_one_line(
    tmp_path, model_dir, capsys, monkeypatch, output, words
):
    monkeypatch.chdir(tmp_path)
    argv = train_argv(model_dir, tmp_path / "X")
    argv[argv.index("--output") + 1] = output
    assert words in refused(argv, capsys)


def test_pipes_and_link_loops_are_named(tmp_path, model_dir, capsys):
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    loop = tmp_path / "loop.csv"
    os.symlink(tmp_path / "loop2.csv", loop)
    os.symlink(loop, tmp_path / "loop2.csv")
    read, write = os.pipe()  # what `--data <(cat f)` passes: /dev/fd/N
    try:
        for path, words in (
            (fifo, "a pipe"),
            (loop, "links loop"),
            (f"/dev/fd/{read}", "a pipe"),
        ):
            argv = train_argv(model_dir, tmp_path / "X")
            argv[argv.index("--data") + 1] = str(path)
            line = refused(argv, capsys)
            assert words in line and "does not exist" not in line, line
    finally:
        os.close(read)
        os.close(write)


def test_a_missing_exclude_file_is_named(tmp_path, model_dir, capsys):
    argv = train_argv(model_dir, tmp_path / "X", "--exclude-prompts-from", "MISSING.csv")
    line = refused(argv, capsys)
    assert "--exclude-prompts-from" in line and "--data" not in line, line


def test_a_lock_from_another_host_is_never_taken_over(tmp_path, model_dir, capsys):
    out = tmp_path / "X"
    holder = {"pid": 1, "host": "another-host.example", "started": time.time() - 3600}
    lock_path(out).write_text(json.dumps(holder))
    old = time.time() - 3600
    os.utime(lock_path(out), (old, old))
    line = refused(train_argv(model_dir, out), capsys)
    assert "another-host.example" in line and lock_path(out).is_file()
    assert not out.exists() and not partial_dir(out).exists()


@contextlib.contextmanager
def tiny_filesystem(root: Path, size: str):
    """A real tmpfs of ``size`` at ``root`` (needs root; skipped otherwise)."""
    root.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=False)


def test_a_full_disk_is_one_line(tmp_path, model_dir, run_dir, capsys):
    with tiny_filesystem(tmp_path / "full", "100k") as full:
        line = refused(["export", str(run_dir), str(full / "E")], capsys)
        assert "no space left" in line.lower(), line
        assert list(full.iterdir()) == []  # nothing left behind
        write_concepts(full / "concepts.jsonl")
        write_retain(full / "retain.jsonl")
        filler = full / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as f:
            f.write(b"\0" * (100 * 1024 - 40 * 1024))
        argv = train_argv(model_dir, full / "X")
        line = refused(argv, capsys)
        assert "no space left" in line.lower(), line
        assert not (full / "X").exists() and not partial_dir(full / "X").exists()
        assert not lock_path(full / "X").exists()
