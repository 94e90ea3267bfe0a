// The fused time loop of normrnn's LSTM, GRU and Elman RNN cells, forward and backward, on the CPU.
//
// Same functions, arguments and results as normrnn/fused/torch_engine.py, which is the readable specification;
// the tests hold the two (and the reference loop) against each other. Per time step: one GEMM for the
// recurrent term into a preallocated buffer, then one pass over the batch rows that does norm + gates + cell
// update (parallel over rows). Batch norm needs statistics across rows, so it adds a column pass before the
// row pass. Backward mirrors it; it sums the bias and gain gradients step by step and reduces dW_hh a block of
// steps at a time, so that its only buffer as long as the sequence is the input term's gradient.
//
// Norm kinds: 0 none, 1 layer, 2 rms, 3 batch (batch statistics), 4 batch with given per-step statistics.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t NONE = 0, LAYER = 1, RMS = 2, BATCH = 3, BATCH_FIXED = 4;

inline bool per_row(int64_t k) { return k == LAYER || k == RMS; }
inline bool per_col(int64_t k) { return k == BATCH || k == BATCH_FIXED; }

// ------------------------------------------------------------------------------------------- activations
// float: a polynomial exp the compiler can vectorize (libm's expf is a scalar call); relative error ~2e-7.
// double: libm, since double is for gradient checks, not speed.

inline float fast_exp(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
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
// (layer) or 1/sqrt(mean square + eps) (rms).
template <typename T>
inline T row_norm_fwd(const T* s, int64_t F, int64_t kind, T eps, T* shat, const T* gain = nullptr) {
  const T mean = kind == LAYER ? lane_sum<T>(F, [&](int64_t i) { return s[i]; }) / F : T(0);
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
void col_norm_bwd_from_sums(T* out, const T* d, const T* gain, const T* shat, const T* rstd, const T* sum_d,
                            const T* sum_d_shat, int64_t N, int64_t F, const bool* m, int64_t count) {
  const T inv = T(1) / count;
  for_cols(N, F, [&](int64_t b, int64_t e) {
    for (int64_t n = 0; n < N; ++n) {
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
    const T v = relu ? (a[j] > T(0) ? a[j] : T(0)) : tanh_(a[j]);
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
    da[j] = relu ? (y[j] > T(0) ? dhs : T(0)) : dhs * (T(1) - y[j] * y[j]);
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

// =========================================================================================== per-step GEMM
// Every step multiplies by the same recurrent matrix. An ordinary sgemm repacks that matrix into its kernel's
// layout on every call (at N=32, H=256 about a sixth of the step's GEMM time here); MKL's packed GEMM packs it
// once per call instead, which is what oneDNN's RNN does for nn.LSTM. torch's x86 builds carry MKL inside
// libtorch_cpu, so its cblas_sgemm_pack/compute are looked up there at run time; without them (other builds),
// and for double, the steps run at::mm_out on a contiguous copy.

namespace mkl {
// CBLAS constants and the LP64 signatures (MKL_INT = int), as in MKL's mkl_cblas.h.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112, kPacked = 151, kBMatrix = 162;
using SizeFn = size_t (*)(int, int, int, int);
using PackFn = void (*)(int, int, int, int, int, int, float, const float*, int, float*);
using ComputeFn = void (*)(int, int, int, int, int, int, const float*, int, const float*, int, float, float*, int);

struct Api {
  SizeFn size = nullptr;
  PackFn pack = nullptr;
  ComputeFn compute = nullptr;
  bool ok() const { return size && pack && compute; }
};

const Api& api() {
  static const Api found = [] {
    Api a;
    void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
    if (lib == nullptr) return a;
    a.size = reinterpret_cast<SizeFn>(dlsym(lib, "cblas_sgemm_pack_get_size"));
    a.pack = reinterpret_cast<PackFn>(dlsym(lib, "cblas_sgemm_pack"));
    a.compute = reinterpret_cast<ComputeFn>(dlsym(lib, "cblas_sgemm_compute"));
    return a.ok() ? a : Api{};
  }();
  return found;
}

bool enabled = true;  // set_packed_gemm(False): every step on at::mm_out (the tests compare the two)
}  // namespace mkl

// out (M, Nc) = a (M, K) · B (K, Nc) [+ add], for `steps` products with the same B in one call.
template <typename T>
class StepGemm {
 public:
  StepGemm(const at::Tensor& b, int64_t M, int64_t steps) : M_(M), K_(b.size(0)), N_(b.size(1)) {
    const bool fits = std::max({M, K_, N_}) < (int64_t(1) << 30);
    if constexpr (std::is_same_v<T, float>) {
      if (mkl::enabled && mkl::api().ok() && steps >= 2 && M > 0 && K_ > 0 && N_ > 0 && fits) {
        const bool rows = b.stride(1) == 1, cols = b.stride(0) == 1;
        const at::Tensor src = rows || cols ? b : b.contiguous();
        const bool trans = !rows && cols;  // B stored column by column: pack it as the transpose of its rows
        const int ld = static_cast<int>(trans ? std::max(src.stride(1), K_) : std::max(src.stride(0), N_));
        packed_ = acquire(mkl::api().size(mkl::kBMatrix, M, N_, K_));
        if (packed_ != nullptr) {
          mkl::api().pack(mkl::kRowMajor, mkl::kBMatrix, trans ? mkl::kTrans : mkl::kNoTrans, M, N_, K_, 1.0f,
                          src.data_ptr<float>(), ld, static_cast<float*>(packed_->data));
          return;
        }
        packed_.reset();
      }
    }
    // A view, transposed or not (BLAS takes either): a contiguous copy of W_hh cost more than a one-step call.
    b_ = b.detach();  // (autograd's mode is per thread: a worker's may be on)
  }

  // out (M, Nc) contiguous; a (M, K) with rows `lda` apart; add (M, Nc) contiguous or null; out overlaps neither.
  // Raw pointers: a step's operands are rows of larger buffers, and a Tensor view per operand and step cost
  // about 1.5 us each (~5% of a step at N=8, H=128).
  void operator()(T* out, const T* a, int64_t lda, const T* add = nullptr) const {
    if constexpr (std::is_same_v<T, float>) {
      if (packed_) {
        if (add) std::memcpy(out, add, sizeof(T) * M_ * N_);
        mkl::api().compute(mkl::kRowMajor, mkl::kNoTrans, mkl::kPacked, M_, N_, K_, a, static_cast<int>(lda),
                           static_cast<const float*>(packed_->data), K_, add ? 1.0f : 0.0f, out,
                           static_cast<int>(N_));
        return;
      }
    }
    const auto o = b_.options();
    auto out_t = at::from_blob(out, {M_, N_}, o);
    const auto a_t = at::from_blob(const_cast<T*>(a), {M_, K_}, {lda, 1}, o);
    if (add) {
      at::addmm_out(out_t, at::from_blob(const_cast<T*>(add), {M_, N_}, o), a_t, b_);
    } else {
      at::mm_out(out_t, a_t, b_);
    }
  }

 private:
  // MKL's packed layout reserves several MiB more than the matrix (8.8 MiB for a 512 x 128 one), of which it
  // touches about the matrix's size. Mapped pages of its own leave malloc's heap and its mmap threshold as they
  // were; from malloc, the same buffer raised the peak memory of a 200 x 8 x 128 training step by ~5 MiB
  // (measured). A few released mappings are kept for the next call: a fresh one pays mmap, a page fault per
  // touched page and munmap's TLB shootdown at every call (inference at 200 x 8 x 128, measured: 350 against
  // 210 us a call at T=2, 3.9 against 3.2 ms at T=200).
  struct Mapping {
    void* data = nullptr;
    size_t bytes = 0;
    explicit Mapping(size_t n) : bytes(n) {
      void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      data = p == MAP_FAILED ? nullptr : p;
    }
    ~Mapping() {
      if (data != nullptr) munmap(data, bytes);
    }
    Mapping(const Mapping&) = delete;
    Mapping& operator=(const Mapping&) = delete;
  };
  static constexpr size_t kKeptMappings = 4;
  // (Never destroyed: a mapping let go during the process's exit must still find them.)
  static std::mutex& pool_lock() {
    static auto* m = new std::mutex;
    return *m;
  }
  static std::vector<std::unique_ptr<Mapping>>& pool() {
    static auto* kept = new std::vector<std::unique_ptr<Mapping>>;
    return *kept;
  }
  // A mapping of `bytes` (a kept one if there is one), returned to the pool when the last user lets go.
  static std::shared_ptr<Mapping> acquire(size_t bytes) {
    std::unique_ptr<Mapping> got;
    {
      std::lock_guard<std::mutex> g(pool_lock());
      auto& kept = pool();
      for (auto it = kept.begin(); it != kept.end(); ++it) {
        if ((*it)->bytes == bytes) {
          got = std::move(*it);
          kept.erase(it);
          break;
        }
      }
    }
    if (!got) got = std::make_unique<Mapping>(bytes);
    if (got->data == nullptr) return nullptr;
    return std::shared_ptr<Mapping>(got.release(), [](Mapping* m) {
      std::lock_guard<std::mutex> g(pool_lock());
      auto& kept = pool();
      if (kept.size() >= kKeptMappings) kept.erase(kept.begin());  // the oldest goes
      kept.emplace_back(m);
    });
  }
  int64_t M_, K_, N_;
  at::Tensor b_;
  std::shared_ptr<Mapping> packed_;
};

// =========================================================================================== LSTM

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
    dw.addmm_(ring.narrow(0, 0, k).reshape({k * N, G}).t(), h_all.narrow(0, t, k).reshape({k * N, H}));
  }
  at::Tensor weight_grad(const at::Tensor& h_all) const {
    if (!full.defined()) return dw;
    return full.reshape({steps * N, G}).t().mm(h_all.narrow(0, 0, steps).reshape({steps * N, H}));
  }
};


// How a forward call spreads over the threads. Normally each step's GEMM and row pass are shared by all of them,
// which costs a fork and a join per step, and a GEMM of few rows splits badly. Where no norm computes statistics
// across the batch, every sequence's recurrence is independent: the rows are then cut into one group per thread,
// and each thread runs the whole time loop for its group, with a GEMM of its own and no synchronization between
// steps. Measured here (LSTM, 200 steps, 2 threads, time loop only): N=8, H=128: 2.4 ms with shared steps,
// 1.4 ms for one thread with half the rows; N=8, H=256: 5.8 ms against 4.8 ms; N=16, H=256: 9.9 against 7.8.
// Each group reads all of W_hh every step, so large matrices (beyond a few MiB) keep the shared steps.
struct RowGroups {
  int64_t N, count;
  RowGroups(int64_t N_, int64_t H, bool cross_row) : N(N_), count(1) {
    const int64_t threads = at::get_num_threads();
    const bool small_matrix = 4 * H * H * 4 <= (int64_t(2) << 20);  // W_hh in float: 2 MiB at H = 362
    // At least two rows a group: with one (N = 2) the groups measured slower than the shared steps (0.92x
    // against 0.86x nn.LSTM's inference at 200 x 2 x 128), with two faster (0.91x against 1.20x at N = 4).
    if (!cross_row && threads > 1 && !at::in_parallel_region() && small_matrix && split_rows_enabled())
      count = std::max<int64_t>(1, std::min(threads, N / 2));
  }
  static bool& split_rows_enabled() {
    static bool on = true;
    return on;
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

template <typename T>
std::vector<at::Tensor> lstm_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& c0,
                                          const at::Tensor& w_hh, const at::Tensor& bias, const at::Tensor& gamma_h,
                                          const at::Tensor& gamma_c, const at::Tensor& beta_c,
                                          const at::Tensor& mask, const at::Tensor& fmh, const at::Tensor& fvh,
                                          const at::Tensor& fmc, const at::Tensor& fvc, int64_t kind_h,
                                          int64_t kind_c, bool joint, bool carry, double eps_, bool keep) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 4;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0, has_c = gamma_c.numel() > 0, has_beta = beta_c.numel() > 0;
  const States<T> h_all(h0, T_, keep), c_all(c0, T_, keep);
  // Kept states and no padding: the output h_1..h_T is a view of them, not a second (T, N, H) copy.
  const bool out_is_h = keep && mask.numel() == 0;
  const at::Tensor out = out_is_h ? h_all.all.narrow(0, 1, T_) : at::empty({T_, N, H}, o);
  auto acts = at::empty({Tk, N, G}, o), shat_all = has_h ? at::empty({Tk, N, G}, o) : at::empty({0}, o);
  // tanh(c_out) is one step's scratch: backward recomputes it from chat (or c) rather than keep T steps of it.
  // So is chat when the carried cell is the raw one: backward renormalizes c_all's rows (renormalize_row).
  const bool keep_chat = keep && carry;
  auto chat_all = at::empty({keep_chat ? T_ : 1, N, H}, o), tc_buf = at::empty({N, H}, o);
  auto rstd_h = rstd_buffer(kind_h, Tk, N, G, o), rstd_c = rstd_buffer(kind_c, Tk, N, H, o);
  auto mean_h = stats_buffer(kind_h, T_, G, o), var_h = stats_buffer(kind_h, T_, G, o);
  auto mean_c = stats_buffer(kind_c, T_, H, o), var_c = stats_buffer(kind_c, T_, H, o);
  auto count_h = kind_h == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto count_c = kind_c == BATCH ? at::zeros({T_}, o) : at::empty({0}, o);
  auto s = at::empty({N, G}, o), cnew = at::empty({N, H}, o), cout_buf = at::empty({N, H}, o);
  T* cob = cout_buf.data_ptr<T>();
  const T *b = ptr<T>(bias), *gh = ptr<T>(gamma_h), *gc = ptr<T>(gamma_c), *bc = ptr<T>(beta_c);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* sp = s.data_ptr<T>();
  T* cn = cnew.data_ptr<T>();
  const RowGroups groups(N, H, kind_h == BATCH || kind_c == BATCH || (keep && (per_col(kind_h) || per_col(kind_c))));

  // The time loop for rows [r0, r1); `shared`: the rows of each step are spread over the threads.
  auto run_rows = [&](int64_t r0, int64_t r1, bool shared) {
    const StepGemm<T> gemm(w_hh.t(), r1 - r0, T_);  // s = h W_hh^T
    // Column statistics of one step (batch norm). A group of rows computes its own (given statistics only).
    std::vector<T> colmean_h(G), colmean_c(H), colrstd_h(shared ? 0 : G), colrstd_c(shared ? 0 : H);
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t tk = keep ? t : 0;
      const T* x = xa.data_ptr<T>() + t * N * G;
      gemm(sp + r0 * G, h_all.ptr(t) + r0 * H, H, joint ? x + r0 * G : nullptr);
      const bool* m = mk ? mk + t * N : nullptr;
      T* a_t = acts.data_ptr<T>() + tk * N * G;
      T* shat_t = ptr<T>(shat_all, tk * N * G);
      T* chat_t = chat_all.data_ptr<T>() + (keep_chat ? t : 0) * N * H;
      T* tc_t = tc_buf.data_ptr<T>();
      T* rh = per_col(kind_h) && !shared ? colrstd_h.data()
                                          : rstd_h.data_ptr<T>() + tk * rstd_h.size(1) * rstd_h.size(2);
      T* rc = per_col(kind_c) && !shared ? colrstd_c.data()
                                          : rstd_c.data_ptr<T>() + tk * rstd_c.size(1) * rstd_c.size(2);
      const T* hp = h_all.ptr(t);
      const T* cp = c_all.ptr(t);
      T* hn = h_all.ptr(t + 1);
      T* cnx = c_all.ptr(t + 1);
      T* o_t = out_is_h ? nullptr : out.data_ptr<T>() + t * N * H;
      if (has_h && per_col(kind_h)) {
        const int64_t cnt = col_stats<T>(sp, N, G, m, ptr<T>(fmh) + t * G, ptr<T>(fvh) + t * G, eps, kind_h,
                                         colmean_h.data(), rh, kind_h == BATCH ? ptr<T>(mean_h) + t * G : nullptr,
                                         kind_h == BATCH ? ptr<T>(var_h) + t * G : nullptr);
        if (kind_h == BATCH) count_h.data_ptr<T>()[t] = static_cast<T>(cnt);
      }
      auto gates = [&](int64_t n) {
        const T* srow = sp + n * G;
        T* a = a_t + n * G;
        const T* xadd = joint ? nullptr : x + n * G;
        if (has_h) {
          T* sh = shat_t + n * G;
          normalize_row(srow, G, kind_h, eps, colmean_h.data(), rh, sh, rh + n);
          pre_activation<T>(a, sh, gh, b, xadd, G);
        } else {
          pre_activation<T>(a, srow, nullptr, b, xadd, G);
        }
        lstm_gates_fwd<T>(a, a + H, a + 2 * H, a + 3 * H, cp + n * H, cn + n * H, H);
      };
      auto finish = [&](int64_t n) {
        T* cr = cn + n * H;
        T* ch = chat_t + n * H;
        T* tc = tc_t + n * H;
        const T* og = a_t + n * G + 3 * H;
        const bool keep = m == nullptr || m[n];
        if (has_c) {
          normalize_row(cr, H, kind_c, eps, colmean_c.data(), rc, ch, rc + n);
        }
        T* hrow = hn + n * H;
        T* crow = cnx + n * H;
        T* orow = o_t ? o_t + n * H : nullptr;
        T* cout = has_c ? cob + n * H : cr;
        if (has_c) affine<T>(cout, ch, gc, has_beta ? bc : nullptr, H);
        lstm_h_fwd<T>(og, cout, tc, hrow, orow, H);
        if (keep) {
          std::copy(carry ? cout : cr, (carry ? cout : cr) + H, crow);
        } else {
          hold_row<T>(hp + n * H, hrow, orow, H);
          hold_row<T>(cp + n * H, crow, static_cast<T*>(nullptr), H);
        }
      };
      // Batch statistics of the cell need every row's new cell first: two row passes. Given statistics do not.
      if (has_c && kind_c == BATCH_FIXED) {
        col_stats<T>(cn, N, H, m, ptr<T>(fmc) + t * H, ptr<T>(fvc) + t * H, eps, kind_c, colmean_c.data(), rc,
                     static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      }
      if (has_c && kind_c == BATCH) {
        for_rows(N, G, gates);
        const int64_t cnt = col_stats<T>(cn, N, H, m, ptr<T>(fmc) + t * H, ptr<T>(fvc) + t * H, eps, kind_c,
                                         colmean_c.data(), rc, ptr<T>(mean_c) + t * H, ptr<T>(var_c) + t * H);
        count_c.data_ptr<T>()[t] = static_cast<T>(cnt);
        for_rows(N, H, finish);
      } else {
        groups.rows(r0, r1, G, shared, [&](int64_t n) {
          gates(n);
          finish(n);
        });
      }
    }
  };
  groups.run(run_rows);
  return {out, h_all.result(T_), c_all.result(T_), acts, shat_all, rstd_h,
          keep_chat ? chat_all : at::empty({0}, o), rstd_c, mean_h, var_h, count_h, mean_c, var_c, count_c};
}

template <typename T>
std::vector<at::Tensor> lstm_backward_impl(const at::Tensor& dout, const at::Tensor& dhT, const at::Tensor& dcT,
                                           const at::Tensor& w_hh, const at::Tensor& gamma_h,
                                           const at::Tensor& gamma_c, const at::Tensor& beta_c,
                                           const at::Tensor& mask,
                                           const at::Tensor& h_all, const at::Tensor& c_all,
                                           const at::Tensor& acts, const at::Tensor& shat_all,
                                           const at::Tensor& rstd_h, const at::Tensor& chat_all,
                                           const at::Tensor& rstd_c, const at::Tensor& mean_c,
                                           const at::Tensor& count_h, const at::Tensor& count_c, int64_t kind_h,
                                           int64_t kind_c, bool joint, bool carry) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 4;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  const bool has_h = gamma_h.numel() > 0, has_c = gamma_c.numel() > 0;
  auto dxa = at::empty_like(acts);
  // da: d(pre-activation); ds: d(recurrent product h W_hh^T). Without a norm on the recurrent term ds = da = dxa;
  // joint terms: dxa = ds and da is one step's scratch; separate terms: dxa = da and ds goes to the ring.
  // Everything else (d(c_out), the reductions for bias and gains) is per step: nothing else is T steps long.
  auto da_step = joint && has_h ? at::empty({N, G}, o) : at::empty({0}, o);
  DsRing<T> ring(!has_h || joint ? dxa : at::Tensor(), T_, N, G, H, o);
  auto dcout_step = has_c ? at::empty({N, H}, o) : at::empty({0}, o);
  auto dbias = at::zeros({G}, o);
  auto dgamma_h = has_h ? at::zeros({G}, o) : at::empty({0}, o);
  auto dgamma_c = has_c ? at::zeros({H}, o) : at::empty({0}, o);
  auto dbeta_c = has_c ? at::zeros({H}, o) : at::empty({0}, o);
  auto dh = dhT.clone(), dc = dcT.clone(), dh_next = at::empty_like(dh), dc_next = at::empty_like(dc);
  auto dcnew = at::empty({N, H}, o), tc_step = at::empty({N, H}, o);
  // Without chat_all (the raw cell is carried): each step's chat renormalized from c_all, with mean_c (T, H), the
  // column means the batch kinds used.
  const bool renorm_c = has_c && chat_all.numel() == 0;
  auto chat_step = renorm_c ? at::zeros({N, H}, o) : at::empty({0}, o);  // (finished rows read it: finite)
  const T *gh = ptr<T>(gamma_h), *gc = ptr<T>(gamma_c), *bc = ptr<T>(beta_c);
  const bool* mk = mask.numel() ? mask.data_ptr<bool>() : nullptr;
  T* dcn = dcnew.data_ptr<T>();
  T* dcout_t = has_c ? dcout_step.data_ptr<T>() : nullptr;
  T* tc_t = tc_step.data_ptr<T>();
  // One step's column sums (batch statistics): of d(pre-activation) and of it times shat; of d(c_out) and of it
  // times chat.
  std::vector<T> sum_a(kind_h == BATCH ? G : 0), sum_a_hat(kind_h == BATCH ? G : 0);
  std::vector<T> sum_c(kind_c == BATCH ? H : 0), sum_c_hat(kind_c == BATCH ? H : 0);

  for (int64_t t = T_ - 1; t >= 0; --t) {
    const bool* m = mk ? mk + t * N : nullptr;
    const T* a_t = acts.data_ptr<T>() + t * N * G;
    T* ch_t = renorm_c ? chat_step.data_ptr<T>() : (has_c ? chat_all.data_ptr<T>() + t * N * H : nullptr);
    const T* sh_t = ptr<T>(shat_all, t * N * G);
    const T* rh = rstd_h.data_ptr<T>() + t * rstd_h.size(1) * rstd_h.size(2);
    const T* rc = rstd_c.data_ptr<T>() + t * rstd_c.size(1) * rstd_c.size(2);
    const T* cp = c_all.data_ptr<T>() + t * N * H;
    const T* do_t = dout.data_ptr<T>() + t * dout.stride(0);
    T* ds_t = ring.slot(t);
    T* da_t = joint && has_h ? da_step.data_ptr<T>() : (has_h ? dxa.data_ptr<T>() + t * N * G : ds_t);
    T* dhp = dh.data_ptr<T>();
    T* dcp = dc.data_ptr<T>();
    T* dcx = dc_next.data_ptr<T>();
    const bool col_c = has_c && kind_c == BATCH && count_c.data_ptr<T>()[t] >= 2;
    const bool col_h = has_h && kind_h == BATCH && count_h.data_ptr<T>()[t] >= 2;

    // d(c_out) of one row: from the output h = o * tanh(c_out), and from the carry when it is c_out.
    auto cell_out = [&](int64_t n) {
      const T* og = a_t + n * G + 3 * H;
      T* tc = tc_t + n * H;
      // tanh(c_out) again: c_out = gamma_c * chat + beta_c, or the new raw cell (what c_all holds for a running row)
      if (has_c) {
        T* ch = ch_t + n * H;
        if (renorm_c) {
          renormalize_row(c_all.data_ptr<T>() + ((t + 1) * N + n) * H, H, kind_c,
                          per_col(kind_c) ? mean_c.data_ptr<T>() + t * H : static_cast<const T*>(nullptr), rc,
                          per_row(kind_c) ? rc[n] : T(0), ch);
        }
        if (bc) {  // (one loop per case: see pre_activation)
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(gc[j] * ch[j] + bc[j]);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(gc[j] * ch[j]);
        }
      } else {
        const T* cr = c_all.data_ptr<T>() + ((t + 1) * N + n) * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) tc[j] = tanh_(cr[j]);
      }
      const T* dhr = dhp + n * H;
      const T* dor = do_t + n * dout.stride(1);
      const T* dcr = dcp + n * H;
      T* dco = has_c ? dcout_t + n * H : dcn + n * H;
      lstm_cout_bwd<T>(dhr, dor, og, tc, carry ? dcr : nullptr, dco, H);
    };
    // From d(c_out) to dc_new, the gates' pre-activations and the recurrent term's ds.
    auto gates = [&](int64_t n) {
      const T* ar = a_t + n * G;
      T* dar = da_t + n * G;
      T* dsr = ds_t + n * G;
      T* dcnr = dcn + n * H;
      const T* dcr = dcp + n * H;
      if (has_c) {
        const T* dco = dcout_t + n * H;
        if (col_c) {
          // dcnr already holds the column-normalized gradient
        } else {
          denormalize_row(dco, gc, ch_t + n * H, per_row(kind_c) ? rc[n] : T(0), rc, H, kind_c, dcnr);
        }
      }
      lstm_gates_bwd<T>(ar, dcnr, carry ? nullptr : dcr, dhp + n * H, do_t + n * dout.stride(1), tc_t + n * H, cp + n * H,
                        dar, dcx + n * H, H);
      if (has_h && !col_h) {
        denormalize_row(dar, gh, sh_t + n * G, per_row(kind_h) ? rh[n] : T(0), rh, G, kind_h, dsr);
      }  // (with batch statistics, ds comes after the step's column sums: col_norm_bwd_from_sums)
    };
    // A finished sequence: nothing flows into the step, the state's gradient passes through.
    auto finished = [&](int64_t n) {
      std::fill(da_t + n * G, da_t + (n + 1) * G, T(0));
      if (ds_t != da_t) std::fill(ds_t + n * G, ds_t + (n + 1) * G, T(0));
      if (has_c) std::fill(dcout_t + n * H, dcout_t + (n + 1) * H, T(0));
      std::copy(dcp + n * H, dcp + (n + 1) * H, dcx + n * H);
      std::fill(dcn + n * H, dcn + (n + 1) * H, T(0));
    };
    auto running = [&](int64_t n) { return m == nullptr || m[n]; };

    if (col_c) {
      for_rows(N, H, [&](int64_t n) { if (running(n)) cell_out(n); else finished(n); });
      // The step's column sums of d(c_out) and d(c_out) * chat: the gradients of beta_c and gamma_c, and what
      // batch norm's backward needs to turn d(c_out) into dcnew.
      std::fill(sum_c.begin(), sum_c.end(), T(0));
      std::fill(sum_c_hat.begin(), sum_c_hat.end(), T(0));
      add_col_sums<T>(dcout_t, ch_t, N, H, sum_c.data(), sum_c_hat.data());
      col_norm_bwd_from_sums<T>(dcn, dcout_t, gc, ch_t, rc, sum_c.data(), sum_c_hat.data(), N, H, m,
                                static_cast<int64_t>(count_c.data_ptr<T>()[t]));
      for_rows(N, G, [&](int64_t n) { if (running(n)) gates(n); });
    } else {
      for_rows(N, G, [&](int64_t n) {
        if (running(n)) {
          cell_out(n);
          gates(n);
        } else {
          finished(n);
        }
      });
    }
    // The bias and gain gradients of this step (finished rows hold zeros); with batch statistics the step's own
    // sums, which batch norm's backward needs too.
    if (col_h) {
      std::fill(sum_a.begin(), sum_a.end(), T(0));
      std::fill(sum_a_hat.begin(), sum_a_hat.end(), T(0));
      add_col_sums<T>(da_t, sh_t, N, G, sum_a.data(), sum_a_hat.data());
      add_to(dbias.data_ptr<T>(), sum_a.data(), G);
      add_to(dgamma_h.data_ptr<T>(), sum_a_hat.data(), G);
      col_norm_bwd_from_sums<T>(ds_t, da_t, gh, sh_t, rh, sum_a.data(), sum_a_hat.data(), N, G, m,
                                static_cast<int64_t>(count_h.data_ptr<T>()[t]));
    } else {
      add_col_sums<T>(da_t, has_h ? sh_t : nullptr, N, G, dbias.data_ptr<T>(), ptr<T>(dgamma_h));
    }
    if (col_c) {
      add_to(dbeta_c.data_ptr<T>(), sum_c.data(), H);
      add_to(dgamma_c.data_ptr<T>(), sum_c_hat.data(), H);
    } else if (has_c) {
      add_col_sums<T>(dcout_t, ch_t, N, H, dbeta_c.data_ptr<T>(), dgamma_c.data_ptr<T>());
    }
    gemm(dh_next.data_ptr<T>(), ring.slot(t), ring.G);
    ring.done(t, h_all);
    if (m != nullptr) {
      T* dhx = dh_next.data_ptr<T>();
      for (int64_t n = 0; n < N; ++n)
        if (!m[n]) std::copy(dhp + n * H, dhp + (n + 1) * H, dhx + n * H);
    }
    std::swap(dh, dh_next);
    std::swap(dc, dc_next);
  }
  return {dxa, dh, dc, ring.weight_grad(h_all), dbias, dgamma_h, dgamma_c, dbeta_c};
}

// =========================================================================================== GRU

template <typename T>
std::vector<at::Tensor> gru_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const at::Tensor& bias_hh, const at::Tensor& gamma_h,
                                         const at::Tensor& mask, const at::Tensor& fmh, const at::Tensor& fvh,
                                         int64_t kind_h, double eps_, bool keep) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 3;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0, has_b = bias_hh.numel() > 0;
  const States<T> h_all(h0, T_, keep);
  auto acts = at::empty({Tk, N, G}, o), rec_n_all = at::empty({Tk, N, H}, o);
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
      const int64_t cnt = col_stats<T>(sp, N, G, m, ptr<T>(fmh) + t * G, ptr<T>(fvh) + t * G, eps, kind_h,
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
                                          const at::Tensor& rstd_h, const at::Tensor& count_h, int64_t kind_h) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 3;
  const bool has_h = gamma_h.numel() > 0;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // drec: d(recurrent term after its norm), one step's scratch; ds: d(recurrent product), in the ring (ds = drec
  // without a norm). The bias and gain gradients are summed step by step.
  auto dxa = at::empty_like(acts);
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
    if (col_h) col_norm_bwd<T>(ds_t, sh_t, rh, N, G, m, static_cast<int64_t>(count_h.data_ptr<T>()[t]));
    gemm(dh_next.data_ptr<T>(), ring.slot(t), ring.G, direct.data_ptr<T>());
    ring.done(t, h_all);
    std::swap(dh, dh_next);
  }
  return {dxa, dh, ring.weight_grad(h_all), dbias, dgamma};
}

// =========================================================================================== Elman RNN

template <typename T>
std::vector<at::Tensor> rnn_forward_impl(const at::Tensor& xa, const at::Tensor& h0, const at::Tensor& w_hh,
                                         const at::Tensor& bias, const at::Tensor& gamma_h, const at::Tensor& mask,
                                         const at::Tensor& fmh, const at::Tensor& fvh, int64_t kind_h, bool joint,
                                         bool relu, double eps_, bool keep) {
  const int64_t T_ = xa.size(0), N = xa.size(1), H = xa.size(2);
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_h = gamma_h.numel() > 0;
  const States<T> h_all(h0, T_, keep);
  auto act = at::empty({Tk, N, H}, o), out = at::empty({T_, N, H}, o);
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
      const int64_t cnt = col_stats<T>(sp, N, H, m, ptr<T>(fmh) + t * H, ptr<T>(fvh) + t * H, eps, kind_h,
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
                                          const at::Tensor& count_h, int64_t kind_h, bool joint, bool relu) {
  const int64_t T_ = act.size(0), N = act.size(1), H = act.size(2);
  const bool has_h = gamma_h.numel() > 0;
  const auto o = act.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // As in the LSTM: ds = da = dxa without a norm; joint: dxa = ds, da one step's scratch; separate: dxa = da and
  // ds in the ring.
  auto dxa = at::empty_like(act);
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
    if (col_h) col_norm_bwd<T>(ds_t, sh_t, rh, N, H, m, static_cast<int64_t>(count_h.data_ptr<T>()[t]));
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


// =========================================================================================== RMSNorm rows
// The x-term RMSNorm over all steps at once, (R, F) rows: ATen has no fused CPU kernel for it (F.rms_norm is
// five ops), which made RMSNorm slower than the fused layer norm it is meant to undercut.

template <typename T>
std::vector<at::Tensor> rms_norm_forward_impl(const at::Tensor& x, const at::Tensor& weight, double eps_) {
  const int64_t F = x.size(-1), R = x.numel() / F;
  const T eps = static_cast<T>(eps_);
  auto y = at::empty_like(x), rstd = at::empty({R}, x.options());
  const T* xp = x.data_ptr<T>();
  const T* w = ptr<T>(weight);
  T* yp = y.data_ptr<T>();
  T* rp = rstd.data_ptr<T>();
  std::vector<T> ones(w ? 0 : F, T(1));
  const T* g = w ? w : ones.data();
  // Two passes per row (sum of squares; scale) rather than row_norm_fwd's three plus a gain pass.
  for_rows(R, F, [&](int64_t r) {
    const T* __restrict xr = xp + r * F;
    T* __restrict yr = yp + r * F;
    const T ss = lane_sum<T>(F, [&](int64_t f) { return xr[f] * xr[f]; });
    const T rr = T(1) / std::sqrt(ss / F + eps);
    rp[r] = rr;
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) yr[f] = xr[f] * rr * g[f];
  });
  return {y, rstd};
}

template <typename T>
std::vector<at::Tensor> rms_norm_backward_impl(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight,
                                               const at::Tensor& rstd) {
  const int64_t F = x.size(-1), R = x.numel() / F;
  auto dx = at::empty_like(x);
  const T* xp = x.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  const T* w = ptr<T>(weight);
  const T* rp = rstd.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  // dweight = sum over rows of dy * x-hat: partial sums per chunk of rows, added up after.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads() * 4, R));
  auto partial = at::zeros({chunks, F}, x.options());
  T* pp = partial.data_ptr<T>();
  std::vector<T> ones(w ? 0 : F, T(1));
  const T* g = w ? w : ones.data();
  // Per row, with xhat = x * rstd and d = dy * gain: dx = rstd * (d - xhat * mean(d * xhat)), in two fused
  // passes; the gain's gradient sum(dy * xhat) accumulates in the second.
  at::parallel_for(0, chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      T* __restrict acc = pp + c * F;
      for (int64_t r = c * R / chunks; r < (c + 1) * R / chunks; ++r) {
        const T* __restrict xr = xp + r * F;
        const T* __restrict dr = dyp + r * F;
        T* __restrict dxr = dxp + r * F;
        const T rr = rp[r];
        const T dot = lane_sum<T>(F, [&](int64_t f) { return dr[f] * g[f] * xr[f]; });
        const T k = rr * rr * rr * dot / F;  // so that dx = rstd * d - x * k
#pragma omp simd
        for (int64_t f = 0; f < F; ++f) {
          dxr[f] = rr * dr[f] * g[f] - xr[f] * k;
          acc[f] += dr[f] * xr[f] * rr;
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
  auto y = at::empty_like(x), mean = at::empty({T_, F}, o), rstd = at::empty({T_, F}, o);
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
  auto dx = at::empty_like(x), dw_steps = at::empty({T_, F}, x.options());  // (every step writes its row)
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
        s1[f] *= g[f] * inv;  // mean over running rows of dy * gain (0 with given statistics)
        s2[f] *= g[f] * inv;  // ... of dy * gain * x-hat
      }
      for (int64_t n = 0; n < N; ++n) {
        T* __restrict dxr = dxp + (t * N + n) * F;
        if (m != nullptr && !m[n]) {
          std::fill(dxr, dxr + F, T(0));
          continue;
        }
        const T* __restrict xr = xp + (t * N + n) * F;
        const T* __restrict dr = dyp + (t * N + n) * F;
#pragma omp simd
        for (int64_t f = 0; f < F; ++f)
          dxr[f] = r[f] * (dr[f] * g[f] - s1[f] - (xr[f] - mu[f]) * r[f] * s2[f]);
      }
    }
  });
  return {dx, w ? dw_steps.sum(0) : at::empty({0}, x.options())};
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
                                               int64_t kind_n, double eps_, bool keep) {
  const int64_t T_ = xa.size(0), N = xa.size(1), G = xa.size(2), H = G / 3, H2 = 2 * H;
  const T eps = static_cast<T>(eps_);
  // Without backward to feed (inference), the per-step buffers hold one step and are reused.
  const int64_t Tk = keep ? T_ : 1;
  const auto o = xa.options();
  const bool has_g = gamma_g.numel() > 0, has_n = gamma_n.numel() > 0;
  // Batch statistics need every row of the step first: extra row passes. Given statistics (eval) do not.
  const bool col_g = has_g && kind_g == BATCH, col_n = has_n && kind_n == BATCH;
  const States<T> h_all(h0, T_, keep);
  auto acts = at::empty({Tk, N, G}, o), rec_n_all = at::empty({Tk, N, H}, o);
  auto uhat_all = at::empty({Tk, N, H2}, o), vhat_all = at::empty({Tk, N, H}, o), out = at::empty({T_, N, H}, o);
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
      count_g.data_ptr<T>()[t] = static_cast<T>(col_stats<T>(uh_t, N, H2, m, ptr<T>(fmg) + t * H2,
                                                              ptr<T>(fvg) + t * H2, eps, kind_g, colmean_g.data(),
                                                              rg, ptr<T>(mean_g) + t * H2, ptr<T>(var_g) + t * H2));
    }
    auto front = [&](int64_t n) {
      if (!col_g) form_u(n);
      gates(n);
    };
    if (col_n) {
      for_rows(N, G, front);
      count_n.data_ptr<T>()[t] = static_cast<T>(col_stats<T>(vh_t, N, H, m, ptr<T>(fmn) + t * H, ptr<T>(fvn) + t * H,
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
                                                int64_t kind_n) {
  const int64_t T_ = acts.size(0), N = acts.size(1), G = acts.size(2), H = G / 3, H2 = 2 * H;
  const bool has_g = gamma_g.numel() > 0, has_n = gamma_n.numel() > 0;
  const auto o = acts.options();
  const StepGemm<T> gemm(w_hh, N, T_);  // dh_prev = ds W_hh
  // dpre: d(pre-activations r, z, n), after the norms; ds: d(h W_hh^T); dxa = (du, dv).
  auto dxa = at::empty_like(acts), ds_all = at::empty_like(acts), dpre_all = at::empty_like(acts);
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
      col_norm_bwd<T>(dv, vh_t, rn, N, H, m, static_cast<int64_t>(count_n.data_ptr<T>()[t]));
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
      col_norm_bwd<T>(du, uh_t, rg, N, H2, m, static_cast<int64_t>(count_g.data_ptr<T>()[t]));
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

}  // namespace

// =========================================================================================== bindings
// The engine contract of normrnn/fused/contract.py. A training forward returns (out, state, stats, saved): the
// outputs (T, N, H); the final state [h_n] or [h_n, c_n], each (N, H); the batch statistics of each norm of the
// loop, [mean (T, F), var (T, F), count (T)] per norm (empty tensors unless the norm computes batch statistics);
// and `saved`, what the matching backward reads, in the order of its impl's arguments. Python keeps `saved` with
// the autograd node and hands it back unread. An inference forward returns (out, state, stats): it keeps one
// step's buffers and saves nothing.

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
                 bool keep) {
  return NORMRNN_DISPATCH(xa, "lstm_forward",
      lstm_forward_impl<scalar_t>(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc,
                                  kind_h, kind_c, joint, carry, eps, keep));
}

Trained lstm_forward(at::Tensor xa, at::Tensor h0, at::Tensor c0, at::Tensor w_hh, at::Tensor bias,
                     at::Tensor gamma_h, at::Tensor gamma_c, at::Tensor beta_c, at::Tensor mask, at::Tensor fmh,
                     at::Tensor fvh, at::Tensor fmc, at::Tensor fvc, int64_t kind_h, int64_t kind_c, bool joint,
                     bool carry, double eps) {
  const auto r = lstm_run(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc, kind_h, kind_c,
                          joint, carry, eps, true);
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
                    bool carry, double eps) {
  const auto r = lstm_run(xa, h0, c0, w_hh, bias, gamma_h, gamma_c, beta_c, mask, fmh, fvh, fmc, fvc, kind_h, kind_c,
                          joint, carry, eps, false);
  return {r[0], {last_state(r[1], false), last_state(r[2], false)}, slots(r, 8)};
}

Tensors lstm_backward(at::Tensor dout, at::Tensor dhT, at::Tensor dcT, Tensors s, int64_t kind_h, int64_t kind_c,
                      bool joint, bool carry) {
  TORCH_CHECK(s.size() == 15, "lstm_backward: the saved state of lstm_forward");
  return NORMRNN_DISPATCH(s[7], "lstm_backward",
      lstm_backward_impl<scalar_t>(dout, dhT, dcT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9], s[10],
                                   s[11], s[12], s[13], s[14], kind_h, kind_c, joint, carry));
}

// GRU, separate terms. impl: out, h_all, acts, rec_n, shat, rstd_h | mean_h, var_h, count_h
Tensors gru_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps, bool keep) {
  return NORMRNN_DISPATCH(xa, "gru_forward",
      gru_forward_impl<scalar_t>(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, keep));
}

Trained gru_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                    at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps) {
  const auto r = gru_run(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, true);
  return {r[0], {last_state(r[1], true)}, slots(r, 6), {w_hh, gamma_h, mask, r[1], r[2], r[3], r[4], r[5], r[8]}};
}

Inferred gru_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_hh, at::Tensor gamma_h,
                   at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, double eps) {
  const auto r = gru_run(xa, h0, w_hh, bias_hh, gamma_h, mask, fmh, fvh, kind_h, eps, false);
  return {r[0], {last_state(r[1], false)}, slots(r, 6)};
}

Tensors gru_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_h) {
  TORCH_CHECK(s.size() == 9, "gru_backward: the saved state of gru_forward");
  return NORMRNN_DISPATCH(s[4], "gru_backward",
      gru_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], kind_h));
}

// GRU, joint terms. impl: out, h_all, acts, rec_n, uhat, vhat, rstd_g, rstd_n | mean_g, var_g, count_g, mean_n,
// var_n, count_n
Tensors gru_joint_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                      at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                      at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps, bool keep) {
  return NORMRNN_DISPATCH(xa, "gru_joint_forward",
      gru_joint_forward_impl<scalar_t>(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn,
                                       kind_g, kind_n, eps, keep));
}

Trained gru_joint_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                          at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                          at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps) {
  const auto r = gru_joint_run(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn, kind_g,
                               kind_n, eps, true);
  return {r[0], {last_state(r[1], true)}, slots(r, 8),
          {w_hh, gamma_g, gamma_n, mask, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[10], r[13]}};
}

Inferred gru_joint_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias_ih, at::Tensor bias_hh,
                         at::Tensor gamma_g, at::Tensor gamma_n, at::Tensor mask, at::Tensor fmg, at::Tensor fvg,
                         at::Tensor fmn, at::Tensor fvn, int64_t kind_g, int64_t kind_n, double eps) {
  const auto r = gru_joint_run(xa, h0, w_hh, bias_ih, bias_hh, gamma_g, gamma_n, mask, fmg, fvg, fmn, fvn, kind_g,
                               kind_n, eps, false);
  return {r[0], {last_state(r[1], false)}, slots(r, 8)};
}

Tensors gru_joint_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_g, int64_t kind_n) {
  TORCH_CHECK(s.size() == 13, "gru_joint_backward: the saved state of gru_joint_forward");
  return NORMRNN_DISPATCH(s[5], "gru_joint_backward",
      gru_joint_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], s[9],
                                        s[10], s[11], s[12], kind_g, kind_n));
}

// Elman RNN. impl: out, h_all, act, shat, rstd_h | mean_h, var_h, count_h
Tensors rnn_run(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h, at::Tensor mask,
                at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu, double eps, bool keep) {
  return NORMRNN_DISPATCH(xa, "rnn_forward",
      rnn_forward_impl<scalar_t>(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, keep));
}

Trained rnn_forward(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h,
                    at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu,
                    double eps) {
  const auto r = rnn_run(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, true);
  return {r[0], {last_state(r[1], true)}, slots(r, 5), {w_hh, gamma_h, mask, r[1], r[2], r[3], r[4], r[7]}};
}

Inferred rnn_infer(at::Tensor xa, at::Tensor h0, at::Tensor w_hh, at::Tensor bias, at::Tensor gamma_h,
                   at::Tensor mask, at::Tensor fmh, at::Tensor fvh, int64_t kind_h, bool joint, bool relu,
                   double eps) {
  const auto r = rnn_run(xa, h0, w_hh, bias, gamma_h, mask, fmh, fvh, kind_h, joint, relu, eps, false);
  return {r[0], {last_state(r[1], false)}, slots(r, 5)};
}

Tensors rnn_backward(at::Tensor dout, at::Tensor dhT, Tensors s, int64_t kind_h, bool joint, bool relu) {
  TORCH_CHECK(s.size() == 8, "rnn_backward: the saved state of rnn_forward");
  return NORMRNN_DISPATCH(s[4], "rnn_backward",
      rnn_backward_impl<scalar_t>(dout, dhT, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], kind_h, joint, relu));
}

std::vector<at::Tensor> lstm_stream(at::Tensor x, at::Tensor h0, at::Tensor c0, std::vector<StreamLayer> layers,
                                    int64_t step, double eps) {
  TORCH_CHECK(!layers.empty(), "lstm_stream: at least one layer");
  return NORMRNN_DISPATCH(x, "lstm_stream", lstm_stream_impl<scalar_t>(x, h0, c0, layers, step, eps));
}

std::vector<at::Tensor> rms_norm_forward(at::Tensor x, at::Tensor weight, double eps) {
  return NORMRNN_DISPATCH(x, "rms_norm_forward", rms_norm_forward_impl<scalar_t>(x, weight, eps));
}

std::vector<at::Tensor> rms_norm_backward(at::Tensor dy, at::Tensor x, at::Tensor weight, at::Tensor rstd) {
  return NORMRNN_DISPATCH(x, "rms_norm_backward", rms_norm_backward_impl<scalar_t>(dy, x, weight, rstd));
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

// Whether the per-step GEMMs may use MKL's packed GEMM (when torch carries it); returns the previous setting.
bool set_split_rows(bool on) {
  const bool was = RowGroups::split_rows_enabled();
  RowGroups::split_rows_enabled() = on;
  return was;
}

bool set_packed_gemm(bool on) {
  const bool was = mkl::enabled;
  mkl::enabled = on;
  return was;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("set_packed_gemm", &set_packed_gemm);
  m.def("set_split_rows", &set_split_rows);
  m.def("row_groups", [](int64_t N, int64_t H, bool cross_row) { return RowGroups(N, H, cross_row).count; });
  m.def("packed_gemm_available", [] { return mkl::api().ok(); });
  m.def("norm_rows_", &norm_rows_);
  m.def("bn_update_running_", &bn_update_running_);
  m.def("bn_steps_forward", &bn_steps_forward);
  m.def("bn_steps_backward", &bn_steps_backward);
  m.def("rms_norm_forward", &rms_norm_forward);
  m.def("rms_norm_backward", &rms_norm_backward);
  py::class_<StreamNorm>(m, "StreamNorm")
      .def(py::init<int64_t, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(), py::arg("kind"),
           py::arg("gain"), py::arg("bias"), py::arg("running_mean"), py::arg("running_var"),
           py::arg("steps_tracked"));
  py::class_<StreamLayer>(m, "StreamLayer")
      .def(py::init<at::Tensor, at::Tensor, at::Tensor, at::Tensor, StreamNorm, StreamNorm, StreamNorm, bool, bool>(),
           py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"), py::arg("norm_x"), py::arg("norm_h"),
           py::arg("norm_c"), py::arg("joint"), py::arg("carry"));
  m.def("lstm_stream", &lstm_stream);
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
