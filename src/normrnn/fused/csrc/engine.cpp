// The native engine: the fused time loop of normrnn's LSTM, GRU and Elman RNN cells, forward and backward, on the
// CPU, behind the engine contract of normrnn/fused/contract.py (bindings at the end of this file).
//
// normrnn/fused/torch_engine.py is the readable specification of the same loops, with the same saved state;
// the tests hold the two (and the reference loop) against each other. Per time step: one GEMM for the
// recurrent term into a preallocated buffer, then one pass over the batch rows that does norm + gates + cell
// update (parallel over rows). Batch norm needs statistics across rows, so it adds a column pass before the
// row pass. Backward mirrors it; it sums the bias and gain gradients step by step and reduces dW_hh a block of
// steps at a time, so that its only buffer as long as the sequence is the input term's gradient.
//
// Norm kinds: 0 none, 1 layer, 2 rms, 3 batch (batch statistics), 4 batch with given per-step statistics.
//
// Contents, in reading order:
//   row_kernels.h   norm kinds, activations, row and column norms, the cell kernels of one step
//   gemm.h          the GEMM paths (MKL packed, oneDNN, at::mm_out), chosen per machine by measurement
//   loop.h          shared by the time loops: per-step gradient sums, the ds ring for dW_hh, row groups, states
//   reduce.h        synchronised batch norm: per-step sums over the ranks through the loop's reducer
//   lstm.h          the LSTM loop
//   gru.h           the GRU loops: separate terms, joint terms
//   elman.h         the Elman RNN loop
//   stream.h        one LSTM step for inference and streaming; a whole stack's step in one call (LSTM, and
//                   GRU / Elman RNN with their own small-batch products)
//   norm_passes.h   the input term's norms over all steps: RMSNorm rows, inference norm, running averages,
//                   batch norm over steps
//   engine.cpp      (below) the bindings: the contract's (out, state, stats, saved) per loop

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <cstdlib>
#include <limits>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

#include "row_kernels.h"
#include "gemm.h"
#include "pool.h"
#include "loop.h"
#include "reduce.h"
#include "lstm.h"
#include "gru.h"
#include "elman.h"
#include "stream.h"
#include "norm_passes.h"

}  // namespace

// =========================================================================================== bindings
// The engine contract of normrnn/fused/contract.py. A training forward returns (out, state, stats, saved): the
// outputs (T, N, H); the final state [h_n] or [h_n, c_n], each (N, H); the batch statistics of each norm of the
// loop, [mean (T, F), var (T, F), count (T)] per norm (empty tensors unless the norm computes batch statistics);
// and `saved`, what the matching backward reads, in the order of its impl's arguments. Python keeps `saved` with
// the autograd node and hands it back unread. An inference forward returns (out, state, stats): it keeps one
// step's buffers and saves nothing. The last argument of every loop's binding, forward and backward, is the loop's
// reducer (synchronised batch norm, reduce.h) or None.

#define NORMRNN_DISPATCH(x, name, call) \
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), name, [&] { return call; })

using Tensors = std::vector<at::Tensor>;
using Trained = std::tuple<at::Tensor, Tensors, Tensors, Tensors>;
using Inferred = std::tuple<at::Tensor, Tensors, Tensors>;

at::Tensor last_state(const at::Tensor& all, bool copy) {
  auto last = all.select(0, all.size(0) - 1);
  return copy ? last.clone() : last;  // (a training call's states stay saved for backward: the user gets a copy)
}

Tensors slots(const Tensors& r, size_t from) { return Tensors(r.begin() + from, r.end()); }

// LSTM. impl: out, h_all, c_all, acts, shat, rstd_h, chat, rstd_c | mean_h, var_h, count_h, mean_c, var_c, count_c
Tensors lstm_run(at::Tensor xa, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h,
                 at::Tensor gamma_c, at::Tensor beta_c, at::Tensor mask, at::Tensor fmh, at::Tensor fvh,
                 at::Tensor fmc, at::Tensor fvc, int64_t kind_h, int64_t kind_c, bool joint, bool carry, double eps,
                 bool keep, const Reducer& reduce) {
  return NORMRNN_DISPATCH(xa, "lstm_forward",
      lstm_forward_impl<scalar_t>(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc,
                                  kind_h, kind_c, joint, carry, eps, keep, reduce));
}

Trained lstm_forward(at::Tensor xa, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, at::Tensor bias,
                     at::Tensor gamma_h, at::Tensor gamma_c, at::Tensor beta_c, at::Tensor mask, at::Tensor fmh,
                     at::Tensor fvh, at::Tensor fmc, at::Tensor fvc, int64_t kind_h, int64_t kind_c, bool joint,
                     bool carry, double eps, py::object reduce) {
  const auto r = lstm_run(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc, kind_h, kind_c,
                          joint, carry, eps, true, Reducer(reduce));
  // Backward renormalizes the cell with the column means the batch kinds used; fmc may view the running
  // statistics, which a later training call updates in place: a copy.
  const at::Tensor mean_c_used = kind_c == BATCH ? r[11] : fmc.clone();
  return {r[0], {last_state(r[1], true), last_state(r[2], true)}, slots(r, 8),
          {w_hh, gamma_h, gamma_c, beta_c, mask, r[1], r[2], r[3], r[4], r[5], r[6], r[7], mean_c_used, r[10],
           r[13]}};
}

Inferred lstm_infer(at::Tensor xa, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, at::Tensor bias,
                    at::Tensor gamma_h, at::Tensor gamma_c, at::Tensor beta_c, at::Tensor mask, at::Tensor fmh,
                    at::Tensor fvh, at::Tensor fmc, at::Tensor fvc, int64_t kind_h, int64_t kind_c, bool joint,
                    bool carry, double eps, py::object reduce) {
  const auto r = lstm_run(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc, kind_h, kind_c,
                          joint, carry, eps, false, Reducer(reduce));
  return {r[0], {last_state(r[1], false), last_state(r[2], false)}, slots(r, 8)};
}

Tensors lstm_backward(at::Tensor dout, at::Tensor dhT, at::Tensor dcT, Tensors s, int64_t kind_h, int64_t kind_c,
                      bool joint, bool carry, py::object reduce) {
  TORCH_CHECK(s.size() == 15, "lstm_backward: the saved state of lstm_forward");
  return NORMRNN_DISPATCH(s[7], "lstm_backward",
      lstm_backward_impl<scalar_t>(dout, dhT, dcT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                                   s[11], s[12], s[13], s[14], kind_h, kind_c, joint, carry, Reducer(reduce)));
}

// GRU, separate terms. impl: out, h_all, acts, rec_n, shat, rstd_h | mean_h, var_h, count_h
Tensors gru_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps, bool keep,
                const Reducer& reduce) {
  return NORMRNN_DISPATCH(xa, "gru_forward",
      gru_forward_impl<scalar_t>(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, keep, reduce));
}

Trained gru_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                    at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps, py::object reduce) {
  const auto r = gru_run(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, true, Reducer(reduce));
  return {r[0], {last_state(r[1], true)}, slots(r, 6), {w_hh, gamma_h, mask, r[1], r[2], r[3], r[4], r[5], r[8]}};
}

Inferred gru_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                   at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps, py::object reduce) {
  const auto r = gru_run(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, false, Reducer(reduce));
  return {r[0], {last_state(r[1], false)}, slots(r, 6)};
}

Tensors gru_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_h, py::object reduce) {
  TORCH_CHECK(s.size() == 9, "gru_backward: the saved state of gru_forward");
  return NORMRNN_DISPATCH(s[4], "gru_backward",
      gru_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], kind_h,
                                  Reducer(reduce)));
}

// GRU, joint terms. impl: out, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n | mean_g, var_g, count_g, mean_n,
// var_n, count_n
Tensors gru_joint_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                      at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                      at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps, bool keep,
                      const Reducer& reduce) {
  return NORMRNN_DISPATCH(xa, "gru_joint_forward",
      gru_joint_forward_impl<scalar_t>(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn,
                                       kind_g, kind_n, eps, keep, reduce));
}

Trained gru_joint_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                          at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                          at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps,
                          py::object reduce) {
  const auto r = gru_joint_run(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn, kind_g,
                               kind_n, eps, true, Reducer(reduce));
  return {r[0], {last_state(r[1], true)}, slots(r, 8),
          {w_hh, gamma_g, gamma_n, mask, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[10], r[13]}};
}

Inferred gru_joint_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                         at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                         at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps,
                         py::object reduce) {
  const auto r = gru_joint_run(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn, kind_g,
                               kind_n, eps, false, Reducer(reduce));
  return {r[0], {last_state(r[1], false)}, slots(r, 8)};
}

Tensors gru_joint_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_g, int64_t kind_n,
                           py::object reduce) {
  TORCH_CHECK(s.size() == 13, "gru_joint_backward: the saved state of gru_joint_forward");
  return NORMRNN_DISPATCH(s[5], "gru_joint_backward",
      gru_joint_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
                                        s[10], s[11], s[12], kind_g, kind_n, Reducer(reduce)));
}

// Elman RNN. impl: out, h_all, act, shat, rstd_h | mean_h, var_h, count_h
Tensors rnn_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h, at::Tensor mask,
                at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu, double eps, bool keep,
                const Reducer& reduce) {
  return NORMRNN_DISPATCH(xa, "rnn_forward",
      rnn_forward_impl<scalar_t>(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, keep,
                                 reduce));
}

Trained rnn_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h,
                    at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu,
                    double eps, py::object reduce) {
  const auto r = rnn_run(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, true,
                         Reducer(reduce));
  return {r[0], {last_state(r[1], true)}, slots(r, 5), {w_hh, gamma_h, mask, r[1], r[2], r[3], r[4], r[7]}};
}

Inferred rnn_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h,
                   at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu,
                   double eps, py::object reduce) {
  const auto r = rnn_run(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, false,
                         Reducer(reduce));
  return {r[0], {last_state(r[1], false)}, slots(r, 5)};
}

Tensors rnn_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_h, bool joint, bool relu,
                     py::object reduce) {
  TORCH_CHECK(s.size() == 8, "rnn_backward: the saved state of rnn_forward");
  return NORMRNN_DISPATCH(s[4], "rnn_backward",
      rnn_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], kind_h, joint, relu,
                                  Reducer(reduce)));
}

std::vector<at::Tensor> lstm_stream(at::Tensor x, at::Tensor h0, at::Tensor c0, const StreamStack& stack,
                                    int64_t step, double eps) {
  return NORMRNN_DISPATCH(x, "lstm_stream", lstm_stream_impl<scalar_t>(x, h0, c0, stack, step, eps));
}

// GRU / Elman RNN stack: (out, h_n), or None when the call does not apply (see stream_applies).
std::optional<std::tuple<at::Tensor, at::Tensor>> hidden_stream(const at::Tensor& x,
                                                                const c10::optional<at::Tensor>& h0,
                                                                const StreamStack& stack, int64_t step, double eps) {
  if (!stream_applies(stack, x, h0)) return std::nullopt;
  return NORMRNN_DISPATCH(x, "hidden_stream", hidden_stream_impl<scalar_t>(x, h0, stack, step, eps));
}

std::vector<at::Tensor> row_norm_forward(at::Tensor x, at::Tensor weight, int64_t kind, double eps) {
  TORCH_CHECK(per_row(kind) && x.is_contiguous(), "row_norm_forward: layer or RMS norm of a contiguous x");
  return NORMRNN_DISPATCH(x, "row_norm_forward", row_norm_forward_impl<scalar_t>(x, weight, kind, eps));
}

std::vector<at::Tensor> row_norm_backward(at::Tensor dy, at::Tensor x, at::Tensor weight, at::Tensor mean,
                                          at::Tensor rstd, int64_t kind) {
  TORCH_CHECK(per_row(kind) && dy.is_contiguous(), "row_norm_backward: layer or RMS norm, dy contiguous");
  return NORMRNN_DISPATCH(x, "row_norm_backward", row_norm_backward_impl<scalar_t>(dy, x, weight, mean, rstd, kind));
}

void norm_rows_(at::Tensor x, at::Tensor weight, int64_t kind, double eps, at::Tensor fix_mean,
                at::Tensor fix_var) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "norm_rows_: x must be a contiguous (T, N, F) tensor");
  NORMRNN_DISPATCH(x, "norm_rows_", norm_rows_inplace_impl<scalar_t>(x, weight, kind, eps, fix_mean, fix_var));
}

int64_t bn_update_running_(at::Tensor running_mean, at::Tensor running_var, at::Tensor mean, at::Tensor var,
                           at::Tensor count, int64_t first, double momentum) {
  TORCH_CHECK(running_mean.is_contiguous() && running_var.is_contiguous() && mean.is_contiguous() &&
                  var.is_contiguous() && count.is_contiguous(), "bn_update_running_: contiguous tensors only");
  return AT_DISPATCH_FLOATING_TYPES(running_mean.scalar_type(), "bn_update_running_", [&] {
    return bn_update_running_impl<scalar_t>(running_mean, running_var, mean, var, count, first, momentum);
  });
}

std::vector<at::Tensor> bn_steps_forward(at::Tensor x, at::Tensor weight, at::Tensor mask, at::Tensor fix_mean,
                                         at::Tensor fix_var, double eps, bool training) {
  return NORMRNN_DISPATCH(x, "bn_steps_forward",
      bn_steps_forward_impl<scalar_t>(x, weight, mask, fix_mean, fix_var, eps, training));
}

std::vector<at::Tensor> bn_steps_backward(at::Tensor dy, at::Tensor x, at::Tensor weight, at::Tensor mask,
                                          at::Tensor mean, at::Tensor rstd, at::Tensor count, bool training) {
  return NORMRNN_DISPATCH(x, "bn_steps_backward",
      bn_steps_backward_impl<scalar_t>(dy, x, weight, mask, mean, rstd, count, training));
}

bool set_split_rows(bool on) {
  const bool was = RowGroups::split_rows_enabled();
  RowGroups::split_rows_enabled() = on;
  return was;
}

// The W_hh size (float bytes) up to which training runs row groups (loop.h); returns the previous one.
int64_t set_row_group_bytes(int64_t bytes) {
  const int64_t was = RowGroups::max_matrix_bytes();
  RowGroups::max_matrix_bytes() = bytes;
  return was;
}

// The GEMM paths (gemm.h). set_gemm_path("plain" | "packed" | "onednn" | "auto"): force a path for the products
// that follow (a path this build lacks runs plain), "auto" measures; returns the previous setting.
std::string set_gemm_path(const std::string& name) {
  const int p = gemm::path_of(name);
  TORCH_CHECK(p >= gemm::kAuto, "set_gemm_path: unknown path '", name, "' (plain, packed, onednn or auto)");
  return gemm::path_name(gemm::forced().exchange(p));
}

// Old switch: True lets the per-step products choose (auto), False runs them on at::mm_out; returns whether the
// packed path was allowed before.
bool set_packed_gemm(bool on) {
  return gemm::forced().exchange(on ? gemm::kAuto : gemm::kPlain) != gemm::kPlain;
}

// Where the measured choices are kept between processes, and the header line that must match for them to count
// (CPU and torch); clears this process's choices, so the next products read the file (or measure) again.
void gemm_configure(const std::string& file, const std::string& header) {
  auto& c = gemm::chooser();
  std::lock_guard<std::mutex> g(c.lock);
  c.file = file;
  c.header = header;
  c.loaded = false;
  c.chosen.clear();
  c.timings.clear();
  c.measured = c.read = 0;
}

py::dict gemm_state() {
  auto& c = gemm::chooser();
  std::lock_guard<std::mutex> g(c.lock);
  py::dict chosen, timings;
  for (const auto& [k, p] : c.chosen) chosen[py::str(k)] = gemm::path_name(p);
  for (const auto& [k, t] : c.timings) timings[py::str(k)] = t;
  py::list avail;
  for (int p = 0; p < gemm::kPaths; ++p)
    if (gemm::available<float>(p)) avail.append(gemm::path_name(p));
  py::dict d;
  d["forced"] = gemm::path_name(gemm::forced().load());
  d["available"] = avail;
  d["chosen"] = chosen;
  d["timings_us"] = timings;
  d["measured"] = c.measured;
  d["read"] = c.read;
  d["file"] = c.file;
  return d;
}

// One product on a given path, for the tests: a (M, K) · b (K, N) [+ add]; `step`: through StepGemm, reading a
// with its row stride (rows must be contiguous), else one large product (mm_into). Returns (out, path that ran).
std::tuple<at::Tensor, std::string> gemm_product(at::Tensor a, at::Tensor b, c10::optional<at::Tensor> add,
                                                 const std::string& path, bool step) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0), "gemm_product: (M, K) and (K, N)");
  const int p = gemm::path_of(path);
  TORCH_CHECK(p >= gemm::kAuto, "gemm_product: unknown path '", path, "'");
  auto out = add ? add->contiguous().clone() : at::empty({a.size(0), b.size(1)}, a.options());
  std::string ran;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "gemm_product", [&] {
    if (step) {
      TORCH_CHECK(a.stride(1) == 1, "gemm_product: rows of a contiguous");
      const StepGemm<scalar_t> g(b, a.size(0), 2, p);
      const auto addc = add ? add->contiguous() : at::Tensor();
      g(out.data_ptr<scalar_t>(), a.data_ptr<scalar_t>(), a.stride(0), add ? addc.data_ptr<scalar_t>() : nullptr);
      ran = gemm::path_name(g.path());
    } else {
      const int q = p == gemm::kAuto ? p : (gemm::applies<scalar_t>(p, a.stride(1) != 1, false) ? p : gemm::kPlain);
      gemm::mm_into<scalar_t>(out, a, b, add.has_value(), q);
      ran = gemm::path_name(q);
    }
  });
  return {out, ran};
}

// out = a · b, or out += a · b (`accumulate`), on the path measured for the shape (or forced): the input term's
// projection and the weight gradients over all steps. out contiguous (M, N); a, b 2-D (transposed views too).
void mm_into(at::Tensor out, at::Tensor a, at::Tensor b, bool accumulate) {
  TORCH_CHECK(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(0) && out.dim() == 2 &&
                  out.size(0) == a.size(0) && out.size(1) == b.size(1) && out.is_contiguous(),
              "mm_into: out (M, N) contiguous, a (M, K), b (K, N)");
  const at::NoGradGuard no_grad;
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "mm_into", [&] { gemm::mm_into<scalar_t>(out, a, b, accumulate); });
}

// The tests' planted fault: products on `path` read their left operand with a leading dimension one too large
// ("" clears it).
void set_gemm_fault(const std::string& path) { gemm::fault() = path.empty() ? -1 : gemm::path_of(path); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_packed_gemm", &set_packed_gemm);
  m.def("set_gemm_path", &set_gemm_path);
  m.def("gemm_configure", &gemm_configure);
  m.def("gemm_state", &gemm_state);
  m.def("gemm_product", &gemm_product, py::arg("a"), py::arg("b"), py::arg("add") = py::none(),
        py::arg("path") = "auto", py::arg("step") = true);
  m.def("set_gemm_fault", &set_gemm_fault);
  m.def("mm_into", &mm_into);
  // Seconds per product of path p on operands a, b (b as given: a transposed view stays one), `reps` products.
  m.def("gemm_time", [](const std::string& path, at::Tensor a, at::Tensor b, bool step, int64_t reps) {
    const at::NoGradGuard no_grad;
    auto out = at::empty({a.size(0), b.size(1)}, a.options());
    return gemm::time_path<float>(gemm::path_of(path), a, b, out, step, static_cast<int>(reps));
  });
  m.def("set_split_rows", &set_split_rows);
  m.def("set_row_group_bytes", &set_row_group_bytes);
  // The buffer pool (pool.h): a tensor from it, what it holds unused, its cap, and freeing what it holds.
  m.def("pooled_empty", [](std::vector<int64_t> sizes, at::ScalarType dtype) {
    return pooled_empty(sizes, at::TensorOptions().dtype(dtype));
  });
  m.def("pool_cached_bytes", [] { return BufferPool::get().cached_bytes(); });
  m.def("set_pool_limit", [](int64_t bytes) {
    const int64_t was = BufferPool::limit();
    BufferPool::limit() = bytes;
    return was;
  });
  m.def("release_pool", [] { return BufferPool::get().release(); });
  m.def("set_pool_poison", [](bool on) {
    const bool was = BufferPool::poison();
    BufferPool::poison() = on;
    return was;
  });
  m.def("row_groups", [](int64_t N, int64_t H, bool cross_row, bool training) {
    return RowGroups(N, H, cross_row, training).count;
  }, py::arg("N"), py::arg("H"), py::arg("cross_row"), py::arg("training") = true);
  m.def("packed_gemm_available", [] { return gemm::mkl_api().ok(); });
  m.def("norm_rows_", &norm_rows_);
  m.def("bn_update_running_", &bn_update_running_);
  m.def("bn_steps_forward", &bn_steps_forward);
  m.def("bn_steps_backward", &bn_steps_backward);
  m.def("row_norm_forward", &row_norm_forward);
  m.def("row_norm_backward", &row_norm_backward);
  py::class_<StreamNorm>(m, "StreamNorm")
      .def(py::init<int64_t, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(), py::arg("kind"),
           py::arg("gain"), py::arg("bias"), py::arg("running_mean"), py::arg("running_var"),
           py::arg("steps_tracked"));
  py::class_<StreamLayer>(m, "StreamLayer")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, StreamNorm, StreamNorm, StreamNorm, bool, bool,
                    int64_t>(),
           py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("norm_x"), py::arg("norm_h"),
           py::arg("norm_c"), py::arg("joint"), py::arg("carry"), py::arg("cell"));
  py::class_<StreamStack>(m, "StreamStack").def(py::init<std::vector<StreamLayer>>(), py::arg("layers"));
  m.def("lstm_stream", &lstm_stream);
  m.def("hidden_stream", &hidden_stream);
  m.def("lstm_forward", &lstm_forward);
  m.def("lstm_infer", &lstm_infer);
  m.def("lstm_backward", &lstm_backward);
  m.def("gru_forward", &gru_forward);
  m.def("gru_infer", &gru_infer);
  m.def("gru_backward", &gru_backward);
  m.def("gru_joint_forward", &gru_joint_forward);
  m.def("gru_joint_infer", &gru_joint_infer);
  m.def("gru_joint_backward", &gru_joint_backward);
  m.def("rnn_forward", &rnn_forward);
  m.def("rnn_infer", &rnn_infer);
  m.def("rnn_backward", &rnn_backward);
}
