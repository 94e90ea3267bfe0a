// stream.h: one LSTM step for inference and streaming, and a whole stack's step in one call.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== streaming

// One LSTM step for inference and streaming (no state saved for backward): both projections, their norms,
// the gates and the cell in one pass, written into h_out and c_out (N, H). Norm kinds: none, layer, rms, or
// batch with given statistics: rows row_x, row_h, row_c of the norms' (steps, F) running-statistics buffers.
template <typename T>
void lstm_step_into(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                    const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                    const at::Tensor& gamma_x, const at::Tensor& gamma_h, const at::Tensor& gamma_c,
                    const at::Tensor& beta_c, const at::Tensor& fx_mean, const at::Tensor& fx_var,
                    const at::Tensor& fh_mean, const at::Tensor& fh_var, const at::Tensor& fc_mean,
                    const at::Tensor& fc_var, int64_t row_x, int64_t row_h, int64_t row_c, int64_t kind_x, int64_t kind_h, int64_t kind_c,
                    bool joint, bool carry, double eps_, at::Tensor& h_out, at::Tensor& c_out) {
  const int64_t N = x.size(0), G = w_hh.size(0), H = G / 4;
  const T eps = static_cast<T>(eps_);
  const bool has_x = gamma_x.numel() > 0, has_h = gamma_h.numel() > 0, has_c = gamma_c.numel() > 0;
  auto xa = at::mm(x, w_ih.t());
  auto s = joint ? at::addmm(xa, h, w_hh.t()) : at::mm(h, w_hh.t());
  // per-feature statistics of the batch kinds: mean and 1/sqrt(var + eps)
  auto col = [&](const at::Tensor& m, const at::Tensor& v, int64_t row, std::vector<T>& mean, std::vector<T>& rstd) {
    if (!m.numel()) return;
    const int64_t F = m.size(-1);
    const T *mp = m.data_ptr<T>() + row * F, *vp = v.data_ptr<T>() + row * F;
    mean.assign(mp, mp + F);
    rstd.resize(F);
    for (int64_t f = 0; f < F; ++f) rstd[f] = T(1) / std::sqrt(vp[f] + eps);
  };
  std::vector<T> mx, rx, mh, rh, mc, rc, scratch(static_cast<size_t>(N * (3 * G + 2 * H)));
  col(fx_mean, fx_var, row_x, mx, rx);
  col(fh_mean, fh_var, row_h, mh, rh);
  col(fc_mean, fc_var, row_c, mc, rc);
  const T *b1 = ptr<T>(b_ih), *b2 = ptr<T>(b_hh), *gx = ptr<T>(gamma_x), *gh = ptr<T>(gamma_h),
          *gc = ptr<T>(gamma_c), *bc = ptr<T>(beta_c);
  const T* xp = xa.data_ptr<T>();
  const T* sp = s.data_ptr<T>();
  T* sc = scratch.data();
  const T* cp = c.data_ptr<T>();
  T* hp = h_out.data_ptr<T>();
  T* cnp = c_out.data_ptr<T>();
  for_rows(N, G, [&](int64_t n) {
    T* xh = sc + n * (3 * G + 2 * H);  // [x-hat (G) | s-hat (G) | gates (G) | c_new (H) | c-hat (H)]
    T* sh = xh + G;
    T* a = sh + G;
    T* cn = a + G;
    T* ch = cn + H;
    T r = 0;
    if (has_h) {
      normalize_row(sp + n * G, G, kind_h, eps, mh.data(), rh.data(), sh, &r);
      pre_activation<T>(a, sh, gh, b1, static_cast<const T*>(nullptr), G);
    } else {
      pre_activation<T>(a, sp + n * G, static_cast<const T*>(nullptr), b1, static_cast<const T*>(nullptr), G);
    }
    if (b2) add_scaled<T>(a, b2, nullptr, G);
    if (!joint) {
      const T* xterm = xp + n * G;
      if (has_x) {
        normalize_row(xterm, G, kind_x, eps, mx.data(), rx.data(), xh, &r);
        xterm = xh;
      }
      add_scaled<T>(a, xterm, has_x ? gx : nullptr, G);
    }
    lstm_gates_fwd<T>(a, a + H, a + 2 * H, a + 3 * H, cp + n * H, cn, H);
    const T* cout = cn;
    if (has_c) {
      normalize_row(cn, H, kind_c, eps, mc.data(), rc.data(), ch, &r);
      scale_shift<T>(ch, gc, bc, H);
      cout = ch;
    }
    lstm_h_only<T>(a + 3 * H, cout, hp + n * H, H);
    std::copy(carry ? cout : cn, (carry ? cout : cn) + H, cnp + n * H);
  });
}

// Streaming: one step of a whole unidirectional stack in one call, for LSTM.step at small batches, where the
// per-call cost of Python and the dispatcher is most of the time. x (N, I); h0, c0 (L, N, H) or empty for
// zeros; one StreamLayer per layer (bound to Python under the same names). Returns output (N, H), h_n, c_n.

// One norm of a streaming layer: its kind (none, layer, rms, or batch with given statistics), its gain and bias
// (empty when absent) and, for batch norm in eval, its running statistics (steps, F) and steps_tracked (empty
// otherwise).
struct StreamNorm {
  int64_t kind;
  at::Tensor gain, bias, running_mean, running_var, steps_tracked;
};

// Cell kinds of a streaming layer (contract.py's CELL_*).
constexpr int64_t CELL_LSTM = 0, CELL_GRU = 1, CELL_RNN_TANH = 2, CELL_RNN_RELU = 3;

// norm_x: the input term's norm (separate terms); norm_h: the recurrent term's, or the joint norm when `joint`
// (a GRU's norm_gates); norm_c: an LSTM's cell norm, a GRU's candidate norm (norm_new, joint terms).
struct StreamLayer {
  at::Tensor w_ih, w_hh, b_ih, b_hh;  // biases empty when absent
  StreamNorm norm_x, norm_h, norm_c;
  bool joint, carry;  // carry: LSTM only
  int64_t cell;
};

// A stack's layers, built once per streaming plan (prepare_stream) and handed to every step by reference.
struct StreamStack {
  std::vector<StreamLayer> layers;
  std::vector<at::Tensor> params;  // the floating tensors, for the per-call requires_grad check
  explicit StreamStack(std::vector<StreamLayer> l) : layers(std::move(l)) {
    for (const auto& s : layers) {
      for (const at::Tensor* t : {&s.w_ih, &s.w_hh, &s.b_ih, &s.b_hh, &s.norm_x.gain, &s.norm_x.bias, &s.norm_h.gain,
                                  &s.norm_h.bias, &s.norm_c.gain, &s.norm_c.bias}) {
        if (t->numel()) params.push_back(*t);
      }
    }
  }
};

// Row of the running statistics a step reads in eval: its own, or the last trained step's past that.
inline int64_t stream_stats_row(const StreamNorm& norm, int64_t step) {
  if (!norm.steps_tracked.numel()) return 0;
  // (a CPU int64 scalar: read directly, where .item() costs a dispatcher call per norm and step)
  const int64_t last = std::min(std::max<int64_t>(*norm.steps_tracked.data_ptr<int64_t>(), 1),
                                norm.running_mean.size(0)) - 1;
  return std::min(step, last);
}

template <typename T>
std::vector<at::Tensor> lstm_stream_impl(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                         const StreamStack& stack, int64_t step, double eps) {
  const std::vector<StreamLayer>& layers = stack.layers;
  const int64_t L = static_cast<int64_t>(layers.size()), N = x.size(0);
  const int64_t H = layers[0].w_hh.size(1);
  auto h_n = at::empty({L, N, H}, x.options()), c_n = at::empty({L, N, H}, x.options());
  const bool zeros = h0.numel() == 0;
  auto zero = zeros ? at::zeros({N, H}, x.options()) : at::Tensor();
  auto row_of = [&](const StreamNorm& norm) { return stream_stats_row(norm, step); };
  at::Tensor input = x;
  for (int64_t k = 0; k < L; ++k) {
    const StreamLayer& l = layers[k];
    auto h = zeros ? zero : h0.select(0, k), c = zeros ? zero : c0.select(0, k);
    auto h_out = h_n.select(0, k), c_out = c_n.select(0, k);
    lstm_step_into<T>(input, h, c, l.w_ih, l.w_hh, l.b_ih, l.b_hh, l.norm_x.gain, l.norm_h.gain, l.norm_c.gain,
                      l.norm_c.bias, l.norm_x.running_mean, l.norm_x.running_var, l.norm_h.running_mean,
                      l.norm_h.running_var, l.norm_c.running_mean, l.norm_c.running_var, row_of(l.norm_x),
                      row_of(l.norm_h), row_of(l.norm_c), l.norm_x.kind, l.norm_h.kind, l.norm_c.kind, l.joint,
                      l.carry, eps, h_out, c_out);
    input = h_out;
  }
  return {h_n.select(0, L - 1).clone(), h_n, c_n};
}

// ------------------------------------------------------------------------------- GRU and Elman RNN streaming
// A GRU or Elman RNN stack's step in one call, for GRU.step / RNN.step at small batches. At batch 1 and H = 256 a
// step is two matrix-vector products per layer and O(H) elementwise work: tens of microseconds, of which the
// general path (several ATen calls, each through the dispatcher, allocations, Python between them) spent more
// than half. Here: the two products in a loop of our own, straight from the weights (each block of rows read once
// for all N rows of the batch), then one pass per row for norms, gates and the new state; thread-local scratch
// (nothing allocated per call but the outputs). The call also checks whether it applies (the input's shape,
// dtype and device; the state's; whether autograd wants a graph) and returns nothing when it does not, so the
// Python side does no per-call checks of its own.

// Vectors of 64 bytes (GCC's vector extensions: one AVX-512 register, two AVX2 ones, ... on what -march gives).
template <typename T>
struct Lanes {
  static constexpr int64_t L = 64 / sizeof(T);
  typedef T V __attribute__((vector_size(64)));
  typedef T V32 __attribute__((vector_size(32)));
  typedef T V16 __attribute__((vector_size(16)));
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  // The sum of the lanes as a tree (halves added), not a chain of L dependent adds.
  static T sum(const V& v) {
    V32 a, b;
    std::memcpy(&a, &v, 32);
    std::memcpy(&b, reinterpret_cast<const char*>(&v) + 32, 32);
    a += b;
    V16 c, d;
    std::memcpy(&c, &a, 16);
    std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
    c += d;
    if constexpr (sizeof(T) == 4) return (c[0] + c[2]) + (c[1] + c[3]);
    return c[0] + c[1];
  }
};

// y[r] = <W row g0 + r, x> for R consecutive rows of W (G, K), row-major: R independent accumulators.
template <typename T, int R>
inline void dot_rows(const T* __restrict x, int64_t K, const T* __restrict w, T* __restrict y) {
  using S = Lanes<T>;
  typename S::V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = typename S::V{};
  int64_t i = 0;
  for (; i + S::L <= K; i += S::L) {
    const typename S::V xv = S::load(x + i);
    for (int r = 0; r < R; ++r) acc[r] += S::load(w + r * K + i) * xv;
  }
  for (int r = 0; r < R; ++r) {
    T s = S::sum(acc[r]);
    for (int64_t j = i; j < K; ++j) s += w[r * K + j] * x[j];
    y[r] = s;
  }
}

// y (N, G) = x (N, K) · W^T, W (G, K) contiguous. Small batches: 8 rows of W at a time (8 KiB at K = 256, in L1
// while every row of x passes), so W streams from cache once per call. Larger batches: at::mm_out.
template <typename T>
void stream_product(const T* x, int64_t N, int64_t K, const at::Tensor& W, T* y) {
  const int64_t G = W.size(0);
  const T* w = W.data_ptr<T>();
  if (N > 16) {
    auto out = at::from_blob(y, {N, G}, W.options());
    at::mm_out(out, at::from_blob(const_cast<T*>(x), {N, K}, W.options()), W.t());
    return;
  }
  int64_t g = 0;
  for (; g + 8 <= G; g += 8)
    for (int64_t n = 0; n < N; ++n) dot_rows<T, 8>(x + n * K, K, w + g * K, y + n * G + g);
  for (; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) dot_rows<T, 1>(x + n * K, K, w + g * K, y + n * G + g);
}

// One norm as a step reads it: kind, gain (or null) and, for batch norm with given statistics, the column mean
// and 1/sqrt(var + eps) of the step's row of the running statistics.
template <typename T>
struct StepNorm {
  int64_t kind = NONE;
  const T* gain = nullptr;
  const T* mean = nullptr;
  const T* rstd = nullptr;
  // Normalize row v (F) in place and apply the gain; then add up to two biases (null: absent).
  void apply(T* v, int64_t F, T eps, const T* b1 = nullptr, const T* b2 = nullptr) const {
    if (kind != NONE) {
      T r;
      normalize_row(v, F, kind, eps, mean, rstd, v, &r);
      if (gain) {
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) v[f] *= gain[f];
      }
    }
    if (b1) {
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) v[f] += b1[f];
    }
    if (b2) {
#pragma omp simd
      for (int64_t f = 0; f < F; ++f) v[f] += b2[f];
    }
  }
};

// Thread-local scratch of at least n values (a layer shared by threads that stream at once stays correct).
template <typename T>
T* stream_scratch(size_t n) {
  thread_local std::vector<T> buf;
  if (buf.size() < n) buf.resize(n);
  return buf.data();
}

// One GRU or Elman RNN layer's step: x (N, I), h (N, H) -> h_out (N, H) (and `copy`, when not null).
template <typename T>
void hidden_layer_step(const StreamLayer& l, const T* x, const T* h, int64_t N, int64_t step, T eps, T* h_out,
                       T* copy) {
  const int64_t I = l.w_ih.size(1), G = l.w_hh.size(0), H = l.w_hh.size(1);
  const bool gru = l.cell == CELL_GRU;
  // scratch: xa (N, G) | s (N, G) | per norm: mean (G), rstd (G)
  T* xa = stream_scratch<T>(static_cast<size_t>(2 * N * G + 6 * G));
  T* s = xa + N * G;
  T* cols = s + N * G;
  StepNorm<T> nx, nh, nc;
  auto prepare = [&](const StreamNorm& norm, StepNorm<T>& out, T* mean) {
    out.kind = norm.kind;
    out.gain = ptr<T>(norm.gain);
    if (norm.kind != BATCH_FIXED) return;
    const int64_t F = norm.running_mean.size(1), row = stream_stats_row(norm, step);
    const T* m = norm.running_mean.data_ptr<T>() + row * F;
    const T* v = norm.running_var.data_ptr<T>() + row * F;
    T* rstd = mean + G;
    for (int64_t f = 0; f < F; ++f) {
      mean[f] = m[f];
      rstd[f] = T(1) / std::sqrt(v[f] + eps);
    }
    out.mean = mean;
    out.rstd = rstd;
  };
  prepare(l.norm_x, nx, cols);
  prepare(l.norm_h, nh, cols + 2 * G);
  prepare(l.norm_c, nc, cols + 4 * G);
  stream_product<T>(x, N, I, l.w_ih, xa);
  stream_product<T>(h, N, H, l.w_hh, s);
  const T *b_ih = ptr<T>(l.b_ih), *b_hh = ptr<T>(l.b_hh);
  for (int64_t n = 0; n < N; ++n) {
    T* xr = xa + n * G;
    T* sr = s + n * G;
    const T* hr = h + n * H;
    T* ho = h_out + n * H;
    if (gru && !l.joint) {  // r, z, n = sigm, sigm, tanh of norm_x(xa) + b_ih + [norm_h(s) + b_hh] (r * for n)
      nx.apply(xr, G, eps, b_ih);
      nh.apply(sr, G, eps, b_hh);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r = sigm(xr[j] + sr[j]), z = sigm(xr[H + j] + sr[H + j]);
        const T c = tanh_(xr[2 * H + j] + r * sr[2 * H + j]);
        ho[j] = c + z * (hr[j] - c);
      }
    } else if (gru) {  // r, z from norm_gates(xa_rz + s_rz); n = tanh(norm_new(xa_n + r * (s_n + b_hh_n)) + b_ih_n)
#pragma omp simd
      for (int64_t j = 0; j < 2 * H; ++j) xr[j] += sr[j];
      nh.apply(xr, 2 * H, eps, b_ih, b_hh);
      T* v = sr;  // (s_rz is spent: v takes its place)
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T r = sigm(xr[j]);
        xr[H + j] = sigm(xr[H + j]);
        v[j] = xr[2 * H + j] + r * (sr[2 * H + j] + (b_hh ? b_hh[2 * H + j] : T(0)));
      }
      nc.apply(v, H, eps, b_ih ? b_ih + 2 * H : nullptr);
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) {
        const T c = tanh_(v[j]), z = xr[H + j];
        ho[j] = c + z * (hr[j] - c);
      }
    } else {  // Elman: act(norm_x(xa) + norm_h(s) + b_ih + b_hh), or act(norm_gates(xa + s) + b_ih + b_hh)
      if (l.joint) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) sr[j] += xr[j];
        nh.apply(sr, H, eps, b_ih, b_hh);
      } else {
        nx.apply(xr, H, eps);
        nh.apply(sr, H, eps, b_ih, b_hh);
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) sr[j] += xr[j];
      }
      if (l.cell == CELL_RNN_RELU) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) ho[j] = sr[j] < T(0) ? T(0) : sr[j];  // (a NaN stays NaN, as in torch.relu)
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) ho[j] = tanh_(sr[j]);
      }
    }
    if (copy) std::copy(ho, ho + H, copy + n * H);
  }
}

// Whether a streaming call of `stack` can take these arguments (else the general path runs, which also gives
// the errors for bad ones): x (N, I) and h0 (L, N, H) of the weights' dtype on the CPU, nothing that autograd
// would record a graph for.
inline bool stream_applies(const StreamStack& stack, const at::Tensor& x, const c10::optional<at::Tensor>& h0) {
  const StreamLayer& first = stack.layers.front();
  const auto dtype = first.w_hh.scalar_type();
  if (x.dim() != 2 || x.size(1) != first.w_ih.size(1) || x.scalar_type() != dtype || !x.device().is_cpu())
    return false;
  const int64_t L = static_cast<int64_t>(stack.layers.size()), N = x.size(0), H = first.w_hh.size(1);
  if (h0.has_value()) {
    const at::Tensor& h = *h0;
    if (h.dim() != 3 || h.size(0) != L || h.size(1) != N || h.size(2) != H || h.scalar_type() != dtype ||
        !h.device().is_cpu())
      return false;
  }
  if (at::GradMode::is_enabled()) {
    if (x.requires_grad() || (h0.has_value() && h0->requires_grad())) return false;
    for (const auto& p : stack.params)
      if (p.requires_grad()) return false;
  }
  return true;
}

template <typename T>
std::tuple<at::Tensor, at::Tensor> hidden_stream_impl(const at::Tensor& x_, const c10::optional<at::Tensor>& h0,
                                                      const StreamStack& stack, int64_t step, double eps) {
  const int64_t L = static_cast<int64_t>(stack.layers.size()), N = x_.size(0);
  const int64_t H = stack.layers.front().w_hh.size(1);
  const at::Tensor x = x_.contiguous();
  const at::Tensor h = h0.has_value() ? h0->contiguous() : at::Tensor();
  auto h_n = at::empty({L, N, H}, x.options()), out = at::empty({N, H}, x.options());
  T* zeros = nullptr;
  if (!h.defined()) {  // no state given: zeros
    thread_local std::vector<T> z;
    if (z.size() < static_cast<size_t>(N * H)) z.assign(static_cast<size_t>(N * H), T(0));
    zeros = z.data();
  }
  const T* input = x.data_ptr<T>();
  T* hn = h_n.data_ptr<T>();
  for (int64_t k = 0; k < L; ++k) {
    const T* hk = zeros ? zeros : h.data_ptr<T>() + k * N * H;
    hidden_layer_step<T>(stack.layers[k], input, hk, N, step, static_cast<T>(eps), hn + k * N * H,
                         k == L - 1 ? out.data_ptr<T>() : nullptr);
    input = hn + k * N * H;
  }
  return {out, h_n};
}
