"""Smoke test of the speed benchmark: it runs, writes parseable JSON and Markdown with one row per
configuration, and survives a configuration that raises. It asserts nothing about speed."""
from __future__ import annotations

import json
import math

import pytest
import torch

from normrnn.bench import speed as bench

TINY = ["--quick", "--shapes", "5x2x8", "--rounds", "2", "--warmup", "1", "--stream-steps", "5",
        "--stream-hidden", "8", "--threads", "1", "--no-memory", "--no-progress"]


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def _check_results(out, expected_names):
    data = json.loads((out / "speed.json").read_text())
    md = (out / "speed.md").read_text()
    names = [r["name"] for r in data["rows"]]
    assert names == expected_names
    for key in ("platform", "cpu_model", "cpu_count", "threads", "torch", "date"):
        assert key in data["machine"]
    for row in data["rows"]:
        assert row["label"] in md
        assert row["backend_used"]
        if row["error"]:
            continue
        for metric, entry in row["metrics"].items():
            assert _positive(entry["seconds"]["median"]), (row["name"], metric)
            if row["baseline"] is not None:
                assert _positive(entry["ratio"]["median"]), (row["name"], metric)
    return data, md


def test_quick_run_writes_json_and_markdown(tmp_path, capsys):
    threads = torch.get_num_threads()
    assert bench.main(TINY + ["--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads  # the benchmark restores the thread count
    expected = [c.name for c in bench.make_configs([(5, 2, 8)], 5, 8)]
    data, md = _check_results(tmp_path, expected)
    # per shape 1 + 4x2 LSTM + 1 + 2 GRU + 2 bf16 LSTM; streaming: 4 LSTM rows, (1 + 4 norms) x (GRU, RNN)
    assert len(expected) == 14 + 4 + 10
    # every row ran, normrnn's and the streaming rows included: a row that raises is a failed benchmark, and
    # _check_results checks the metrics only of rows without an error
    assert [(r["name"], r["error"]) for r in data["rows"] if r["error"] or r["status"] == "error"] == []
    streaming = [r for r in data["rows"] if r["kind"].startswith("stream:")]
    assert len(streaming) == 14 and all(r["metrics"] for r in streaming)
    assert {r["kind"] for r in streaming} >= {"stream:normrnn.GRU", "stream:nn.GRUCell", "stream:normrnn.RNN",
                                              "stream:nn.RNNCell"}
    assert data["settings"]["rounds"] == 2 and data["settings"]["memory"] is False
    for row in data["rows"]:  # normrnn rows say which backend ran (or was asked for)
        if "normrnn" in row["kind"] and row["error"] is None:
            assert row["backend_used"] != "torch"
    assert md == bench.markdown_table(data)
    assert md in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_cli_subcommand_and_failing_configuration(tmp_path, monkeypatch):
    from normrnn import cli

    real_build = bench.build

    def build(cfg, device, seed=0):
        if cfg.backend == "reference" and cfg.norm == "rms":
            raise RuntimeError("boom | on purpose")
        return real_build(cfg, device, seed)

    monkeypatch.setattr(bench, "build", build)
    assert cli.main(["bench", *TINY, "--stream-steps", "0", "--out", str(tmp_path)]) == 0
    expected = [c.name for c in bench.make_configs([(5, 2, 8)], 0)]
    data, md = _check_results(tmp_path, expected)
    broken = [r for r in data["rows"] if r["error"]]
    assert [r["name"] for r in broken] == ["5x2x8 LSTM norm=rms reference"]
    assert "boom" in broken[0]["error"] and broken[0]["status"] == "error"
    assert "error: RuntimeError: boom / on purpose" in md


def test_memory_of_one_configuration_in_a_subprocess():
    """A pass large enough that its saved activations (about 20 MiB) must show in the peak: the tensors autograd
    saves are all alive at the end of forward, so the peak above the RSS before the pass holds at least most of
    them (the allocator may reuse some freed pages, hence the half)."""
    T, N, H = 100, 32, 128
    cfg = bench.Config("m", "g", "normrnn.LSTM", T, N, H, norm="layer", backend="reference")
    result = bench.run_memory([cfg], "cpu", threads=1, progress=False)["m"]
    assert "error" not in result, result
    assert result["saved_bytes"] >= T * N * 4 * H * 4  # at least the gates' activations, float32
    if "VmHWM" in result["method"]:  # Linux: exact peak of the pass (elsewhere maxrss may under-count)
        assert result["peak_bytes"] >= 0.5 * result["saved_bytes"], result


def test_parse_shapes():
    assert bench.parse_shapes("100x32x256, 200x8x128") == [(100, 32, 256), (200, 8, 128)]
    with pytest.raises(Exception):
        bench.parse_shapes("100x32")


def test_only_keeps_the_matching_rows_and_their_baselines(tmp_path):
    configs = bench.make_configs([(5, 2, 8)], 5, 8)
    gru = bench.select_configs(configs, "gru.step")
    assert [c.label for c in gru] == ["nn.GRUCell"] + [f"GRU.step norm={n} auto" for n in bench.STREAM_NORMS]
    assert all(c.kind.startswith("stream:") for c in bench.select_configs(configs, "stream"))
    assert bench.select_configs(configs, None) == configs
    assert bench.main([*TINY, "--only", "rnn.step norm=layer", "--out", str(tmp_path)]) == 0
    data, _ = _check_results(tmp_path, ["stream 5x1x8 nn.RNNCell", "stream 5x1x8 RNN.step norm=layer auto"])
    assert [r["error"] for r in data["rows"]] == [None, None]
    assert bench.main([*TINY, "--only", "no such row", "--out", str(tmp_path)]) == 2


def test_cuda_rows_and_dry_run(capsys):
    """The CUDA benchmark's rows (FlashRNN's shape, cuDNN TF32 off, bf16 autocast against cuDNN fp16) and its
    --dry-run, which runs nothing and so works without a GPU."""
    configs = bench.make_configs(bench.CUDA_SHAPES, 10, 32, "cuda", ["fused"])
    names = {c.name for c in configs}
    assert "1024x16x768 nn.LSTM" in names and "1024x16x768 LSTM norm=layer fused" in names
    assert not any(c.backend == "reference" for c in configs)
    tf32_off = next(c for c in configs if c.name == "100x32x256 nn.LSTM cudnn-tf32-off")
    assert tf32_off.cudnn_tf32 is False and tf32_off.baseline == "100x32x256 nn.LSTM"
    amp = next(c for c in configs if c.name == "1024x16x768 LSTM norm=layer auto autocast-bf16")
    assert amp.autocast == "bfloat16" and amp.baseline == "1024x16x768 nn.LSTM fp16" and amp.targets == {"train": 2.0}
    assert not any(c.autocast or c.cudnn_tf32 is not None for c in bench.make_configs([(5, 2, 8)], 0, 8, "cpu"))
    assert bench.main(["--device", "cuda", "--backends", "fused", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1024x16x768 LSTM norm=layer auto autocast-bf16" in out and "cudnn_tf32=False" in out
    assert bench.main(["--backends", "cudnn", "--dry-run"]) == 2
