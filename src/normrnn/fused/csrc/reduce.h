// reduce.h: synchronised batch norm: a batch norm's per-step sums over every rank of a process group, through
// the loop's reducer, a Python callable (normrnn/fused/contract.py: a loop's `reduce`).
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
//
// Per step and batch-norm kind of a loop, forward: one call with [count | sum (F) | sum of squares (F)] of the
// running rows; mean and variance (E[s^2] - mean^2, as normrnn.moments.global_moments) come from the totals, and
// the count is the global one (< 2: the given statistics). Backward: one call with the step's column sums
// [sum d (F) | sum d * shat (F)], which batch norm's backward subtracts; the gain and bias gradients keep the
// local sums (DDP sums them over the ranks). Every rank makes the same calls in the same order: the counts that
// decide a step's path are global.
#pragma once

// A loop's reducer: sums a flat contiguous tensor over the ranks in place. Inactive (None) without synchronised
// statistics, and then every function below is its local counterpart. Called only from the thread that called
// the binding, never inside a parallel region; the GIL is taken around the call alone.
struct Reducer {
  py::object fn;
  explicit Reducer(py::object f = py::none()) : fn(std::move(f)) {}
  bool active() const { return fn && !fn.is_none(); }
  void operator()(const at::Tensor& buf) const {
    py::gil_scoped_acquire gil;
    fn(buf);
  }
};

template <typename T>
at::Tensor reduce_buffer(int64_t n) {
  return at::empty({n}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// col_stats (row_kernels.h) with the statistics of every rank's running rows when `reduce` is active and the
// kind is batch statistics. Returns the count (global when reduced).
template <typename T>
int64_t col_stats(const Reducer& reduce, const T* s, int64_t N, int64_t F, const bool* m, const T* fix_mean,
                  const T* fix_var, T eps, int64_t kind, T* mean, T* rstd, T* mean_out, T* var_out) {
  if (kind != BATCH || !reduce.active())
    return col_stats<T>(s, N, F, m, fix_mean, fix_var, eps, kind, mean, rstd, mean_out, var_out);
  at::Tensor buf = reduce_buffer<T>(2 * F + 1);
  T* b = buf.data_ptr<T>();
  int64_t local = 0;
  for (int64_t n = 0; n < N; ++n) local += (m == nullptr || m[n]) ? 1 : 0;
  b[0] = static_cast<T>(local);
  for_cols(N, F, [&](int64_t lo, int64_t hi) {
    T* __restrict sum = b + 1;
    T* __restrict sq = b + 1 + F;
    std::fill(sum + lo, sum + hi, T(0));
    std::fill(sq + lo, sq + hi, T(0));
    for (int64_t n = 0; n < N; ++n) {
      if (m != nullptr && !m[n]) continue;  // (selection: a finished row's values never enter a sum)
      const T* __restrict row = s + n * F;
#pragma omp simd
      for (int64_t f = lo; f < hi; ++f) {
        sum[f] += row[f];
        sq[f] += row[f] * row[f];
      }
    }
  });
  reduce(buf);
  const int64_t count = static_cast<int64_t>(std::llround(static_cast<double>(b[0])));
  if (count < 2) {  // too few sequences on all ranks together: the given statistics (col_stats with no rows)
    col_stats<T>(s, 0, F, m, fix_mean, fix_var, eps, kind, mean, rstd, mean_out, var_out);
    return count;
  }
  const T inv = T(1) / static_cast<T>(count);
  for (int64_t f = 0; f < F; ++f) {
    const T mu = b[1 + f] * inv;
    const T var = std::max(b[1 + F + f] * inv - mu * mu, T(0));  // (can round below zero)
    mean[f] = mu;
    rstd[f] = T(1) / std::sqrt(var + eps);
    mean_out[f] = mu;
    var_out[f] = var;
  }
  return count;
}

// [sum_d | sum_d_shat] (F each) summed over the ranks, in place; nothing when `reduce` is inactive.
template <typename T>
void reduce_sums(const Reducer& reduce, T* sum_d, T* sum_d_shat, int64_t F) {
  if (!reduce.active()) return;
  at::Tensor buf = reduce_buffer<T>(2 * F);
  T* b = buf.data_ptr<T>();
  std::copy(sum_d, sum_d + F, b);
  std::copy(sum_d_shat, sum_d_shat + F, b + F);
  reduce(buf);
  std::copy(b, b + F, sum_d);
  std::copy(b + F, b + 2 * F, sum_d_shat);
}

// One step of batch norm's backward from d (N, F; the gain not yet applied): the step's column sums of d and
// d * shat go into the bias and gain gradients (acc_d, acc_d_shat: this rank's sums, as DDP adds the ranks'), then
// out = col_norm_bwd_from_sums over every rank's sums (`count`: the global count). sum_d, sum_d_shat: F of
// scratch. Unsynced, the sums and the normalization of a block of columns run in one parallel pass (one fork and
// join a step instead of two: with 2 threads and 32 rows a step, they cost as much as the arithmetic).
template <typename T>
void col_sums_norm_bwd(const Reducer& reduce, T* out, const T* d, const T* gain, const T* shat, const T* rstd,
                       T* sum_d, T* sum_d_shat, T* acc_d, T* acc_d_shat, int64_t N, int64_t F, const bool* m,
                       int64_t count) {
  if (reduce.active()) {
    std::fill(sum_d, sum_d + F, T(0));
    std::fill(sum_d_shat, sum_d_shat + F, T(0));
    add_col_sums<T>(d, shat, N, F, sum_d, sum_d_shat);
    add_to(acc_d, sum_d, F);
    add_to(acc_d_shat, sum_d_shat, F);
    reduce_sums<T>(reduce, sum_d, sum_d_shat, F);  // synchronised: every rank's sums
    col_norm_bwd_from_sums<T>(out, d, gain, shat, rstd, sum_d, sum_d_shat, N, F, m, count);
    return;
  }
  const T inv = T(1) / count;
  for_cols(N, F, [&](int64_t b, int64_t e) {
    std::fill(sum_d + b, sum_d + e, T(0));
    std::fill(sum_d_shat + b, sum_d_shat + e, T(0));
    for (int64_t n = 0; n < N; ++n) {  // (the order of add_col_sums: the same sums to the last bit)
      const T* __restrict dr = d + n * F;
      const T* __restrict xr = shat + n * F;
#pragma omp simd
      for (int64_t f = b; f < e; ++f) sum_d[f] += dr[f];
#pragma omp simd
      for (int64_t f = b; f < e; ++f) sum_d_shat[f] += dr[f] * xr[f];
    }
    add_to(acc_d + b, sum_d + b, e - b);
    add_to(acc_d_shat + b, sum_d_shat + b, e - b);
    col_norm_bwd_cols<T>(out, d, gain, shat, rstd, sum_d, sum_d_shat, N, F, m, inv, b, e);
  });
}

// col_norm_bwd (row_kernels.h) with the column sums of every rank when `reduce` is active; `count` is then the
// global count. ds holds dshat (gain applied) on entry; finished rows hold 0.
template <typename T>
void col_norm_bwd(const Reducer& reduce, T* ds, const T* shat, const T* rstd, int64_t N, int64_t F, const bool* m,
                  int64_t count) {
  if (!reduce.active()) return col_norm_bwd<T>(ds, shat, rstd, N, F, m, count);
  std::vector<T> s1(F, T(0)), s2(F, T(0));
  add_col_sums<T>(ds, shat, N, F, s1.data(), s2.data());
  reduce_sums<T>(reduce, s1.data(), s2.data(), F);
  const T inv = T(1) / static_cast<T>(count);
  for (int64_t f = 0; f < F; ++f) {
    s1[f] *= inv;
    s2[f] *= inv;
  }
  for_cols(N, F, [&](int64_t b, int64_t e) {
    for (int64_t n = 0; n < N; ++n) {
      T* __restrict d = ds + n * F;
      if (m != nullptr && !m[n]) {
        std::fill(d + b, d + e, T(0));
        continue;
      }
      const T* __restrict sh = shat + n * F;
      const T* __restrict a = s1.data();
      const T* __restrict c = s2.data();
#pragma omp simd
      for (int64_t f = b; f < e; ++f) d[f] = rstd[f] * (d[f] - a[f] - sh[f] * c[f]);
    }
  });
}
