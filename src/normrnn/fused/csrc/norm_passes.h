// norm_passes.h: the input term's norms over all steps at once: layer and RMS norm rows, the inference norm in place,
// batch norm's running averages and batch norm over steps.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== layer and RMS norm rows
// The x-term layer norm or RMSNorm (no bias) over all steps at once, (R, F) rows, forward and backward: ATen has
// no fused CPU kernel for RMSNorm (F.rms_norm is five ops), which made RMSNorm slower than the fused layer norm
// it is meant to undercut; and F.layer_norm's outputs and gradients come from torch's allocator, where these come
// from the engine's buffer pool (pool.h): with F.layer_norm, the loop's freed buffers sat idle in the pool while
// layer norm's backward took fresh pages (peak memory one (T, N, 4H) buffer higher).

template <typename T>
std::vector<at::Tensor> row_norm_forward_impl(const at::Tensor& x, const at::Tensor& weight, int64_t kind,
                                              double eps_) {
  const int64_t F = x.size(-1), R = x.numel() / F;
  const T eps = static_cast<T>(eps_);
  const bool layer = kind == LAYER;
  auto y = pooled_empty(x.sizes(), x.options()), rstd = at::empty({R}, x.options());
  auto mean = layer ? at::empty({R}, x.options()) : at::empty({0}, x.options());
  const T* xp = x.data_ptr<T>();
  const T* w = ptr<T>(weight);
  T* yp = y.data_ptr<T>();
  T* rp = rstd.data_ptr<T>();
  T* mp = ptr<T>(mean);
  // Per row (row_norm_fwd): the mean (layer norm), the sum of squares about it, and the scaled row.
  for_rows(R, F, [&](int64_t r) {
    rp[r] = row_norm_fwd(xp + r * F, F, kind, eps, yp + r * F, w, layer ? mp + r : static_cast<T*>(nullptr));
  });
  return {y, mean, rstd};
}

template <typename T>
std::vector<at::Tensor> row_norm_backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                               const at::Tensor& mean, const at::Tensor& rstd, int64_t kind) {
  const int64_t F = x.size(-1), R = x.numel() / F;
  const bool layer = kind == LAYER;
  auto dx = pooled_empty(x.sizes(), x.options());
  const T* xp = x.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  const T* w = ptr<T>(weight);
  const T* rp = rstd.data_ptr<T>();
  const T* mp = ptr<T>(mean);
  T* dxp = dx.data_ptr<T>();
  // dweight = sum over rows of dy * x-hat: partial sums per chunk of rows, added up after.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, R));
  auto partial = at::zeros({chunks, F}, x.options());
  T* pp = partial.data_ptr<T>();
  std::vector<T> ones(w ? 0 : F, T(1));
  const T* g = w ? w : ones.data();
  // Per row, with xhat = (x - mean) * rstd and d = dy * gain: dx = rstd * (d - mean(d) - xhat * mean(d * xhat))
  // (RMS: no mean, and no mean(d)), in two passes, x-hat recomputed; the gain's gradient accumulates in the second.
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      T* __restrict acc = pp + c * F;
      for (int64_t r = c * R / chunks; r < (c + 1) * R / chunks; ++r) {
        const T* __restrict xr = xp + r * F;
        const T* __restrict dr = dyp + r * F;
        T* __restrict dxr = dxp + r * F;
        const T rr = rp[r], mu = layer ? mp[r] : T(0);
        const T m1 = layer ? lane_sum<T>(F, [&](int64_t f) { return dr[f] * g[f]; }) / F : T(0);
        const T m2 = lane_sum<T>(F, [&](int64_t f) { return dr[f] * g[f] * (xr[f] - mu) * rr; }) / F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          const T xh = (xr[f] - mu) * rr;
          dxr[f] = rr * (dr[f] * g[f] - m1 - xh * m2);
          acc[f] += dr[f] * xh;
        }
      }
    }
  });
  return {dx, w ? partial.sum(0) : at::empty({0}, x.options())};
}


// =========================================================================================== input term, inference
// The input term's norm for all steps, in place on W_ih x (T, N, F), times the gain: layer or RMS norm per row,
// or batch norm with given per-step statistics (eval). Inference only: nothing is kept for backward, and no
// second (T, N, F) buffer is allocated (a fresh one costs its page faults at every call).

template <typename T>
void norm_rows_inplace_impl(const at::Tensor& x, const at::Tensor& weight, int64_t kind, double eps_,
                            const at::Tensor& fix_mean, const at::Tensor& fix_var) {
  const int64_t T_ = x.size(0), N = x.size(1), F = x.size(2);
  const T eps = static_cast<T>(eps_);
  T* xp = x.data_ptr<T>();
  const T* w = ptr<T>(weight);
  if (per_row(kind)) {
    for_rows(T_ * N, F, [&](int64_t r) { row_norm_fwd(xp + r * F, F, kind, eps, xp + r * F, w); });
    return;
  }
  TORCH_CHECK(kind == BATCH_FIXED, "norm_rows_: layer, rms or batch norm with given statistics only");
  const T* fm = fix_mean.data_ptr<T>();
  const T* fv = fix_var.data_ptr<T>();
  at::parallel_for(0, T_, std::max<int64_t>(1, 16384 / std::max<int64_t>(N * F, 1)), [&](int64_t b, int64_t e) {
    std::vector<T> scale(F);
    for (int64_t t = b; t < e; ++t) {
      const T* __restrict mean = fm + t * F;
      for (int64_t f = 0; f < F; ++f) scale[f] = (w ? w[f] : T(1)) / std::sqrt(fv[t * F + f] + eps);
      const T* __restrict sc = scale.data();
      for (int64_t n = 0; n < N; ++n) {
        T* __restrict row = xp + (t * N + n) * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) row[f] = (row[f] - mean[f]) * sc[f];
      }
    }
  });
}


// =========================================================================================== running averages
// Batch norm's running statistics after a training call over the steps first .. first + T - 1, as
// RecurrentBatchNorm._update_running computes them: each row first + t < max_steps whose step had two or more
// running sequences moves toward that step's mean and unbiased variance. One pass instead of a dozen small ATen
// calls per norm (three norms per layer and direction). Returns 1 + the last step updated, or 0.
template <typename T>
int64_t bn_update_running_impl(const at::Tensor& rm, const at::Tensor& rv, const at::Tensor& mean,
                               const at::Tensor& var, const at::Tensor& count, int64_t first, double momentum) {
  const int64_t rows = rm.size(0), F = rm.size(1), T_ = mean.size(0);
  T* pm = rm.data_ptr<T>();
  T* pv = rv.data_ptr<T>();
  const T* mp = mean.data_ptr<T>();
  const T* vp = var.data_ptr<T>();
  const T* cp = count.data_ptr<T>();
  const T w = static_cast<T>(momentum), keep = static_cast<T>(1.0 - momentum);
  int64_t longest = 0;
  for (int64_t t = 0; t < T_ && first + t < rows; ++t) {
    if (first + t < 0 || cp[t] < 2) continue;
    const T k = w * cp[t] / (cp[t] - 1);
    T* __restrict rmr = pm + (first + t) * F;
    T* __restrict rvr = pv + (first + t) * F;
    const T* __restrict mr = mp + t * F;
    const T* __restrict vr = vp + t * F;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) {
      rmr[f] = w < T(0.5) ? rmr[f] + w * (mr[f] - rmr[f]) : mr[f] - (mr[f] - rmr[f]) * keep;  // torch's lerp
      rvr[f] = rvr[f] * keep + vr[f] * k;
    }
    longest = first + t + 1;
  }
  // What ATen's in-place ops do: a tensor autograd saved that is (a view of) these buffers is now stale.
  rm.unsafeGetTensorImpl()->bump_version();
  rv.unsafeGetTensorImpl()->bump_version();
  return longest;
}


// =========================================================================================== batch norm over steps
// The input term's recurrent batch norm for all T steps at once: per step, statistics over the running
// sequences (or the given ones), parallel over steps. Replaces about fifteen full-size ATen passes.

template <typename T>
std::vector<at::Tensor> bn_steps_forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& mask,
                                              const at::Tensor& fix_mean, const at::Tensor& fix_var, double eps_,
                                              bool training) {
  const int64_t T_ = x.size(0), N = x.size(1), F = x.size(2);
  const T eps = static_cast<T>(eps_);
  const auto o = x.options();
  auto y = pooled_empty(x.sizes(), o), mean = at::empty({T_, F}, o), rstd = at::empty({T_, F}, o);
  // The statistics to report for the running averages (training only: col_stats fills every step's row).
  auto mean_out = training ? at::empty({T_, F}, o) : at::empty({0}, o);
  auto var_out = training ? at::empty({T_, F}, o) : at::empty({0}, o);
  auto count = training ? at::empty({T_}, o) : at::empty({0}, o);
  const T* xp = x.data_ptr<T>();
  const T* w = ptr<T>(weight);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T *yp = y.data_ptr<T>(), *mp = mean.data_ptr<T>(), *rp = rstd.data_ptr<T>(), *cp = ptr<T>(count);
  T *mo = ptr<T>(mean_out), *vo = ptr<T>(var_out);
  at::parallel_for(0, T_, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const T* xt = xp + t * N * F;
      const int64_t cnt = col_stats<T>(xt, N, F, mk ? mk + t * N : nullptr, fix_mean.data_ptr<T>() + t * F,
                                       fix_var.data_ptr<T>() + t * F, eps, training ? BATCH : BATCH_FIXED,
                                       mp + t * F, rp + t * F, mo ? mo + t * F : nullptr, vo ? vo + t * F : nullptr);
      if (cp) cp[t] = static_cast<T>(cnt);
      for (int64_t n = 0; n < N; ++n) {
        normalize_row(xt + n * F, F, BATCH_FIXED, eps, mp + t * F, rp + t * F, yp + (t * N + n) * F,
                      static_cast<T*>(nullptr));
        if (w) scale_shift<T>(yp + (t * N + n) * F, w, static_cast<const T*>(nullptr), F);
      }
    }
  });
  return {y, mean, rstd, mean_out, var_out, count};
}

template <typename T>
std::vector<at::Tensor> bn_steps_backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                               const at::Tensor& mask, const at::Tensor& mean,
                                               const at::Tensor& rstd, const at::Tensor& count, bool training) {
  const int64_t T_ = x.size(0), N = x.size(1), F = x.size(2);
  auto dx = pooled_empty(x.sizes(), x.options()), dw_steps = at::empty({T_, F}, x.options());  // (every step writes its row)
  const T *xp = x.data_ptr<T>(), *dyp = dy.data_ptr<T>(), *w = ptr<T>(weight), *mp = mean.data_ptr<T>(),
          *rp = rstd.data_ptr<T>(), *cp = ptr<T>(count);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* dxp = dx.data_ptr<T>();
  T* dwp = dw_steps.data_ptr<T>();
  std::vector<T> ones(w ? 0 : F, T(1));
  const T* g = w ? w : ones.data();
  // Per step, two passes over the rows with x-hat recomputed on the fly (nothing but dx is written): the column
  // sums of dy and dy * x-hat (the gain's gradient, and with the gain the two means batch norm's backward
  // subtracts), then dx. (Keeping x-hat and dy * gain and normalizing those took 1.5x as long: 1.8 against
  // 1.2 ms at T=100, N=32, F=1024.)
  at::parallel_for(0, T_, 1, [&](int64_t b, int64_t e) {
    std::vector<T> sum_dy(F), sum_dy_xhat(F);
    for (int64_t t = b; t < e; ++t) {
      const bool* m = mk ? mk + t * N : nullptr;
      const T* __restrict mu = mp + t * F;
      const T* __restrict r = rp + t * F;
      T* __restrict dw = dwp + t * F;
      T* __restrict s1 = sum_dy.data();
      T* __restrict s2 = sum_dy_xhat.data();
      std::fill(s1, s1 + F, T(0));
      std::fill(s2, s2 + F, T(0));
      for (int64_t n = 0; n < N; ++n) {
        if (m != nullptr && !m[n]) continue;  // finished rows were not counted: no gradient
        const T* __restrict xr = xp + (t * N + n) * F;
        const T* __restrict dr = dyp + (t * N + n) * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          s1[f] += dr[f];
          s2[f] += dr[f] * (xr[f] - mu[f]) * r[f];
        }
      }
      const bool batch_stats = training && cp[t] >= 2;
      const T inv = batch_stats ? T(1) / cp[t] : T(0);
      for (int64_t f = 0; f < F; ++f) {
        dw[f] = s2[f];
        // mean over running rows of dy * gain, and of dy * gain * x-hat; 0 with given statistics, set rather
        // than multiplied by 0, which would spread one sequence's NaN into every other sequence's gradient
        s1[f] = batch_stats ? s1[f] * g[f] * inv : T(0);
        s2[f] = batch_stats ? s2[f] * g[f] * inv : T(0);
      }
      for (int64_t n = 0; n < N; ++n) {
        T* __restrict dxr = dxp + (t * N + n) * F;
        if (m != nullptr && !m[n]) {
          std::fill(dxr, dxr + F, T(0));
          continue;
        }
        const T* __restrict xr = xp + (t * N + n) * F;
        const T* __restrict dr = dyp + (t * N + n) * F;
        if (!batch_stats) {  // (x-hat times a zero mean would make an infinite x-hat NaN where autograd has 0)
#pragma omp simd
          for (int64_t f = 0; f < F; ++f) dxr[f] = r[f] * dr[f] * g[f];
          continue;
        }
#pragma omp simd
        for (int64_t f = 0; f < F; ++f)
          dxr[f] = r[f] * (dr[f] * g[f] - s1[f] - (xr[f] - mu[f]) * r[f] * s2[f]);
      }
    }
  });
  return {dx, w ? dw_steps.sum(0) : at::empty({0}, x.options())};
}
