// gru.h: the GRU time loops: separate terms, then joint terms (two norms per step), forward and backward.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== GRU

template <typename T>
std::vector<at::Tensor> gru_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const at::Tensor& bias_hh, const at::Tensor& gamma_h,
                                         const at::Tensor& mask, const at::Tensor& fmh, const at::Tensor& fvh,
                                         int64_t kind_h, double eps_, bool keep, const Reducer& reduce) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 3;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0, has_b = bias_hh.numel() > 0;
  const States<T> h_all(h0, T_, keep);
  auto acts = pooled_empty({Tk, N, G}, o), rec_n_all = pooled_empty({Tk, N, H}, o);
  auto shat_all = has_h ? at::empty({Tk, N, G}, o) : at::empty({0}, o);
  auto out = at::empty({T_, N, H}, o);
  auto rstd_h = rstd_buffer(kind_h, Tk, N, G, o);
  auto mean_h = stats_buffer(kind_h, T_, G, o), var_h = stats_buffer(kind_h, T_, G, o);
  auto count_h = kind_h == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto s = at::empty({N, G}, o);
  const StepGemm<T> gemm(w_hh.t(), N, T_);  // s = h W_hh^T
  std::vector<T> colmean(G);
  const T *gh = ptr<T>(gamma_h), *bh = ptr<T>(bias_hh);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* sp = s.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t tk = keep ? t : 0;
    gemm(s.data_ptr<T>(), h_all.ptr(t), H);
    const bool* m = mk ? mk + t * N : nullptr;
    T* rh = rstd_h.data_ptr<T>() + tk * rstd_h.size(1) * rstd_h.size(2);
    if (has_h && per_col(kind_h)) {
      const int64_t cnt = col_stats<T>(reduce, sp, N, G, m, ptr<T>(fmh) + t * G, ptr<T>(fvh) + t * G, eps, kind_h,
                                       colmean.data(), rh, kind_h == BATCH ? ptr<T>(mean_h) + t * G : nullptr,
                                       kind_h == BATCH ? ptr<T>(var_h) + t * G : nullptr);
      if (kind_h == BATCH) count_h.data_ptr<T>()[t] = static_cast<T>(cnt);
    }
    const T* x_t = xa.data_ptr<T>() + t * N * G;
    T* a_t = acts.data_ptr<T>() + tk * N * G;
    T* sh_t = ptr<T>(shat_all, tk * N * G);
    T* rn_t = rec_n_all.data_ptr<T>() + tk * N * H;
    const T* hp = h_all.ptr(t);
    T* hn = h_all.ptr(t + 1);
    T* o_t = out.data_ptr<T>() + t * N * H;
    for_rows(N, G, [&](int64_t n) {
      T* rec = sp + n * G;  // the recurrent term, normalized and shifted, in place
      if (has_h) {
        T* sh = sh_t + n * G;
        normalize_row(rec, G, kind_h, eps, colmean.data(), rh, sh, rh + n);
        pre_activation<T>(rec, sh, gh, has_b ? bh : nullptr, static_cast<const T*>(nullptr), G);
      } else if (has_b) {
        pre_activation<T>(rec, sp + n * G, static_cast<const T*>(nullptr), bh, static_cast<const T*>(nullptr), G);
      }
      gru_fwd<T>(x_t + n * G, rec, hp + n * H, a_t + n * G, rn_t + n * H, hn + n * H, o_t + n * H, H);
      if (m != nullptr && !m[n]) hold_row<T>(hp + n * H, hn + n * H, o_t + n * H, H);
    });
  }
  return {out, h_all.result(T_), acts, rec_n_all, shat_all, rstd_h, mean_h, var_h, count_h};
}

template <typename T>
std::vector<at::Tensor> gru_backward_impl(const at::Tensor& dout, const at::Tensor& dhT, const at::Tensor& w_hh, const at::Tensor& gamma_h, const at::Tensor& mask,
                                          const at::Tensor& h_all, const at::Tensor& acts,
                                          const at::Tensor& rec_n_all, const at::Tensor& shat_all,
                                          const at::Tensor& rstd_h, const at::Tensor& count_h, int64_t kind_h,
                                          const Reducer& reduce) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 3;
  const bool has_h = gamma_h.numel() > 0;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // drec: d(recurrent term after its norm), one step's scratch; ds: d(recurrent product), in the ring (ds = drec
  // without a norm). The bias and gain gradients are summed step by step.
  auto dxa = pooled_empty(acts.sizes(), o);
  auto drec_step = has_h ? at::empty({N, G}, o) : at::empty({0}, o);
  DsRing<T> ring(at::Tensor(), T_, N, G, H, o);
  auto dbias = at::zeros({G}, o);
  auto dgamma = has_h ? at::zeros({G}, o) : at::empty({0}, o);
  auto dh = dhT.clone(), dh_next = at::empty_like(dh), direct = at::empty_like(dh);
  const T* gh = ptr<T>(gamma_h);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const bool* m = mk ? mk + t * N : nullptr;
    const T* a_t = acts.data_ptr<T>() + t * N * G;
    const T* rn_t = rec_n_all.data_ptr<T>() + t * N * H;
    const T* sh_t = ptr<T>(shat_all, t * N * G);
    const T* rh = rstd_h.data_ptr<T>() + t * rstd_h.size(1) * rstd_h.size(2);
    const T* hp = h_all.data_ptr<T>() + t * N * H;
    const T* do_t = dout.data_ptr<T>() + t * dout.stride(0);
    T* dx_t = dxa.data_ptr<T>() + t * N * G;
    T* ds_t = ring.slot(t);
    T* dr_t = has_h ? drec_step.data_ptr<T>() : ds_t;
    T* dhp = dh.data_ptr<T>();
    T* dir = direct.data_ptr<T>();
    const bool col_h = has_h && kind_h == BATCH && count_h.data_ptr<T>()[t] >= 2;
    for_rows(N, G, [&](int64_t n) {
      T* dx = dx_t + n * G;
      T* dr = dr_t + n * G;
      T* ds = ds_t + n * G;
      if (m != nullptr && !m[n]) {
        std::fill(dx, dx + G, T(0));
        std::fill(dr, dr + G, T(0));
        if (ds != dr) std::fill(ds, ds + G, T(0));
        std::copy(dhp + n * H, dhp + (n + 1) * H, dir + n * H);
        return;
      }
      gru_bwd<T>(a_t + n * G, rn_t + n * H, hp + n * H, dhp + n * H, do_t + n * dout.stride(1), dx, dr, dir + n * H, H);
      if (has_h && !col_h) {
        denormalize_row(dr, gh, sh_t + n * G, per_row(kind_h) ? rh[n] : T(0), rh, G, kind_h, ds);
      } else if (has_h) {
#pragma omp simd
        for (int64_t f = 0; f < G; ++f) ds[f] = dr[f] * gh[f];
      }
    });
    add_col_sums<T>(dr_t, has_h ? sh_t : nullptr, N, G, dbias.data_ptr<T>(), ptr<T>(dgamma));
    if (col_h) col_norm_bwd<T>(reduce, ds_t, sh_t, rh, N, G, m, static_cast<int64_t>(count_h.data_ptr<T>()[t]));
    gemm(dh_next.data_ptr<T>(), ring.slot(t), ring.G, direct.data_ptr<T>());
    ring.done(t, h_all);
    std::swap(dh, dh_next);
  }
  return {dxa, dh, ring.weight_grad(h_all), dbias, dgamma};
}


// =========================================================================================== GRU, joint terms
// u = x_rz + s_rz -> norm_gates -> + b_ih_rz + b_hh_rz -> sigmoid -> r, z;  v = x_n + r * (s_n + b_hh_n) ->
// norm_new -> + b_ih_n -> tanh -> n;  h' = n + z * (h - n). v needs r, so batch norm's column statistics come
// twice per step, u's before the gates and v's after them: up to three row passes around two column passes,
// forward and backward alike. u and v are formed in their saved buffers (uhat, vhat) and normalized in place,
// which keeps them contiguous (N, F) for the column passes. With joint terms the input term is not normalized
// on its own, so xa is the raw W_ih x and both bias vectors come in whole (null pointers when absent).

// r, z from the (normalized) u row; keeps s_n + b_hh_n for backward and forms v = x_n + r * (s_n + b_hh_n).
template <typename T>
inline void gru_joint_rz_fwd(const T* __restrict u, const T* __restrict gamma, const T* __restrict b_ih,
                             const T* __restrict b_hh, const T* __restrict x_n, const T* __restrict s_n,
                             T* __restrict act, T* __restrict rec_n, T* __restrict v, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T ar = (gamma ? gamma[j] * u[j] : u[j]) + (b_ih ? b_ih[j] : T(0)) + (b_hh ? b_hh[j] : T(0));
    const T az = (gamma ? gamma[H + j] * u[H + j] : u[H + j]) + (b_ih ? b_ih[H + j] : T(0)) +
                 (b_hh ? b_hh[H + j] : T(0));
    const T r = sigm(ar);
    const T rn = s_n[j] + (b_hh ? b_hh[2 * H + j] : T(0));
    act[j] = r;
    act[H + j] = sigm(az);
    rec_n[j] = rn;
    v[j] = x_n[j] + r * rn;
  }
}

// The candidate n = tanh(gamma * v + b_ih_n) from the (normalized) v row, into act's third part; the new h.
template <typename T>
inline void gru_joint_n_fwd(const T* __restrict v, const T* __restrict gamma, const T* __restrict b_in,
                            const T* __restrict h, T* __restrict act, T* __restrict hn, T* __restrict out,
                            int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T c = tanh_((gamma ? gamma[j] * v[j] : v[j]) + (b_in ? b_in[j] : T(0)));
    const T z = act[H + j];
    act[2 * H + j] = c;
    const T hv = c + z * (h[j] - c);
    hn[j] = hv;
    out[j] = hv;
  }
}

// Backward from dh through h' = n + z * (h - n): the pre-activation gradients of z and n into dpre (its parts
// z, n; r's comes later, from dv), dv = d(pre-activation of n) before the norm's own backward, the direct path.
template <typename T>
inline void gru_joint_n_bwd(const T* __restrict act, const T* __restrict h, const T* __restrict dh,
                            const T* __restrict dout, T* __restrict dpre, T* __restrict dv, T* __restrict direct,
                            int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T z = act[H + j], c = act[2 * H + j];
    const T dhs = dh[j] + dout[j];
    const T e_n = dhs * (T(1) - z) * (T(1) - c * c);
    dpre[H + j] = dhs * (h[j] - c) * z * (T(1) - z);
    dpre[2 * H + j] = e_n;
    dv[j] = e_n;
    direct[j] = dhs * z;
  }
}

// From dv (d of v = x_n + r * rec_n): r's pre-activation gradient, and the candidate's parts of dxa and ds.
template <typename T>
inline void gru_joint_r_bwd(const T* __restrict act, const T* __restrict rec_n, const T* __restrict dv,
                            T* __restrict dpre, T* __restrict dx_n, T* __restrict ds_n, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = act[j];
    dpre[j] = dv[j] * rec_n[j] * r * (T(1) - r);
    dx_n[j] = dv[j];
    ds_n[j] = dv[j] * r;
  }
}

// dst = gamma * src (or a copy).
template <typename T>
inline void scaled_copy(T* __restrict dst, const T* __restrict src, const T* __restrict gamma, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) dst[f] = gamma ? gamma[f] * src[f] : src[f];
}

template <typename T>
std::vector<at::Tensor> gru_joint_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& w_hh,
                                               const at::Tensor& bias_ih, const at::Tensor& bias_hh,
                                               const at::Tensor& gamma_g, const at::Tensor& gamma_n,
                                               const at::Tensor& mask, const at::Tensor& fmg, const at::Tensor& fvg,
                                               const at::Tensor& fmn, const at::Tensor& fvn, int64_t kind_g,
                                               int64_t kind_n, double eps_, bool keep, const Reducer& reduce) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 3, H2 = 2 * H;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_g = gamma_g.numel() > 0, has_n = gamma_n.numel() > 0;
  // Batch statistics need every row of the step first: extra row passes. Given statistics (eval) do not.
  const bool col_g = has_g && kind_g == BATCH, col_n = has_n && kind_n == BATCH;
  const States<T> h_all(h0, T_, keep);
  auto acts = pooled_empty({Tk, N, G}, o), rec_n_all = pooled_empty({Tk, N, H}, o);
  auto uhat_all = pooled_empty({Tk, N, H2}, o), vhat_all = pooled_empty({Tk, N, H}, o), out = at::empty({T_, N, H}, o);
  auto rstd_g = rstd_buffer(kind_g, Tk, N, H2, o), rstd_n = rstd_buffer(kind_n, Tk, N, H, o);
  auto mean_g = stats_buffer(kind_g, T_, H2, o), var_g = stats_buffer(kind_g, T_, H2, o);
  auto mean_n = stats_buffer(kind_n, T_, H, o), var_n = stats_buffer(kind_n, T_, H, o);
  auto count_g = kind_g == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto count_n = kind_n == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto s = at::empty({N, G}, o);
  const StepGemm<T> gemm(w_hh.t(), N, T_);  // s = h W_hh^T
  std::vector<T> colmean_g(H2), colmean_n(H);
  const T *gg = ptr<T>(gamma_g), *gn = ptr<T>(gamma_n), *bi = ptr<T>(bias_ih), *bh = ptr<T>(bias_hh);
  const T* b_in = bi ? bi + H2 : nullptr;
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  const T* sp = s.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t tk = keep ? t : 0;
    gemm(s.data_ptr<T>(), h_all.ptr(t), H);
    const bool* m = mk ? mk + t * N : nullptr;
    const T* x_t = xa.data_ptr<T>() + t * N * G;
    T* a_t = acts.data_ptr<T>() + tk * N * G;
    T* rn_t = rec_n_all.data_ptr<T>() + tk * N * H;
    T* uh_t = uhat_all.data_ptr<T>() + tk * N * H2;
    T* vh_t = vhat_all.data_ptr<T>() + tk * N * H;
    T* rg = rstd_g.data_ptr<T>() + tk * rstd_g.size(1) * rstd_g.size(2);
    T* rn = rstd_n.data_ptr<T>() + tk * rstd_n.size(1) * rstd_n.size(2);
    const T* hp = h_all.ptr(t);
    T* hn = h_all.ptr(t + 1);
    T* o_t = out.data_ptr<T>() + t * N * H;
    auto form_u = [&](int64_t n) {
      pre_activation<T>(uh_t + n * H2, sp + n * G, static_cast<const T*>(nullptr), static_cast<const T*>(nullptr),
                        x_t + n * G, H2);
    };
    auto gates = [&](int64_t n) {
      T* u = uh_t + n * H2;
      if (has_g) normalize_row(u, H2, kind_g, eps, colmean_g.data(), rg, u, rg + n);
      gru_joint_rz_fwd<T>(u, gg, bi, bh, x_t + n * G + H2, sp + n * G + H2, a_t + n * G, rn_t + n * H, vh_t + n * H,
                          H);
    };
    auto candidate = [&](int64_t n) {
      T* v = vh_t + n * H;
      if (has_n) normalize_row(v, H, kind_n, eps, colmean_n.data(), rn, v, rn + n);
      gru_joint_n_fwd<T>(v, gn, b_in, hp + n * H, a_t + n * G, hn + n * H, o_t + n * H, H);
      if (m != nullptr && !m[n]) hold_row<T>(hp + n * H, hn + n * H, o_t + n * H, H);
    };
    if (has_g && kind_g == BATCH_FIXED) {
      col_stats<T>(uh_t, N, H2, m, ptr<T>(fmg) + t * H2, ptr<T>(fvg) + t * H2, eps, kind_g, colmean_g.data(), rg,
                   static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    }
    if (has_n && kind_n == BATCH_FIXED) {
      col_stats<T>(vh_t, N, H, m, ptr<T>(fmn) + t * H, ptr<T>(fvn) + t * H, eps, kind_n, colmean_n.data(), rn,
                   static_cast<T*>(nullptr), static_cast<T*>(nullptr));
    }
    if (col_g) {
      for_rows(N, H2, form_u);
      count_g.data_ptr<T>()[t] = static_cast<T>(col_stats<T>(reduce, uh_t, N, H2, m, ptr<T>(fmg) + t * H2,
                                                              ptr<T>(fvg) + t * H2, eps, kind_g, colmean_g.data(),
                                                              rg, ptr<T>(mean_g) + t * H2, ptr<T>(var_g) + t * H2));
    }
    auto front = [&](int64_t n) {
      if (!col_g) form_u(n);
      gates(n);
    };
    if (col_n) {
      for_rows(N, G, front);
      count_n.data_ptr<T>()[t] = static_cast<T>(col_stats<T>(reduce, vh_t, N, H, m, ptr<T>(fmn) + t * H, ptr<T>(fvn) + t * H,
                                                              eps, kind_n, colmean_n.data(), rn, ptr<T>(mean_n) + t * H,
                                                              ptr<T>(var_n) + t * H));
      for_rows(N, H, candidate);
    } else {
      for_rows(N, G, [&](int64_t n) {
        front(n);
        candidate(n);
      });
    }
  }
  return {out, h_all.result(T_), acts, rec_n_all, uhat_all, vhat_all, rstd_g, rstd_n, mean_g, var_g, count_g, mean_n,
          var_n,
          count_n};
}

template <typename T>
std::vector<at::Tensor> gru_joint_backward_impl(const at::Tensor& dout, const at::Tensor& dhT,
                                                const at::Tensor& w_hh,
                                                const at::Tensor& gamma_g, const at::Tensor& gamma_n,
                                                const at::Tensor& mask, const at::Tensor& h_all,
                                                const at::Tensor& acts, const at::Tensor& rec_n_all,
                                                const at::Tensor& uhat_all, const at::Tensor& vhat_all,
                                                const at::Tensor& rstd_g, const at::Tensor& rstd_n,
                                                const at::Tensor& count_g, const at::Tensor& count_n, int64_t kind_g,
                                                int64_t kind_n, const Reducer& reduce) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 3, H2 = 2 * H;
  const bool has_g = gamma_g.numel() > 0, has_n = gamma_n.numel() > 0;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // dpre: d(pre-activations r, z, n), after the norms; ds: d(h W_hh^T); dxa = (du, dv).
  auto dxa = pooled_empty(acts.sizes(), o), ds_all = pooled_empty(acts.sizes(), o), dpre_all = pooled_empty(acts.sizes(), o);
  auto dh = dhT.clone(), dh_next = at::empty_like(dh), direct = at::empty_like(dh);
  // du and dv of one step, contiguous (N, F) for the column passes of batch norm's backward.
  auto du_buf = at::empty({N, H2}, o), dv_buf = at::empty({N, H}, o);
  const T *gg = ptr<T>(gamma_g), *gn = ptr<T>(gamma_n);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* du = du_buf.data_ptr<T>();
  T* dv = dv_buf.data_ptr<T>();
  T* dir = direct.data_ptr<T>();
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const bool* m = mk ? mk + t * N : nullptr;
    const T* a_t = acts.data_ptr<T>() + t * N * G;
    const T* rn_t = rec_n_all.data_ptr<T>() + t * N * H;
    const T* uh_t = uhat_all.data_ptr<T>() + t * N * H2;
    const T* vh_t = vhat_all.data_ptr<T>() + t * N * H;
    const T* rg = rstd_g.data_ptr<T>() + t * rstd_g.size(1) * rstd_g.size(2);
    const T* rn = rstd_n.data_ptr<T>() + t * rstd_n.size(1) * rstd_n.size(2);
    const T* hp = h_all.data_ptr<T>() + t * N * H;
    const T* do_t = dout.data_ptr<T>() + t * N * H;
    T* dx_t = dxa.data_ptr<T>() + t * N * G;
    T* ds_t = ds_all.data_ptr<T>() + t * N * G;
    T* dp_t = dpre_all.data_ptr<T>() + t * N * G;
    T* dhp = dh.data_ptr<T>();
    const bool col_g = has_g && kind_g == BATCH && count_g.data_ptr<T>()[t] >= 2;
    const bool col_n = has_n && kind_n == BATCH && count_n.data_ptr<T>()[t] >= 2;
    auto running = [&](int64_t n) { return m == nullptr || m[n]; };
    // A finished sequence: nothing flows into the step (and its zero rows keep the column sums clean); the
    // state's gradient passes through.
    auto finished = [&](int64_t n) {
      std::fill(dx_t + n * G, dx_t + (n + 1) * G, T(0));
      std::fill(ds_t + n * G, ds_t + (n + 1) * G, T(0));
      std::fill(dp_t + n * G, dp_t + (n + 1) * G, T(0));
      std::fill(du + n * H2, du + (n + 1) * H2, T(0));
      std::fill(dv + n * H, dv + (n + 1) * H, T(0));
      std::copy(dhp + n * H, dhp + (n + 1) * H, dir + n * H);
    };
    // From dh to dv: through the candidate's tanh and its norm (unless that needs the column pass).
    auto candidate = [&](int64_t n) {
      T* dp = dp_t + n * G;
      T* dvr = dv + n * H;
      gru_joint_n_bwd<T>(a_t + n * G, hp + n * H, dhp + n * H, do_t + n * H, dp, dvr, dir + n * H, H);
      if (has_n && !col_n) {
        denormalize_row(dp + H2, gn, vh_t + n * H, per_row(kind_n) ? rn[n] : T(0), rn, H, kind_n, dvr);
      } else if (has_n) {
        scaled_copy<T>(dvr, dp + H2, gn, H);
      }
    };
    // From dv through r to du: through the gates' sigmoid and norm (unless that needs the column pass).
    auto gates = [&](int64_t n) {
      T* dp = dp_t + n * G;
      T* dur = du + n * H2;
      gru_joint_r_bwd<T>(a_t + n * G, rn_t + n * H, dv + n * H, dp, dx_t + n * G + H2, ds_t + n * G + H2, H);
      if (has_g && !col_g) {
        denormalize_row(dp, gg, uh_t + n * H2, per_row(kind_g) ? rg[n] : T(0), rg, H2, kind_g, dur);
      } else {
        scaled_copy<T>(dur, dp, gg, H2);
      }
    };
    // du is both the input term's and the recurrent term's gradient for r and z.
    auto place_du = [&](int64_t n) {
      std::copy(du + n * H2, du + (n + 1) * H2, dx_t + n * G);
      std::copy(du + n * H2, du + (n + 1) * H2, ds_t + n * G);
    };
    auto back = [&](int64_t n) {
      gates(n);
      if (!col_g) place_du(n);
    };
    if (col_n) {
      for_rows(N, H, [&](int64_t n) { if (running(n)) candidate(n); else finished(n); });
      col_norm_bwd<T>(reduce, dv, vh_t, rn, N, H, m, static_cast<int64_t>(count_n.data_ptr<T>()[t]));
      for_rows(N, G, [&](int64_t n) { if (running(n)) back(n); });
    } else {
      for_rows(N, G, [&](int64_t n) {
        if (running(n)) {
          candidate(n);
          back(n);
        } else {
          finished(n);
        }
      });
    }
    if (col_g) {
      col_norm_bwd<T>(reduce, du, uh_t, rg, N, H2, m, static_cast<int64_t>(count_g.data_ptr<T>()[t]));
      for_rows(N, H2, [&](int64_t n) { if (running(n)) place_du(n); });
    }
    gemm(dh_next.data_ptr<T>(), ds_all.data_ptr<T>() + t * N * G, G, direct.data_ptr<T>());
    std::swap(dh, dh_next);
  }
  auto dw = ds_all.reshape({T_ * N, G}).t().mm(h_all.narrow(0, 0, T_).reshape({T_ * N, H}));
  auto d_rz = dpre_all.narrow(2, 0, H2), d_n = dpre_all.narrow(2, H2, H);
  auto db_rz = d_rz.sum({0, 1});
  auto dbias_ih = at::cat({db_rz, d_n.sum({0, 1})});
  auto dbias_hh = at::cat({db_rz, ds_all.narrow(2, H2, H).sum({0, 1})});  // b_hh_n sits inside r * (s_n + b_hh_n)
  auto dgamma_g = has_g ? (d_rz * uhat_all).sum({0, 1}) : at::empty({0}, o);
  auto dgamma_n = has_n ? (d_n * vhat_all).sum({0, 1}) : at::empty({0}, o);
  return {dxa, dh, dw, dbias_ih, dbias_hh, dgamma_g, dgamma_n};
}
