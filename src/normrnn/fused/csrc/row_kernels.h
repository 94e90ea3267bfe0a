// row_kernels.h: what one pass over a row (or a column block) computes: norm kinds, activations, the norms
// per row and per column, and the cell kernels of one step.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

constexpr int64_t NONE = 0, LAYER = 1, RMS = 2, BATCH = 3, BATCH_FIXED = 4;

inline bool per_row(int64_t k) { return k == LAYER || k == RMS; }
inline bool per_col(int64_t k) { return k == BATCH || k == BATCH_FIXED; }

// ------------------------------------------------------------------------------------------- activations
// float: a polynomial exp the compiler can vectorize (libm's expf is a scalar call); relative error ~2e-7.
// double: libm, since double is for gradient checks, not speed.

inline float fast_exp(float x) {
  // Clamped so 2^n stays a normal float, written so a NaN fails both tests and stays NaN: std::max(-87, NaN) is
  // -87, which made a NaN input a plausible number and hid divergence from the user and from GradScaler.
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // round to nearest by adding 1.5 * 2^23: unlike std::floor, the compiler vectorizes this
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.98756915e-4f;
  p = p * r + 1.39819994e-3f;
  p = p * r + 8.33345205e-3f;
  p = p * r + 4.16657962e-2f;
  p = p * r + 1.66666657e-1f;
  p = p * r + 5.00000012e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * __builtin_bit_cast(float, bits);
}

inline float sigm(float x) { return 1.0f / (1.0f + fast_exp(-x)); }
inline float tanh_(float x) { return 2.0f / (1.0f + fast_exp(-2.0f * x)) - 1.0f; }
inline double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_(double x) { return std::tanh(x); }

// ------------------------------------------------------------------------------------------- norms

// The sum of term(i) for i < n, in 32 independent lanes: a single vector accumulator would make every add wait
// for the previous one (measured: a row's mean and variance took 4 cycles per 8 values, latency-bound).
template <typename T, typename Term>
inline T lane_sum(int64_t n, const Term& term) {
  constexpr int64_t L = 32;
  T acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
#pragma omp simd
    for (int64_t k = 0; k < L; ++k) acc[k] += term(i + k);
  }
  for (int64_t k = 0; i < n; ++i, ++k) acc[k] += term(i);  // the tail (< L values), one per lane
  // Fold the lanes pairwise: five dependent adds, where summing them one by one was 32 (about 100 cycles of
  // latency per call, and a normalized LSTM step makes four such calls per row).
  for (int64_t w = L / 2; w >= 1; w /= 2) {
#pragma omp simd
    for (int64_t k = 0; k < w; ++k) acc[k] += acc[k + w];
  }
  return acc[0];
}

// Normalize one row s (F) into shat (may be s itself), times gain when one is given; returns 1/sqrt(var + eps)
// (layer) or 1/sqrt(mean square + eps) (rms), and the mean (0 for rms) in *mean_out when given.
template <typename T>
inline T row_norm_fwd(const T* s, int64_t F, int64_t kind, T eps, T* shat, const T* gain = nullptr,
                      T* mean_out = nullptr) {
  const T mean = kind == LAYER ? lane_sum<T>(F, [&](int64_t i) { return s[i]; }) / F : T(0);
  if (mean_out) *mean_out = mean;
  const T var = lane_sum<T>(F, [&](int64_t i) { return (s[i] - mean) * (s[i] - mean); });
  const T r = T(1) / std::sqrt(var / F + eps);
  if (gain) {  // (one loop per case: see pre_activation)
#pragma omp simd
    for (int64_t i = 0; i < F; ++i) shat[i] = (s[i] - mean) * r * gain[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < F; ++i) shat[i] = (s[i] - mean) * r;
  }
  return r;
}

// ds from dshat for one row (may alias dshat).
template <typename T>
inline void row_norm_bwd(const T* dshat, const T* __restrict shat, T rstd, int64_t F, int64_t kind, T* ds) {
  const T m1 = kind == LAYER ? lane_sum<T>(F, [&](int64_t i) { return dshat[i]; }) / F : T(0);
  const T m2 = lane_sum<T>(F, [&](int64_t i) { return dshat[i] * shat[i]; }) / F;
#pragma omp simd
  for (int64_t i = 0; i < F; ++i) ds[i] = rstd * (dshat[i] - m1 - shat[i] * m2);
}

// Run f(begin, end) over blocks of the F columns of an (N, F) array, in parallel when there is enough work.
template <typename Fn>
inline void for_cols(int64_t N, int64_t F, const Fn& f) {
  const int64_t grain = std::max<int64_t>(64, 16384 / std::max<int64_t>(N, 1));
  at::parallel_for(0, F, grain, f);
}

// Column statistics of s (N, F) over running rows. Fills mean (F) and rstd (F) to normalize with; for the batch
// kind also the statistics to report (mean_out/var_out) and returns the count (< 2: the given ones were used).
template <typename T>
int64_t col_stats(const T* s, int64_t N, int64_t F, const bool* m, const T* fix_mean, const T* fix_var, T eps,
                  int64_t kind, T* mean, T* rstd, T* mean_out, T* var_out) {
  int64_t count = 0;
  if (kind == BATCH) {
    for (int64_t n = 0; n < N; ++n) count += (m == nullptr || m[n]) ? 1 : 0;
  }
  if (kind == BATCH && count >= 2) {
    for_cols(N, F, [&](int64_t b, int64_t e) {
      std::fill(mean + b, mean + e, T(0));
      std::fill(rstd + b, rstd + e, T(0));  // holds the variance until the end
      for (int64_t n = 0; n < N; ++n) {
        if (m != nullptr && !m[n]) continue;
        const T* row = s + n * F;
#pragma omp simd
        for (int64_t f = b; f < e; ++f) mean[f] += row[f];
      }
      for (int64_t f = b; f < e; ++f) mean[f] /= count;
      for (int64_t n = 0; n < N; ++n) {
        if (m != nullptr && !m[n]) continue;
        const T* row = s + n * F;
#pragma omp simd
        for (int64_t f = b; f < e; ++f) rstd[f] += (row[f] - mean[f]) * (row[f] - mean[f]);
      }
      for (int64_t f = b; f < e; ++f) {
        const T var = rstd[f] / count;
        rstd[f] = T(1) / std::sqrt(var + eps);
        mean_out[f] = mean[f];
        var_out[f] = var;
      }
    });
    return count;
  }
  for (int64_t f = 0; f < F; ++f) {
    mean[f] = fix_mean[f];
    rstd[f] = T(1) / std::sqrt(fix_var[f] + eps);
    if (kind == BATCH) {
      mean_out[f] = fix_mean[f];
      var_out[f] = fix_var[f];
    }
  }
  return count;
}

// Backward of batch statistics for one step: ds = rstd * (dshat - mean(dshat) - shat * mean(dshat*shat)) on
// running rows, 0 on finished ones. dshat is in ds already (N, F); rows of finished sequences hold 0.
template <typename T>
void col_norm_bwd(T* ds, const T* shat, const T* rstd, int64_t N, int64_t F, const bool* m, int64_t count) {
  for_cols(N, F, [&](int64_t b, int64_t e) {
    std::vector<T> s1v(e - b, T(0)), s2v(e - b, T(0));
    T* __restrict s1 = s1v.data() - b;  // indexed by column
    T* __restrict s2 = s2v.data() - b;
    for (int64_t n = 0; n < N; ++n) {
      const T* __restrict d = ds + n * F;
      const T* __restrict sh = shat + n * F;
#pragma omp simd
      for (int64_t f = b; f < e; ++f) {
        s1[f] += d[f];
        s2[f] += d[f] * sh[f];
      }
    }
    for (int64_t f = b; f < e; ++f) {
      s1[f] /= count;
      s2[f] /= count;
    }
    for (int64_t n = 0; n < N; ++n) {
      T* d = ds + n * F;
      if (m != nullptr && !m[n]) {
        std::fill(d + b, d + e, T(0));
        continue;
      }
      const T* sh = shat + n * F;
#pragma omp simd
      for (int64_t f = b; f < e; ++f) d[f] = rstd[f] * (d[f] - s1[f] - sh[f] * s2[f]);
    }
  });
}

// The same from d (N, F) before its gain, with the step's column sums of d and d * shat over all rows given
// (finished rows hold 0): out = rstd * (d * gain - gain * sum_d / count - shat * gain * sum_d_shat / count) on
// running rows, 0 on finished ones. The sums are those the bias and gain gradients need anyway, so the backward
// of batch norm costs one pass over the step instead of three.
template <typename T>
void col_norm_bwd_cols(T* out, const T* d, const T* gain, const T* shat, const T* rstd, const T* sum_d,
                       const T* sum_d_shat, int64_t N, int64_t F, const bool* m, T inv, int64_t b, int64_t e) {
  for (int64_t n = 0; n < N; ++n) {  // columns [b, e); inv = 1 / count
    T* __restrict o = out + n * F;
    if (m != nullptr && !m[n]) {
      std::fill(o + b, o + e, T(0));
      continue;
    }
    const T* __restrict dr = d + n * F;
    const T* __restrict sh = shat + n * F;
#pragma omp simd
    for (int64_t f = b; f < e; ++f)
      o[f] = rstd[f] * gain[f] * (dr[f] - sum_d[f] * inv - sh[f] * sum_d_shat[f] * inv);
  }
}

template <typename T>
void col_norm_bwd_from_sums(T* out, const T* d, const T* gain, const T* shat, const T* rstd, const T* sum_d,
                            const T* sum_d_shat, int64_t N, int64_t F, const bool* m, int64_t count) {
  const T inv = T(1) / count;
  for_cols(N, F, [&](int64_t b, int64_t e) {
    col_norm_bwd_cols<T>(out, d, gain, shat, rstd, sum_d, sum_d_shat, N, F, m, inv, b, e);
  });
}

// Run f(n) for every row, in parallel when the step has enough work to pay for it.
template <typename F>
inline void for_rows(int64_t N, int64_t width, const F& f) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(width, 1));
  at::parallel_for(0, N, grain, [&](int64_t b, int64_t e) {
    for (int64_t n = b; n < e; ++n) f(n);
  });
}

template <typename T>
inline T* ptr(const at::Tensor& t) {
  return t.numel() ? t.data_ptr<T>() : nullptr;
}

// `offset` elements into t, or null when t is empty (a buffer the configuration does not need).
template <typename T>
inline T* ptr(const at::Tensor& t, int64_t offset) {
  return t.numel() ? t.data_ptr<T>() + offset : nullptr;
}

// A step's batch statistics to report (T, F), batch kind only: col_stats writes every step's row (the batch's,
// or the given ones where fewer than two rows run), so nothing needs filling first.
at::Tensor stats_buffer(int64_t kind, int64_t T_, int64_t F, const at::TensorOptions& o) {
  return kind == BATCH ? at::empty({T_, F}, o) : at::empty({0}, o);
}

at::Tensor rstd_buffer(int64_t kind, int64_t T_, int64_t N, int64_t F, const at::TensorOptions& o) {
  return per_row(kind) ? at::empty({T_, N, 1}, o) : at::empty({T_, 1, F}, o);
}

// The normalized term of one row: shat from s (per-row or with column statistics), z = gamma * shat.
// Returns nothing; writes shat_row and (per-row kinds) *rstd_row.
template <typename T>
inline void normalize_row(const T* srow, int64_t F, int64_t kind, T eps, const T* colmean, const T* colrstd,
                          T* shat_row, T* rstd_row) {
  if (per_row(kind)) {
    *rstd_row = row_norm_fwd(srow, F, kind, eps, shat_row);
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) shat_row[f] = (srow[f] - colmean[f]) * colrstd[f];
  }
}

// shat of one row again, from the raw row and the rstd (per-row kinds) or column mean and rstd forward used: the
// same operations as normalize_row, so the same values bit for bit, without keeping T steps of shat.
template <typename T>
inline void renormalize_row(const T* srow, int64_t F, int64_t kind, const T* colmean, const T* colrstd,
                            T rstd_row, T* shat_row) {
  if (per_row(kind)) {
    const T mean = kind == LAYER ? lane_sum<T>(F, [&](int64_t i) { return srow[i]; }) / F : T(0);
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) shat_row[f] = (srow[f] - mean) * rstd_row;
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) shat_row[f] = (srow[f] - colmean[f]) * colrstd[f];
  }
}

// dS from dZ (dz = d of gamma*shat) for one row, for the kinds that need no column reduction.
template <typename T>
inline void denormalize_row(const T* dz, const T* gamma, const T* shat_row, T rstd_row, const T* colrstd,
                            int64_t F, int64_t kind, T* ds) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) ds[f] = dz[f] * gamma[f];
  if (per_row(kind)) {
    row_norm_bwd(ds, shat_row, rstd_row, F, kind, ds);
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) ds[f] *= colrstd[f];
  }
}

// ------------------------------------------------------------------------------------------- cell kernels
// Each is one vectorizable loop over a row; pointers name disjoint ranges (hence __restrict).

// a = gamma * z + b (+ x): a gate pre-activation row from the (normalized) recurrent term z.
template <bool kGain, bool kBias, bool kX, typename T>
inline void pre_activation_rows(T* __restrict a, const T* __restrict z, const T* __restrict gamma,
                                const T* __restrict b, const T* __restrict x, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) {
    T v = kGain ? gamma[f] * z[f] : z[f];
    if constexpr (kBias) v += b[f];
    if constexpr (kX) v += x[f];
    a[f] = v;
  }
}

template <bool kGain, typename T>
inline void pre_activation_gain(T* a, const T* z, const T* gamma, const T* b, const T* x, int64_t F) {
  if (b) {
    x ? pre_activation_rows<kGain, true, true>(a, z, gamma, b, x, F)
      : pre_activation_rows<kGain, true, false>(a, z, gamma, b, x, F);
  } else {
    x ? pre_activation_rows<kGain, false, true>(a, z, gamma, b, x, F)
      : pre_activation_rows<kGain, false, false>(a, z, gamma, b, x, F);
  }
}

// One loop per combination of present operands: a test of a pointer inside the vector loop made it load under
// a mask (RMS norm's absent cell bias made its kernel ~10% slower than layer norm's).
template <typename T>
inline void pre_activation(T* a, const T* z, const T* gamma, const T* b, const T* x, int64_t F) {
  gamma ? pre_activation_gain<true>(a, z, gamma, b, x, F) : pre_activation_gain<false>(a, z, gamma, b, x, F);
}

// LSTM gates in place (i, f, g, o activations) and the new cell c = f * c_prev + i * g.
template <typename T>
inline void lstm_gates_fwd(T* __restrict ai, T* __restrict af, T* __restrict ag, T* __restrict ao,
                           const T* __restrict cprev, T* __restrict cnew, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = sigm(ai[j]), f = sigm(af[j]), g = tanh_(ag[j]), o = sigm(ao[j]);
    ai[j] = i;
    af[j] = f;
    ag[j] = g;
    ao[j] = o;
    cnew[j] = f * cprev[j] + i * g;
  }
}

// c_out = gamma * chat + beta (the normalized cell, or c_new itself when there is no cell norm).
template <typename T>
inline void affine(T* __restrict out, const T* __restrict x, const T* __restrict gamma, const T* __restrict beta,
                   int64_t F) {
  if (gamma && beta) {  // (one loop per case: see pre_activation)
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) out[f] = gamma[f] * x[f] + beta[f];
  } else if (gamma) {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) out[f] = gamma[f] * x[f];
  } else {
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) out[f] = x[f] + (beta ? beta[f] : T(0));
  }
}

// h = o * tanh(c_out); the output row gets h too (unless it is null: the output is the kept states themselves).
template <typename T>
inline void lstm_h_fwd(const T* __restrict o, const T* __restrict cout, T* __restrict tc, T* __restrict h,
                       T* __restrict out, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T th = tanh_(cout[j]);
    tc[j] = th;
    h[j] = o[j] * th;
  }
  if (out != nullptr) std::copy(h, h + H, out);
}

// d(c_out) = dh * o * (1 - tanh^2) (+ dc when the carried cell is c_out). (One loop per case: see pre_activation.)
template <typename T>
inline void lstm_cout_bwd(const T* __restrict dh, const T* __restrict dout, const T* __restrict o,
                          const T* __restrict tc, const T* __restrict dc, T* __restrict dcout, int64_t H) {
  if (dc) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dcout[j] = (dh[j] + dout[j]) * o[j] * (T(1) - tc[j] * tc[j]) + dc[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dcout[j] = (dh[j] + dout[j]) * o[j] * (T(1) - tc[j] * tc[j]);
  }
}

// The gates' pre-activation gradients from dc_new (+ dc when the raw cell is carried) and dh; dc_prev.
template <bool kDc, typename T>
inline void lstm_gates_bwd_rows(const T* __restrict act, const T* __restrict dcnew, const T* __restrict dc,
                                const T* __restrict dh, const T* __restrict dout, const T* __restrict tc,
                                const T* __restrict cprev, T* __restrict da, T* __restrict dcprev, int64_t H) {
  const T* __restrict ai = act;
  const T* __restrict af = act + H;
  const T* __restrict ag = act + 2 * H;
  const T* __restrict ao = act + 3 * H;
  T* __restrict di = da;
  T* __restrict df = da + H;
  T* __restrict dg = da + 2 * H;
  T* __restrict dov = da + 3 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T i = ai[j], f = af[j], g = ag[j], o = ao[j];
    const T dcn = kDc ? dcnew[j] + dc[j] : dcnew[j];
    di[j] = dcn * g * i * (T(1) - i);
    df[j] = dcn * cprev[j] * f * (T(1) - f);
    dg[j] = dcn * i * (T(1) - g * g);
    dov[j] = (dh[j] + dout[j]) * tc[j] * o * (T(1) - o);
    dcprev[j] = dcn * f;
  }
}

template <typename T>
inline void lstm_gates_bwd(const T* act, const T* dcnew, const T* dc, const T* dh, const T* dout, const T* tc,
                           const T* cprev, T* da, T* dcprev, int64_t H) {
  if (dc) {  // (one loop per case: see pre_activation)
    lstm_gates_bwd_rows<true>(act, dcnew, dc, dh, dout, tc, cprev, da, dcprev, H);
  } else {
    lstm_gates_bwd_rows<false>(act, dcnew, dc, dh, dout, tc, cprev, da, dcprev, H);
  }
}

// GRU: r, u, candidate from x (T·(3H), with b_ih) and rec (normalized recurrent term + b_hh); the new h.
template <typename T>
inline void gru_fwd(const T* __restrict x, const T* __restrict rec, const T* __restrict h, T* __restrict act,
                    T* __restrict rec_n, T* __restrict hn, T* __restrict out, int64_t H) {
  T* __restrict ar = act;
  T* __restrict au = act + H;
  T* __restrict an = act + 2 * H;
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = sigm(x[j] + rec[j]), u = sigm(x[H + j] + rec[H + j]);
    const T c = tanh_(x[2 * H + j] + r * rec[2 * H + j]);
    ar[j] = r;
    au[j] = u;
    an[j] = c;
    rec_n[j] = rec[2 * H + j];
    const T hv = c + u * (h[j] - c);
    hn[j] = hv;
    out[j] = hv;
  }
}

template <typename T>
inline void gru_bwd(const T* __restrict act, const T* __restrict rec_n, const T* __restrict h,
                    const T* __restrict dh, const T* __restrict dout, T* __restrict dx, T* __restrict drec,
                    T* __restrict direct, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T r = act[j], u = act[H + j], c = act[2 * H + j];
    const T dhs = dh[j] + dout[j];
    const T da_n = dhs * (T(1) - u) * (T(1) - c * c);
    const T da_r = da_n * rec_n[j] * r * (T(1) - r);
    const T da_u = dhs * (h[j] - c) * u * (T(1) - u);
    dx[j] = da_r;
    dx[H + j] = da_u;
    dx[2 * H + j] = da_n;
    drec[j] = da_r;
    drec[H + j] = da_u;
    drec[2 * H + j] = da_n * r;
    direct[j] = dhs * u;
  }
}

template <typename T>
inline void rnn_fwd(const T* __restrict a, T* __restrict y, T* __restrict hn, T* __restrict out, bool relu,
                    int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    // (relu written so a NaN stays NaN, as torch.relu has it: `a > 0 ? a : 0` made it 0)
    const T v = relu ? (a[j] < T(0) ? T(0) : a[j]) : tanh_(a[j]);
    y[j] = v;
    hn[j] = v;
    out[j] = v;
  }
}

template <typename T>
inline void rnn_bwd(const T* __restrict y, const T* __restrict dh, const T* __restrict dout, T* __restrict da,
                    bool relu, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T dhs = dh[j] + dout[j];
    // (relu's backward as torch's threshold_backward: 0 where y <= 0, else dhs, so a NaN y passes dhs on)
    da[j] = relu ? (y[j] <= T(0) ? T(0) : dhs) : dhs * (T(1) - y[j] * y[j]);
  }
}

// a += gamma * x (or a += x): the input term added to a pre-activation.
template <typename T>
inline void add_scaled(T* __restrict a, const T* __restrict x, const T* __restrict gamma, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) a[f] += gamma ? gamma[f] * x[f] : x[f];
}

// v = gamma * v + beta, in place.
template <typename T>
inline void scale_shift(T* __restrict v, const T* __restrict gamma, const T* __restrict beta, int64_t F) {
#pragma omp simd
  for (int64_t f = 0; f < F; ++f) v[f] = gamma[f] * v[f] + (beta ? beta[f] : T(0));
}

// h = o * tanh(c_out), nothing kept.
template <typename T>
inline void lstm_h_only(const T* __restrict o, const T* __restrict cout, T* __restrict h, int64_t H) {
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) h[j] = o[j] * tanh_(cout[j]);
}

// A finished sequence keeps its state and outputs zero.
template <typename T>
inline void hold_row(const T* __restrict prev, T* __restrict next, T* __restrict out, int64_t H) {
  std::copy(prev, prev + H, next);
  if (out) std::fill(out, out + H, T(0));
}
