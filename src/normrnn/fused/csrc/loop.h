// loop.h: what the time loops share: gradient sums per step, the ring that holds ds for dW_hh, row groups per
// thread, and the states kept for backward.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== shared by the time loops

// dout (T, N, H) is read row by row through its strides (rows contiguous): an expanded gradient stays expanded.
// Backward's memory: besides dxa (which the input term's backward needs), nothing in backward is T steps long.
// The bias and gain gradients are summed step by step (add_col_sums) and the recurrent term's gradient ds, which
// dW_hh needs, lives in dxa where it equals it, else in a ring of a few steps (DsRing).

// acc += v (F).
template <typename T>
inline void add_to(T* __restrict acc, const T* __restrict v, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) acc[f] += v[f];
}

// sum += column sums of d (R, F); prod += column sums of d * x. Parallel over columns; sum or prod may be null.
template <typename T>
void add_col_sums(const T* d, const T* x, int64_t R, int64_t F, T* sum, T* prod) {
  if (sum == nullptr && prod == nullptr) return;
  const int64_t grain = std::max<int64_t>(64, 16384 / std::max<int64_t>(R, 1));
  at::parallel_for(0, F, grain, [&](int64_t b, int64_t e) {
    for (int64_t n = 0; n < R; ++n) {
      const T* __restrict dr = d + n * F;
      if (sum != nullptr) {
        T* __restrict s = sum;
#pragma omp simd
        for (int64_t f = b; f < e; ++f) s[f] += dr[f];
      }
      if (prod != nullptr) {
        const T* __restrict xr = x + n * F;
        T* __restrict p = prod;
#pragma omp simd
        for (int64_t f = b; f < e; ++f) p[f] += dr[f] * xr[f];
      }
    }
  });
}

// The recurrent term's gradient ds (per step (N, G)) for dW_hh = sum over steps of ds_t^T h_t. Either inside a
// (T, N, G) buffer that backward keeps anyway (`full`: one GEMM at the end), or in a ring of K steps, flushed
// into dW with one GEMM per K steps (K*N about kRingRows rows: enough for an efficient GEMM; 128 and 256 measured
// the same speed, and 128 keeps a smaller ring).
constexpr int64_t kRingRows = 128;

template <typename T>
struct DsRing {
  at::Tensor full, ring, dw;
  int64_t steps, N, G, H, K;
  DsRing(const at::Tensor& full_, int64_t steps_, int64_t N_, int64_t G_, int64_t H_, const at::TensorOptions& o)
      : full(full_), steps(steps_), N(N_), G(G_), H(H_) {
    K = full.defined() ? steps : std::min<int64_t>(steps, std::max<int64_t>(1, (kRingRows + N - 1) / N));
    if (!full.defined()) {
      ring = at::empty({K, N, G}, o);
      dw = at::zeros({G, H}, o);
    }
  }
  const at::Tensor& buffer() const { return full.defined() ? full : ring; }
  int64_t index(int64_t t) const { return full.defined() ? t : t % K; }
  T* slot(int64_t t) const { return buffer().template data_ptr<T>() + index(t) * N * G; }
  // After step t (backward runs t = T-1 .. 0): flush the ring once t starts a block of K steps.
  void done(int64_t t, const at::Tensor& h_all) {
    if (full.defined() || t % K != 0) return;
    const int64_t k = std::min<int64_t>(K, steps - t);
    gemm::mm_into<T>(dw, ring.narrow(0, 0, k).reshape({k * N, G}).t(), h_all.narrow(0, t, k).reshape({k * N, H}),
                     true);
  }
  at::Tensor weight_grad(const at::Tensor& h_all) const {
    if (!full.defined()) return dw;
    auto out = at::empty({G, H}, full.options());
    gemm::mm_into<T>(out, full.reshape({steps * N, G}).t(), h_all.narrow(0, 0, steps).reshape({steps * N, H}), false);
    return out;
  }
};


// How a forward call spreads over the threads. Normally each step's GEMM and row pass are shared by all of them,
// which costs a fork and a join per step, and a GEMM of few rows splits badly. Where no norm computes statistics
// across the batch, every sequence's recurrence is independent: the rows are then cut into one group per thread,
// and each thread runs the whole time loop for its group, with a GEMM of its own and no synchronization between
// steps. Measured here (LSTM, 200 steps, 2 threads, time loop only): N=8, H=128: 2.4 ms with shared steps,
// 1.4 ms for one thread with half the rows; N=8, H=256: 5.8 ms against 4.8 ms; N=16, H=256: 9.9 against 7.8.
// Each group reads all of W_hh every step, so large matrices keep the shared steps: beyond 2 MiB in training,
// beyond 8 MiB in inference. (AMD EPYC, 2 threads, in-process A/B against nn.LSTM, 2026-12-05: inference at
// 100 x 32 x 512 (4 MiB) 1.06-1.13x with groups against 1.14-1.25x shared, over three runs and no, layer and
// batch norm; at 50 x 64 x 1024 (16 MiB) 1.10-1.13x against 1.05-1.09x; training at 512 no better, either way.)
struct RowGroups {
  int64_t N, count;
  RowGroups(int64_t N_, int64_t H, bool cross_row, bool training) : N(N_), count(1) {
    const int64_t threads = at::get_num_threads();
    const bool small_matrix = 4 * H * H * 4 <= (training ? 1 : 4) * max_matrix_bytes();  // W_hh in float
    // At least two rows a group: with one (N = 2) the groups measured slower than the shared steps (0.92x
    // against 0.86x nn.LSTM's inference at 200 x 2 x 128), with two faster (0.91x against 1.20x at N = 4).
    if (!cross_row && threads > 1 && !at::in_parallel_region() && small_matrix && split_rows_enabled())
      count = std::max<int64_t>(1, std::min(threads, N / 2));
  }
  static bool& split_rows_enabled() {
    static bool on = true;
    return on;
  }
  // The largest W_hh (float bytes) for which each group reads its own copy every step in training (4x that in
  // inference); set_row_group_bytes sets it, for measuring.
  static int64_t& max_matrix_bytes() {
    static int64_t bytes = int64_t(2) << 20;  // 2 MiB: H = 362
    return bytes;
  }
  // f(r0, r1, shared) for each group, in parallel when there are several.
  template <typename Fn>
  void run(const Fn& f) const {
    if (count == 1) {
      f(int64_t(0), N, true);
      return;
    }
    at::parallel_for(0, count, 1, [&](int64_t gb, int64_t ge) {
      const at::NoGradGuard no_grad;  // (the workers' own mode, which the ATen calls of a fallback GEMM read)
      for (int64_t g = gb; g < ge; ++g) f(g * N / count, (g + 1) * N / count, false);
    });
  }
  // fn(n) for rows [r0, r1) of a step: over the threads when the step is shared, else on this thread.
  template <typename Fn>
  void rows(int64_t r0, int64_t r1, int64_t width, bool shared, const Fn& fn) const {
    if (shared) {
      for_rows(r1 - r0, width, [&](int64_t i) { fn(r0 + i); });
    } else {
      for (int64_t n = r0; n < r1; ++n) fn(n);
    }
  }
};

// The states h_t (and c_t) of a forward call, (T+1, N, H): all of them when backward needs them, else only the
// previous and the next, alternating (inference writes no T-long state besides its output).
template <typename T>
struct States {
  at::Tensor all;
  bool keep;
  int64_t rows;
  States(const at::Tensor& first, int64_t steps, bool keep_) : keep(keep_), rows(first.numel()) {
    all = at::empty({keep ? steps + 1 : 2, first.size(0), first.size(1)}, first.options());
    all[0].copy_(first);
  }
  int64_t index(int64_t t) const { return keep ? t : t % 2; }
  T* ptr(int64_t t) const { return all.data_ptr<T>() + index(t) * rows; }
  // What the caller gets: every state, or (inference) the last one as a (1, N, H) tensor.
  at::Tensor result(int64_t steps) const { return keep ? all : all.narrow(0, index(steps), 1); }
};
