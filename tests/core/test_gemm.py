"""The native kernels' GEMM paths (csrc/gemm.h): each computes the product, the measured choice is cached, read
back and invalidated, a path can be forced, and a planted fault in any path is caught."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import normrnn
from normrnn import fused
from native_support import require_native

pytestmark = pytest.mark.native

PATHS = ("plain", "packed", "onednn", "avx512")


@pytest.fixture
def native():
    """The kernels, with the GEMM choice reset to "auto" and a private cache file afterwards restored."""
    module = require_native()
    state = module.gemm_state()
    previous = module.set_gemm_path("auto")
    yield module
    module.set_gemm_fault("")
    module.set_gemm_path(previous)
    module.gemm_configure(state["file"], fused.native.gemm_header())


def available(module):
    return set(module.gemm_state()["available"])


def excess_error(out, a, b, add=None):
    """max |out - a b (+ add)| / bound, elementwise, with the exact product in float64 and the bound of any order
    of summation in out's precision: |fl(a b + add) - (a b + add)| <= gamma_(K+1) (|a| |b| + |add|), gamma_n =
    n u / (1 - n u), u the unit roundoff (Higham, Accuracy and Stability, 3.5). A result within rounding of the
    true product gives at most 1; a wrong operand, stride or flag gives errors of the order of the products."""
    u = torch.finfo(out.dtype).eps / 2
    K = a.shape[1] + (0 if add is None else 1)
    a64, b64 = a.double(), b.double()
    exact = a64 @ b64 + (0 if add is None else add.double())
    scale = a64.abs() @ b64.abs() + (0 if add is None else add.double().abs())
    gamma = K * u / (1 - K * u)
    # (float32 storage of the result: one more rounding, u |exact|; tiny floor for exact zeros)
    bound = gamma * scale + u * exact.abs() + 1e-300
    return ((out.double() - exact).abs() / bound).max().item()


def operands(M, K, N, dtype, b_trans, lda_pad, seed=0):
    g = torch.Generator().manual_seed(seed)
    a_full = torch.randn(M, K + lda_pad, generator=g, dtype=dtype)
    a = a_full[:, :K]  # rows lda = K + lda_pad apart, as a step's rows of a larger buffer
    b = torch.randn(N, K, generator=g, dtype=dtype).t() if b_trans else torch.randn(K, N, generator=g, dtype=dtype)
    add = torch.randn(M, N, generator=g, dtype=dtype)
    return a, b, add


# (M, K, N): a step's shapes (M = batch, K = H or 4H), ragged ones (rows not a multiple of 8, columns not of 32)
SHAPES = [(8, 128, 512), (32, 64, 256), (5, 40, 160), (13, 37, 50), (1, 16, 8), (70, 33, 96)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("step", [True, False], ids=["step", "mm"])
@pytest.mark.parametrize("b_trans", [True, False], ids=["Bt", "B"])
def test_each_path_computes_the_product_within_rounding(native, path, step, b_trans):
    """float32 on every path within the rounding bound of the float64 product (with and without the added term,
    with a's rows apart as in the loops); float64 (plain path) likewise, at float64's rounding."""
    if path not in available(native):
        pytest.skip(f"this torch has no {path} path")
    for M, K, N in SHAPES:
        for dtype in (torch.float32, torch.float64):
            a, b, add = operands(M, K, N, dtype, b_trans, lda_pad=3 if step else 0)
            if not step:
                a = a.contiguous()
            out, ran = native.gemm_product(a, b, None, path, step)
            expect = path if dtype == torch.float32 and (step or path != "packed") else "plain"
            assert ran == expect
            assert excess_error(out, a, b) <= 1, (path, M, K, N, dtype)
            out, _ = native.gemm_product(a, b, add, path, step)
            assert excess_error(out, a, b, add) <= 1, (path, M, K, N, dtype, "add")
            # and against at::mm on the same operands: two results within rounding of the same product
            mm = a @ b + add
            assert (out - mm).abs().max().item() <= 2 * excess_bound(a, b, add), (path, M, K, N, dtype)


def excess_bound(a, b, add):
    u = torch.finfo(a.dtype).eps / 2
    K = a.shape[1] + 1
    scale = a.double().abs() @ b.double().abs() + add.double().abs()
    return (K * u / (1 - K * u) * scale + u * scale).max().item()


@pytest.mark.parametrize("path", PATHS)
def test_large_product_with_transposed_left_operand(native, path):
    """The weight gradient's product (a = ds^T, a transposed view), accumulated into out, on each path that takes
    it (the engine's own kernel needs a's rows contiguous: it runs plain there)."""
    if path not in available(native):
        pytest.skip(f"this torch has no {path} path")
    g = torch.Generator().manual_seed(3)
    ds = torch.randn(300, 96, generator=g)
    h = torch.randn(300, 40, generator=g)
    acc = torch.randn(96, 40, generator=g)
    out, ran = native.gemm_product(ds.t(), h, acc, path, False)
    assert ran == (path if path in ("plain", "onednn") else "plain")
    assert excess_error(out, ds.t(), h, acc) <= 1
    target = acc.clone()
    native.mm_into(target, ds.t(), h, True)  # the binding the engine and Projection use
    assert excess_error(target, ds.t(), h, acc) <= 1


@pytest.mark.parametrize("path", PATHS)
def test_a_planted_wrong_leading_dimension_is_caught(native, path):
    """The check above is no formality: each path with its left operand read one element per row off (a wrong
    leading dimension) fails it, step and large product alike."""
    if path not in available(native):
        pytest.skip(f"this torch has no {path} path")
    a, b, add = operands(16, 64, 96, torch.float32, True, lda_pad=3)
    native.set_gemm_fault(path)
    try:
        out, ran = native.gemm_product(a, b, add, path, True)
        assert ran == path
        assert excess_error(out, a, b, add) > 100
        if path != "packed":
            a2 = a.contiguous()
            spare = torch.cat([a2, a2[:1]])  # (a row to spare in the storage: the fault reads past a's end)
            out, _ = native.gemm_product(spare[:-1], b, None, path, False)
            assert excess_error(out, a2, b) > 100
    finally:
        native.set_gemm_fault("")
    out, _ = native.gemm_product(a, b, add, path, True)
    assert excess_error(out, a, b, add) <= 1


@pytest.mark.parametrize("kind,terms", [("LSTM", "separate"), ("LSTM", "joint"), ("GRU", "separate"),
                                        ("GRU", "joint"), ("RNN", "joint")])
@pytest.mark.parametrize("norm", ["layer", "batch", "none"])
def test_every_path_runs_the_loops_as_accurately_as_plain(native, kind, terms, norm):
    """Whole loops (forward, backward, inference; both directions, padding) on each path, float32, against the
    same model in float64, so that no path can hide a wrong operand, transpose or accumulation flag.

    The float32 paths sum in different orders, and over 30 steps the norms amplify that rounding by a factor
    that depends on the data and the CPU's kernels. The plain path's error measures that amplification (on an
    AMD EPYC: 3e-5 relative with layer norm, 2e-2 with batch norm over the few rows of a padded batch), and
    another path's may be a multiple of it: which order rounds worse varies with the data (packed/plain from
    0.5x to 4.6x over seeds on an AMD EPYC). Bound: 8x the plain path's error plus 2e-3 of the result. On an
    AMD EPYC every path's error stays under a tenth of that in every case below, and the planted fault
    (set_gemm_fault: a leading dimension one too large) exceeds it 240 to 4000 times."""
    from rnn_helpers import make, native_results

    torch.manual_seed(2)
    first = make(kind, 24, 40, 2, norm=norm, norm_terms=terms, bidirectional=True, backend="fused")
    x = torch.randn(30, 6, 24)
    lengths = torch.tensor([30, 29, 17, 30, 2, 9])

    import copy

    exact = [e.float() for e in native_results(copy.deepcopy(first).double(), x.double(), lengths)]
    errors = {}
    for path in ("plain", *sorted(available(native) - {"plain"})):
        native.set_gemm_path(path)
        try:
            got = native_results(copy.deepcopy(first), x, lengths)  # (batch norm's running statistics move)
        finally:
            native.set_gemm_path("auto")
        errors[path] = [(p - e).norm().item() for p, e in zip(got, exact)]
    for path, errs in errors.items():
        for err, err_plain, e in zip(errs, errors["plain"], exact):
            assert err <= 8 * err_plain + 2e-3 * e.norm().item() + 1e-6, (path, err, err_plain)


def test_forcing_a_path(native):
    a, b, _ = operands(8, 32, 64, torch.float32, True, 0)
    for path in available(native):
        assert native.set_gemm_path(path) in ("auto", *PATHS)
        assert native.gemm_state()["forced"] == path
        _, ran = native.gemm_product(a, b, None, "auto", True)
        assert ran == path
    assert fused.native.set_gemm_path("auto") in PATHS
    with pytest.raises(Exception):
        native.set_gemm_path("fastest")


def _measured_class(native, tmp_path, header):
    native.gemm_configure(str(tmp_path / "choice.tsv"), header)
    a, b, _ = operands(8, 48, 64, torch.float32, True, 0)
    _, ran = native.gemm_product(a, b, None, "auto", True)
    return ran


def test_choice_is_measured_once_written_and_read_back(native, tmp_path):
    header = fused.native.gemm_header()
    ran = _measured_class(native, tmp_path, header)
    state = native.gemm_state()
    assert state["measured"] == 1 and state["read"] == 0
    (key, path), = state["chosen"].items()
    assert path == ran and key.startswith("step M<=8 K=48 N=64 Bt")
    assert set(state["timings_us"][key].replace("=", " ").split()[::2]) == available(native)
    lines = (tmp_path / "choice.tsv").read_text().splitlines()
    assert lines == [header, f"{key}\t{path}"]
    # A fresh start reads it: nothing measured. A path planted in the file is the one that runs.
    other = "plain" if path != "plain" else sorted(available(native))[-1]
    (tmp_path / "choice.tsv").write_text(f"{header}\n{key}\t{other}\n")
    native.gemm_configure(str(tmp_path / "choice.tsv"), header)
    a, b, _ = operands(8, 48, 64, torch.float32, True, 0)
    _, ran = native.gemm_product(a, b, None, "auto", True)
    assert ran == other
    assert native.gemm_state()["measured"] == 0 and native.gemm_state()["read"] == 1
    # a ragged batch of the same class (M=6 <= 8) reuses it
    _, ran = native.gemm_product(a[:6], b, None, "auto", True)
    assert ran == other and native.gemm_state()["measured"] == 0


@pytest.mark.parametrize("content", ["garbage\x00\xff", "{header}\nno tab here\n", "{header}\nstep M<=8\tfastest\n",
                                     "normrnn-gemm/1\tanother CPU\ttorch 0.1\tcores 2\n{key}\tplain\n", ""])
def test_a_corrupt_or_foreign_cache_file_is_measured_again(native, tmp_path, content):
    """Anything that does not parse, or that was measured on another CPU or torch (another header): measured again,
    no error, and the file rewritten valid."""
    header = fused.native.gemm_header()
    _measured_class(native, tmp_path, header)
    key = next(iter(native.gemm_state()["chosen"]))
    (tmp_path / "choice.tsv").write_bytes(content.format(header=header, key=key).encode("utf-8", "surrogateescape")
                                          if "\x00" not in content else content.encode("latin-1"))
    _measured_class(native, tmp_path, header)
    state = native.gemm_state()
    assert state["measured"] == 1 and state["read"] == 0
    lines = (tmp_path / "choice.tsv").read_text().splitlines()
    assert lines[0] == header and lines[1].startswith(key + "\t")


def test_an_unwritable_cache_folder_only_costs_the_measurement(native, tmp_path):
    native.gemm_configure(str(tmp_path / "missing" / "choice.tsv"), fused.native.gemm_header())
    a, b, _ = operands(8, 48, 64, torch.float32, True, 0)
    out, _ = native.gemm_product(a, b, None, "auto", True)
    assert excess_error(out, a, b) <= 1
    assert native.gemm_state()["measured"] == 1


def test_concurrent_first_use_in_the_loops_threads(native, tmp_path):
    """With two threads and no batch norm, each thread's row group builds its own step GEMM: both ask for the same
    shape class at once; one measures, the other waits for it, and the results are those of a forced path."""
    native.gemm_configure(str(tmp_path / "choice.tsv"), fused.native.gemm_header())
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        m = normrnn.LSTM(16, 32, norm="layer").eval()
        x = torch.randn(20, 8, 16)
        with torch.no_grad(), fused.force_engine("native"):
            out = m(x)[0]
            chosen = dict(native.gemm_state()["chosen"])
            native.set_gemm_path("plain")
            ref = m(x)[0]
    finally:
        torch.set_num_threads(previous)
        native.set_gemm_path("auto")
    assert any(k.startswith("step") for k in chosen)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_a_new_process_reads_the_choice_and_the_env_var_forces(tmp_path):
    """End to end through native.py: the first process measures into the cache file (NORMRNN_GEMM_CACHE here, next
    to the build by default), a second one reads it (measures nothing); NORMRNN_GEMM=plain forces the path."""
    require_native()
    code = ("import torch, normrnn, json; from normrnn.fused import native; m = normrnn.LSTM(8, 16, norm='layer');"
            "m(torch.randn(5, 3, 8))[0].sum().backward(); print(json.dumps(native.gemm_info()))")
    src = str(Path(normrnn.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""),
               NORMRNN_GEMM_CACHE=str(tmp_path / "choice.tsv"))  # (the real file's choices stay as they are)
    import json

    def run(extra=None):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, **(extra or {})), capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = run()
    assert first["measured"] >= 1 and first["file"] == str(tmp_path / "choice.tsv")
    second = run()
    assert second["measured"] == 0 and second["read"] == len(first["chosen"])
    assert second["chosen"] == first["chosen"]
    forced = run({"NORMRNN_GEMM": "plain"})
    assert forced["forced"] == "plain" and forced["measured"] == 0
