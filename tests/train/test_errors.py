"""Bad inputs end in one clear error: ValueError from the Python API, SystemExit with a message from the CLI."""
from __future__ import annotations

import json

import pytest

from normrnn.cli import main as cli_main
from normrnn.train import TrainConfig, train


def _tiny(text_file, out, **kw):
    return TrainConfig(**{**dict(task="charlm", data=str(text_file), hidden=8, batch_size=4, seq_len=10,
                                 max_steps=2, limit=2000, progress=False, out=str(out)), **kw})


@pytest.mark.parametrize("options,match", [
    (dict(task="translate"), "unknown task"),
    (dict(norm="group"), "unknown norm"),
    (dict(cell="tcn"), "unknown cell"),
    (dict(optimizer="lion"), "unknown optimizer"),
    (dict(schedule="linear"), "unknown schedule"),
    (dict(hidden=0), "hidden"),
    (dict(dropout=1.5), "dropout"),
    (dict(task="charlm", bidirectional=True), "bidirectional"),
    (dict(task="adding", data="shakespeare"), "generates its own data"),
])
def test_bad_config_raises_value_error(options, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**options)


def test_unknown_dataset_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset"):
        train(TrainConfig(task="charlm", data="no-such-corpus", progress=False))
    with pytest.raises(ValueError, match="not found"):
        train(TrainConfig(task="charlm", data=str(tmp_path / "missing.txt"), progress=False))
    with pytest.raises(ValueError, match="device"):
        train(TrainConfig(task="adding", device="tpu", progress=False))


def test_resume_without_checkpoint(text_file, tmp_path):
    with pytest.raises(ValueError, match="not a run directory"):
        train(_tiny(text_file, tmp_path / "nothing"), resume=True)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(_tiny(text_file, run).to_dict()))
    with pytest.raises(ValueError, match="does not exist"):
        train(_tiny(text_file, run), resume=True)
    (run / "checkpoint.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        train(_tiny(text_file, run), resume=True)


def test_incompatible_resume_and_overwrite(text_file, tmp_path):
    run = tmp_path / "run"
    train(_tiny(text_file, run))
    with pytest.raises(ValueError, match="incompatible resume.*hidden"):
        train(_tiny(text_file, run, hidden=16), resume=True)
    with pytest.raises(ValueError, match="already holds"):
        train(_tiny(text_file, run))  # a fresh run must not clobber a run's checkpoint


def test_cli_errors(text_file, tmp_path, capsys):
    def fails(*argv):
        with pytest.raises(SystemExit) as e:
            cli_main(["train", *argv])
        assert e.value.code not in (0, None)
        return str(e.value.code) + capsys.readouterr().err

    assert "invalid choice" in fails("--task", "translate")
    assert "unknown dataset" in fails("--data", "no-such-corpus", "--out", str(tmp_path / "a"))
    assert "not a run directory" in fails("--resume", str(tmp_path / "none"))
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(text_file), "--hidden", "8", "--batch-size", "4", "--seq-len", "10",
                     "--max-steps", "2", "--limit", "2000", "--no-progress", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "valid bpc " in out and "chars/s" in out
    assert "incompatible resume" in fails("--resume", str(run), "--norm", "batch")
    # options that do not change the computation may differ
    assert cli_main(["train", "--resume", str(run), "--max-steps", "3", "--no-progress"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
