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

struct StreamLayer {
  at::Tensor w_ih, w_hh, b_ih, b_hh;  // biases empty when absent
  StreamNorm norm_x, norm_h, norm_c;  // norm_h is the joint norm when `joint`
  bool joint, carry;
};

template <typename T>
std::vector<at::Tensor> lstm_stream_impl(const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                         const std::vector<StreamLayer>& layers, int64_t step, double eps) {
  const int64_t L = static_cast<int64_t>(layers.size()), N = x.size(0);
  const int64_t H = layers[0].w_hh.size(1);
  auto h_n = at::empty({L, N, H}, x.options()), c_n = at::empty({L, N, H}, x.options());
  const bool zeros = h0.numel() == 0;
  auto zero = zeros ? at::zeros({N, H}, x.options()) : at::Tensor();
  // Row of the running statistics step `step` reads in eval: the last trained step at most.
  auto row_of = [&](const StreamNorm& norm) -> int64_t {
    if (!norm.steps_tracked.numel()) return 0;
    const int64_t last = std::min(std::max<int64_t>(norm.steps_tracked.item<int64_t>(), 1),
                                  norm.running_mean.size(0)) - 1;
    return std::min(step, last);
  };
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
