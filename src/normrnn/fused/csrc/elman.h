// elman.h: the Elman RNN time loop (tanh or relu), forward and backward.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== Elman RNN

template <typename T>
std::vector<at::Tensor> rnn_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const at::Tensor& bias, const at::Tensor& gamma_h, const at::Tensor& mask,
                                         const at::Tensor& fmh, const at::Tensor& fvh, int64_t kind_h, bool joint,
                                         bool relu, double eps_, bool keep, const Reducer& reduce) {
  const int64_t T_ = xa.size(0), N = xa.size(1), H = xa.size(2);
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0;
  const States<T> h_all(h0, T_, keep);
  auto act = pooled_empty({Tk, N, H}, o), out = at::empty({T_, N, H}, o);
  auto shat_all = has_h ? at::empty({Tk, N, H}, o) : at::empty({0}, o);
  auto rstd_h = rstd_buffer(kind_h, Tk, N, H, o);
  auto mean_h = stats_buffer(kind_h, T_, H, o), var_h = stats_buffer(kind_h, T_, H, o);
  auto count_h = kind_h == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto s = at::empty({N, H}, o), pre_buf = at::empty({N, H}, o);
  const StepGemm<T> gemm(w_hh.t(), N, T_);  // s = h W_hh^T
  std::vector<T> colmean(H);
  const T *gh = ptr<T>(gamma_h), *b = ptr<T>(bias);
  T* pre = pre_buf.data_ptr<T>();
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* sp = s.data_ptr<T>();
  for (int64_t t = 0; t < T_; ++t) {
    const int64_t tk = keep ? t : 0;
    gemm(sp, h_all.ptr(t), H, joint ? xa.data_ptr<T>() + t * N * H : nullptr);
    const bool* m = mk ? mk + t * N : nullptr;
    T* rh = rstd_h.data_ptr<T>() + tk * rstd_h.size(1) * rstd_h.size(2);
    if (has_h && per_col(kind_h)) {
      const int64_t cnt = col_stats<T>(reduce, sp, N, H, m, ptr<T>(fmh) + t * H, ptr<T>(fvh) + t * H, eps, kind_h,
                                       colmean.data(), rh, kind_h == BATCH ? ptr<T>(mean_h) + t * H : nullptr,
                                       kind_h == BATCH ? ptr<T>(var_h) + t * H : nullptr);
      if (kind_h == BATCH) count_h.data_ptr<T>()[t] = static_cast<T>(cnt);
    }
    const T* x_t = xa.data_ptr<T>() + t * N * H;
    T* y_t = act.data_ptr<T>() + tk * N * H;
    T* sh_t = ptr<T>(shat_all, tk * N * H);
    const T* hp = h_all.ptr(t);
    T* hn = h_all.ptr(t + 1);
    T* o_t = out.data_ptr<T>() + t * N * H;
    for_rows(N, H, [&](int64_t n) {
      T* srow = sp + n * H;
      T* a = pre + n * H;
      if (has_h) {
        T* sh = sh_t + n * H;
        normalize_row(srow, H, kind_h, eps, colmean.data(), rh, sh, rh + n);
        pre_activation<T>(a, sh, gh, b, joint ? nullptr : x_t + n * H, H);
      } else {
        pre_activation<T>(a, srow, static_cast<const T*>(nullptr), b, joint ? nullptr : x_t + n * H, H);
      }
      rnn_fwd<T>(a, y_t + n * H, hn + n * H, o_t + n * H, relu, H);
      if (m != nullptr && !m[n]) hold_row<T>(hp + n * H, hn + n * H, o_t + n * H, H);
    });
  }
  return {out, h_all.result(T_), act, shat_all, rstd_h, mean_h, var_h, count_h};
}

template <typename T>
std::vector<at::Tensor> rnn_backward_impl(const at::Tensor& dout, const at::Tensor& dhT, const at::Tensor& w_hh, const at::Tensor& gamma_h, const at::Tensor& mask,
                                          const at::Tensor& h_all, const at::Tensor& act,
                                          const at::Tensor& shat_all, const at::Tensor& rstd_h,
                                          const at::Tensor& count_h, int64_t kind_h, bool joint, bool relu,
                                          const Reducer& reduce) {
  const int64_t T_ = act.size(0), N = act.size(1), H = act.size(2);
  const bool has_h = gamma_h.numel() > 0;
  const auto o = act.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // As in the LSTM: ds = da = dxa without a norm; joint: dxa = ds, da one step's scratch; separate: dxa = da and
  // ds in the ring.
  auto dxa = pooled_empty(act.sizes(), o);
  auto da_step = joint && has_h ? at::empty({N, H}, o) : at::empty({0}, o);
  DsRing<T> ring(!has_h || joint ? dxa : at::Tensor(), T_, N, H, H, o);
  auto dbias = at::zeros({H}, o);
  auto dgamma = has_h ? at::zeros({H}, o) : at::empty({0}, o);
  auto dh = dhT.clone(), dh_next = at::empty_like(dh);
  const T* gh = ptr<T>(gamma_h);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  for (int64_t t = T_ - 1; t >= 0; --t) {
    const bool* m = mk ? mk + t * N : nullptr;
    const T* y_t = act.data_ptr<T>() + t * N * H;
    const T* sh_t = ptr<T>(shat_all, t * N * H);
    const T* rh = rstd_h.data_ptr<T>() + t * rstd_h.size(1) * rstd_h.size(2);
    const T* do_t = dout.data_ptr<T>() + t * dout.stride(0);
    T* ds_t = ring.slot(t);
    T* da_t = joint && has_h ? da_step.data_ptr<T>() : (has_h ? dxa.data_ptr<T>() + t * N * H : ds_t);
    T* dhp = dh.data_ptr<T>();
    const bool col_h = has_h && kind_h == BATCH && count_h.data_ptr<T>()[t] >= 2;
    for_rows(N, H, [&](int64_t n) {
      T* da = da_t + n * H;
      T* ds = ds_t + n * H;
      if (m != nullptr && !m[n]) {
        std::fill(da, da + H, T(0));
        if (ds != da) std::fill(ds, ds + H, T(0));
        return;
      }
      rnn_bwd<T>(y_t + n * H, dhp + n * H, do_t + n * dout.stride(1), da, relu, H);
      if (has_h && !col_h) {
        denormalize_row(da, gh, sh_t + n * H, per_row(kind_h) ? rh[n] : T(0), rh, H, kind_h, ds);
      } else if (has_h) {
#pragma omp simd
        for (int64_t f = 0; f < H; ++f) ds[f] = da[f] * gh[f];
      }
    });
    add_col_sums<T>(da_t, has_h ? sh_t : nullptr, N, H, dbias.data_ptr<T>(), ptr<T>(dgamma));
    if (col_h) col_norm_bwd<T>(reduce, ds_t, sh_t, rh, N, H, m, static_cast<int64_t>(count_h.data_ptr<T>()[t]));
    gemm(dh_next.data_ptr<T>(), ring.slot(t), ring.G);
    ring.done(t, h_all);
    if (m != nullptr) {
      T* dhx = dh_next.data_ptr<T>();
      for (int64_t n = 0; n < N; ++n)
        if (!m[n]) std::copy(dhp + n * H, dhp + (n + 1) * H, dhx + n * H);
    }
    std::swap(dh, dh_next);
  }
  return {dxa, dh, ring.weight_grad(h_all), dbias, dgamma};
}
