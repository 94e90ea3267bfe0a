// gemm.h: the per-step recurrent GEMM and the engine's large products, on the GEMM path measured fastest on this
// machine: MKL's packed GEMM, oneDNN's matmul, or plain at::mm_out.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

// =========================================================================================== GEMM paths
// Every step multiplies by the same recurrent matrix. An ordinary sgemm repacks that matrix into its kernel's
// layout on every call (at N=32, H=256 about a sixth of the step's GEMM time on an Intel Xeon); MKL's packed GEMM
// packs it once per call of the loop instead. MKL is tuned for Intel: on an AMD EPYC its kernels reach less, and
// oneDNN's matmul (what nn.LSTM's kernels are built on) can be faster, by shape. So each product runs on a *path*:
//   plain   at::mm_out / at::addmm_out (torch's sgemm: MKL on x86 builds); every dtype, always there
//   packed  MKL's cblas_sgemm_pack/compute, looked up in libtorch_cpu at run time (float, per-step products)
//   onednn  at::native::mkldnn_matmul, looked up there too (float)
// and which one is measured per machine (gemm_choice below): at the first use of a shape class, each available
// path is timed on that shape, the fastest is kept for the process and written to a small cache file next to the
// native build, so later processes skip the measurement. All paths compute the same product up to float32
// summation order (the tests hold each against a float64 product with a bound derived from K).

namespace gemm {

enum Path : int { kAuto = -1, kPlain = 0, kPacked = 1, kOneDnn = 2, kAvx512 = 3 };
constexpr int kPaths = 4;
inline const char* path_name(int p) {
  switch (p) {
    case kPlain: return "plain";
    case kPacked: return "packed";
    case kOneDnn: return "onednn";
    case kAvx512: return "avx512";
    default: return "auto";
  }
}
inline int path_of(const std::string& s) {
  for (int p = 0; p < kPaths; ++p)
    if (s == path_name(p)) return p;
  if (s == "auto" || s.empty()) return kAuto;
  return -2;  // unknown
}

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
}  // namespace mkl

// at::native::mkldnn_matmul(mat1, mat2, result, beta, alpha): result = beta * result + alpha * mat1 mat2. Not in
// torch's installed headers, so declared here by its mangled name; builds without oneDNN define it to throw,
// which the first (guarded) use catches.
using OneDnnFn = void (*)(const at::Tensor&, const at::Tensor&, const at::Tensor&, float, float);

inline void* torch_cpu() {
  static void* lib = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  return lib;
}

inline const mkl::Api& mkl_api() {
  static const mkl::Api found = [] {
    mkl::Api a;
    void* lib = torch_cpu();
    if (lib == nullptr) return a;
    a.size = reinterpret_cast<mkl::SizeFn>(dlsym(lib, "cblas_sgemm_pack_get_size"));
    a.pack = reinterpret_cast<mkl::PackFn>(dlsym(lib, "cblas_sgemm_pack"));
    a.compute = reinterpret_cast<mkl::ComputeFn>(dlsym(lib, "cblas_sgemm_compute"));
    return a.ok() ? a : mkl::Api{};
  }();
  return found;
}

inline OneDnnFn onednn_fn() {
  static const OneDnnFn found = []() -> OneDnnFn {
    void* lib = torch_cpu();
    if (lib == nullptr) return nullptr;
    auto f = reinterpret_cast<OneDnnFn>(dlsym(lib, "_ZN2at6native13mkldnn_matmulERKNS_6TensorES3_S3_ff"));
    if (f == nullptr) return nullptr;
    try {  // a build without oneDNN (or without its float matmul) throws: then the path is absent
      const auto o = at::TensorOptions().dtype(at::kFloat);
      auto a = at::ones({2, 3}, o), b = at::ones({3, 4}, o), c = at::zeros({2, 4}, o);
      f(a, b, c, 0.0f, 1.0f);
      if (c.sum().item<float>() != 24.0f) return nullptr;
    } catch (...) {
      return nullptr;
    }
    return f;
  }();
  return found;
}


// ------------------------------------------------------------------------------------------ avx512
// The engine's own kernel for float products with B packed once (compiled where the build targets AVX-512):
// B in panels of 32 columns, each panel K rows of 32 contiguous floats (zero-padded past N); out computed in
// tiles of up to 8 rows x 32 columns, 16 vector accumulators, reading a's rows where they are (no copy of a, no
// pass that zeroes out first), over blocks of kKc rows of B so that a panel's block stays in L1 while the row
// tiles pass over it, and blocks of kMc rows of a (large products) so that a's block stays in L2.
#if defined(__AVX512F__)
constexpr bool kHaveAvx512 = true;
#else
constexpr bool kHaveAvx512 = false;
#endif

namespace avx {
constexpr int64_t kNr = 32, kMr = 8, kKc = 256, kMc = 128;

inline int64_t panels(int64_t N) { return (N + kNr - 1) / kNr; }

// B (K, N), any strides -> panels (panels(N), K, 32).
inline void pack(const float* b, int64_t K, int64_t N, int64_t sk, int64_t sn, float* dst) {
  for (int64_t p = 0; p < panels(N); ++p) {
    float* d = dst + p * K * kNr;
    const int64_t n0 = p * kNr, w = std::min(kNr, N - n0);
    for (int64_t k = 0; k < K; ++k) {
      float* row = d + k * kNr;
      if (sn == 1) {
        std::memcpy(row, b + k * sk + n0, sizeof(float) * w);
      } else if (sk != 1) {
        for (int64_t j = 0; j < w; ++j) row[j] = b[k * sk + (n0 + j) * sn];
      }
      for (int64_t j = w; j < kNr; ++j) row[j] = 0.0f;
    }
    if (sn != 1 && sk == 1) {  // B^T stored by rows (W_hh^T): read each of its rows once, in order
      for (int64_t j = 0; j < w; ++j) {
        const float* col = b + (n0 + j) * sn;
        for (int64_t k = 0; k < K; ++k) d[k * kNr + j] = col[k];
      }
    }
  }
}

#if defined(__AVX512F__)
// out[r, 0:w] (+)= sum over k in [k0, k1) of a[r, k] * panel[k, :], r < MR rows; `first`: the block that starts
// the sum (from add, or zero), else it continues the sum in out.
template <int MR>
inline void tile(const float* a, int64_t lda, const float* panel, int64_t k0, int64_t k1, float* out, int64_t ldo,
                 const float* add, int64_t ldadd, bool first, int64_t w) {
  __m512 acc0[MR], acc1[MR];
  const __mmask16 m0 = w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
  const __mmask16 m1 = w >= 32 ? __mmask16(0xFFFF) : (w <= 16 ? __mmask16(0) : __mmask16((1u << (w - 16)) - 1u));
  for (int r = 0; r < MR; ++r) {
    if (!first) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, out + r * ldo);
      acc1[r] = _mm512_maskz_loadu_ps(m1, out + r * ldo + 16);
    } else if (add != nullptr) {
      acc0[r] = _mm512_maskz_loadu_ps(m0, add + r * ldadd);
      acc1[r] = _mm512_maskz_loadu_ps(m1, add + r * ldadd + 16);
    } else {
      acc0[r] = _mm512_setzero_ps();
      acc1[r] = _mm512_setzero_ps();
    }
  }
  const float* bp = panel + k0 * kNr;
  for (int64_t k = k0; k < k1; ++k, bp += kNr) {
    const __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(out + r * ldo, m0, acc0[r]);
    _mm512_mask_storeu_ps(out + r * ldo + 16, m1, acc1[r]);
  }
}

template <int MR>
inline void tile_rows(int mr, const float* a, int64_t lda, const float* panel, int64_t k0, int64_t k1, float* out,
                      int64_t ldo, const float* add, int64_t ldadd, bool first, int64_t w) {
  if constexpr (MR > 1) {
    if (mr < MR) return tile_rows<MR - 1>(mr, a, lda, panel, k0, k1, out, ldo, add, ldadd, first, w);
  }
  tile<MR>(a, lda, panel, k0, k1, out, ldo, add, ldadd, first, w);
}
#endif

// out (M, N), rows ldo apart = a (M, K), rows lda apart, contiguous within a row · packed B [+ add (M, N), rows
// ldadd apart]. Parallel over panels unless called inside a parallel region or `threads` is 1.
inline void compute(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* packed, float* out,
                    int64_t ldo, const float* add, int64_t ldadd) {
#if defined(__AVX512F__)
  const int64_t P = panels(N);
  auto run = [&](int64_t p0, int64_t p1) {
    for (int64_t m0 = 0; m0 < M; m0 += kMc) {
      const int64_t m1 = std::min(M, m0 + kMc);
      for (int64_t k0 = 0; k0 < K; k0 += kKc) {
        const int64_t k1 = std::min(K, k0 + kKc);
        for (int64_t p = p0; p < p1; ++p) {
          const float* panel = packed + p * K * kNr;
          const int64_t n0 = p * kNr, w = std::min(kNr, N - n0);
          for (int64_t r = m0; r < m1; r += kMr) {
            const int mr = static_cast<int>(std::min(kMr, m1 - r));
            tile_rows<kMr>(mr, a + r * lda, lda, panel, k0, k1, out + r * ldo + n0, ldo,
                           add ? add + r * ldadd + n0 : nullptr, ldadd, k0 == 0, w);
          }
        }
      }
    }
  };
  // (grain: enough work per task that a fork pays; one task per panel at most)
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(1, M * K * kNr));
  at::parallel_for(0, P, grain, run);
#else
  (void)M, (void)N, (void)K, (void)a, (void)lda, (void)packed, (void)out, (void)ldo, (void)add, (void)ldadd;
  TORCH_CHECK(false, "gemm: the avx512 path is not compiled in this build");
#endif
}
}  // namespace avx

// Whether a path can run products of dtype T (and, for `packed`, only per-step products: steps >= 2).
template <typename T>
bool available(int p) {
  if (p == kPlain) return true;
  if (!std::is_same_v<T, float>) return false;
  if (p == kPacked) return mkl_api().ok();
  if (p == kOneDnn) return onednn_fn() != nullptr;
  if (p == kAvx512) return kHaveAvx512;
  return false;
}

// Whether path p can run a product: dtype, `packed` for per-step products only (it packs B for several), the
// engine's own kernel where a's rows are contiguous (a_trans: a is a transposed view).
template <typename T>
bool applies(int p, bool a_trans, bool step) {
  return available<T>(p) && (step || p != kPacked) && !(a_trans && p == kAvx512);
}

// ------------------------------------------------------------------------------------------ the choice
// A planted fault for the tests (set_gemm_fault): path p reads its left operand with a leading dimension one
// too large. Never set outside them.
inline std::atomic<int>& fault() {
  static std::atomic<int> f{-1};
  return f;
}

// The path forced by set_gemm_path / NORMRNN_GEMM (kAuto: measured).
inline std::atomic<int>& forced() {
  static std::atomic<int> f{kAuto};
  return f;
}

struct Chooser {
  std::mutex lock;
  std::map<std::string, int> chosen;               // shape class -> path
  std::map<std::string, std::string> timings;      // shape class -> "plain=..us packed=..us ..." (measured here)
  std::string file, header;                        // the cache file ("" = none) and its first line
  bool loaded = false;
  int64_t measured = 0, read = 0;                  // classes measured in this process / found in the file
};
inline Chooser& chooser() {
  static auto* c = new Chooser;  // (never destroyed: a loop may still run during the process's exit)
  return *c;
}

// The shape class of a product: M rounded up to a power of two (a ragged last batch measures nothing new), K, N,
// B's layout, whether it is a per-step product, the threads the product gets, and the dtype.
inline std::string shape_class(int64_t M, int64_t K, int64_t N, bool a_trans, bool b_trans, bool step, int threads,
                               bool is_float) {
  int64_t m = 1;
  while (m < M) m *= 2;
  return std::string(step ? "step" : "mm") + " M<=" + std::to_string(m) + " K=" + std::to_string(K) +
         " N=" + std::to_string(N) + (a_trans ? " At" : "") + (b_trans ? " Bt" : " B") + " th=" + std::to_string(threads) +
         (is_float ? " f32" : " f64");
}

// The cache file: a header line (format, CPU, torch), then one "class<TAB>path" line per shape class. Anything
// that does not parse, or another header, is ignored: the classes are measured again and the file rewritten.
inline void load_file(Chooser& c) {
  if (c.loaded) return;
  c.loaded = true;
  if (c.file.empty()) return;
  std::ifstream in(c.file);
  std::string line;
  if (!in || !std::getline(in, line) || line != c.header) return;
  std::map<std::string, int> got;
  while (std::getline(in, line)) {
    const auto tab = line.find('\t');
    if (tab == std::string::npos) return;  // corrupt: ignore the whole file
    const int p = path_of(line.substr(tab + 1));
    if (p < 0) return;
    got[line.substr(0, tab)] = p;
  }
  for (auto& [k, p] : got) c.chosen.emplace(k, p);
  c.read = static_cast<int64_t>(got.size());
}

inline void save_file(const Chooser& c) {
  if (c.file.empty()) return;
  const std::string tmp = c.file + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::trunc);
    if (!out) return;
    out << c.header << "\n";
    for (const auto& [k, p] : c.chosen) out << k << "\t" << path_name(p) << "\n";
    if (!out) return;
  }
  std::rename(tmp.c_str(), c.file.c_str());  // atomic: a reader sees the old file or the new one
}

template <typename T>
double time_path(int path, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool step, int reps);
constexpr int64_t kMeasureRows = 256, kMeasureDepth = 1024;

// The path for a product of this shape: forced, or the cached choice, or measured now (a few repetitions of
// each available path on operands of this shape, under the lock: a concurrent first use waits for it).
template <typename T>
int choose(int64_t M, int64_t K, int64_t N, bool a_trans, bool b_trans, bool step) {
  const int f = forced().load();
  if (f != kAuto) return applies<T>(f, a_trans, step) ? f : kPlain;
  std::vector<int> candidates;
  for (int p = 0; p < kPaths; ++p)
    if (applies<T>(p, a_trans, step)) candidates.push_back(p);
  if (candidates.size() == 1) return candidates[0];
  const int threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  const std::string key = shape_class(M, K, N, a_trans, b_trans, step, threads, std::is_same_v<T, float>);
  auto& c = chooser();
  std::lock_guard<std::mutex> g(c.lock);
  load_file(c);
  const auto it = c.chosen.find(key);
  if (it != c.chosen.end() && applies<T>(it->second, a_trans, step)) return it->second;
  // Measure: rounds over the candidates in turn (so a burst of load hits them alike), the fastest round of each.
  // A large product is measured on a slice (at most kMeasureRows rows of a, kMeasureDepth of the inner dimension):
  // a GEMM's rate no longer changes much beyond that, and the whole measurement stays well under a second.
  const int64_t Mm = step ? M : std::min<int64_t>(M, kMeasureRows), Km = step ? K : std::min<int64_t>(K, kMeasureDepth);
  const double flops = 2.0 * Mm * Km * N;
  const int rounds = static_cast<int>(std::clamp(1e8 / std::max(flops, 1.0), 2.0, 20.0));
  const int reps = static_cast<int>(std::clamp(1e7 / std::max(flops, 1.0), step ? 2.0 : 1.0, 16.0));
  const at::NoGradGuard no_grad;
  const auto o = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const at::Tensor a = a_trans ? at::randn({Km, Mm}, o).t() : at::randn({Mm, Km}, o), out = at::empty({Mm, N}, o);
  const at::Tensor b = b_trans ? at::randn({N, Km}, o).t() : at::randn({Km, N}, o);
  std::vector<double> best(kPaths, 1e300);
  for (int p : candidates) time_path<T>(p, a, b, out, step, 1);  // warm-up (first-call costs)
  for (int r = 0; r < rounds; ++r)
    for (int p : candidates) best[p] = std::min(best[p], time_path<T>(p, a, b, out, step, reps));
  int pick = candidates[0];
  for (int p : candidates)
    if (best[p] < best[pick]) pick = p;
  std::string t;
  for (int p : candidates) t += std::string(t.empty() ? "" : " ") + path_name(p) + "=" + std::to_string(best[p] * 1e6);
  c.timings[key] = t;
  c.chosen[key] = pick;
  ++c.measured;
  save_file(c);
  return pick;
}

}  // namespace gemm

// out (M, Nc) = a (M, K) · B (K, Nc) [+ add], for `steps` products with the same B in one call, on the path
// gemm::choose picks (or the one given).
template <typename T>
class StepGemm {
 public:
  StepGemm(const at::Tensor& b, int64_t M, int64_t steps, int path = gemm::kAuto)
      : M_(M), K_(b.size(0)), N_(b.size(1)) {
    b_ = b.detach();  // (autograd's mode is per thread: a worker's may be on)
    const bool fits = std::max({M, K_, N_}) < (int64_t(1) << 30);
    if (M <= 0 || K_ <= 0 || N_ <= 0 || !fits) return;
    const bool trans = b.stride(1) != 1 && b.stride(0) == 1;  // B stored column by column (W_hh^T)
    path_ = path == gemm::kAuto ? gemm::choose<T>(M, K_, N_, false, trans, steps >= 2) : path;
    if (!gemm::applies<T>(path_, false, true)) path_ = gemm::kPlain;
    fault_ = gemm::fault().load() == path_;
    if constexpr (std::is_same_v<T, float>) {
      if (path_ == gemm::kPacked) {
        const bool rows = b.stride(1) == 1, cols = b.stride(0) == 1;
        const at::Tensor src = rows || cols ? b : b.contiguous();
        const bool t = !rows && cols;  // pack it as the transpose of its rows
        const int ld = static_cast<int>(t ? std::max(src.stride(1), K_) : std::max(src.stride(0), N_));
        const auto& api = gemm::mkl_api();
        packed_ = acquire(api.size(gemm::mkl::kBMatrix, M, N_, K_));
        if (packed_ != nullptr) {
          api.pack(gemm::mkl::kRowMajor, gemm::mkl::kBMatrix, t ? gemm::mkl::kTrans : gemm::mkl::kNoTrans, M, N_,
                   K_, 1.0f, src.data_ptr<float>(), ld, static_cast<float*>(packed_->data));
          return;
        }
        path_ = gemm::kPlain;  // no memory for the packed matrix
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (path_ == gemm::kAvx512) {
        own_ = at::empty({gemm::avx::panels(N_) * K_ * gemm::avx::kNr}, b.options());
        gemm::avx::pack(b.data_ptr<float>(), K_, N_, b.stride(0), b.stride(1), own_.data_ptr<float>());
      }
    }
  }

  int path() const { return path_; }

  // out (M, Nc) contiguous; a (M, K) with rows `lda` apart; add (M, Nc) contiguous or null; out overlaps neither.
  // Raw pointers: a step's operands are rows of larger buffers, and a Tensor view per operand and step cost
  // about 1.5 us each (~5% of a step at N=8, H=128).
  void operator()(T* out, const T* a, int64_t lda, const T* add = nullptr) const {
    if (fault_) lda += 1;  // (the tests' planted fault)
    if constexpr (std::is_same_v<T, float>) {
      if (path_ == gemm::kPacked) {
        if (add) std::memcpy(out, add, sizeof(T) * M_ * N_);
        gemm::mkl_api().compute(gemm::mkl::kRowMajor, gemm::mkl::kNoTrans, gemm::mkl::kPacked, M_, N_, K_, a,
                                static_cast<int>(lda), static_cast<const float*>(packed_->data), K_,
                                add ? 1.0f : 0.0f, out, static_cast<int>(N_));
        return;
      }
    }
    if constexpr (std::is_same_v<T, float>) {
      if (path_ == gemm::kAvx512) {
        gemm::avx::compute(M_, N_, K_, a, lda, own_.data_ptr<float>(), out, N_, add, N_);
        return;
      }
    }
    const auto o = b_.options();
    auto out_t = at::from_blob(out, {M_, N_}, o);
    const auto a_t = at::from_blob(const_cast<T*>(a), {M_, K_}, {lda, 1}, o);
    if constexpr (std::is_same_v<T, float>) {
      if (path_ == gemm::kOneDnn) {
        if (add) std::memcpy(out, add, sizeof(T) * M_ * N_);
        gemm::onednn_fn()(a_t, b_, out_t, add ? 1.0f : 0.0f, 1.0f);
        return;
      }
    }
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
  int path_ = gemm::kPlain;
  bool fault_ = false;
  at::Tensor b_, own_;  // own_: B packed for the avx512 path
  std::shared_ptr<Mapping> packed_;
};


namespace gemm {

// out (M, N) = a (M, K) · b (K, N), or out += a · b (`accumulate`): one large product (the weight gradient over
// all steps, the input projection), on the path chosen for its shape class (never `packed`: one product).
// a and b may be transposed views; out is contiguous.
template <typename T>
void mm_into(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b, bool accumulate, int path = kAuto) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  if (path == kAuto) {
    path = M > 0 && K > 0 && N > 0
               ? choose<T>(M, K, N, a.stride(1) != 1, b.stride(1) != 1 && b.stride(0) == 1, false) : kPlain;
  }
  if (!applies<T>(path, a.stride(1) != 1, false) || !out.is_contiguous()) path = kPlain;
  const bool faulty = fault().load() == path;
  if constexpr (std::is_same_v<T, float>) {
    if (path == kAvx512) {
      auto packed = at::empty({avx::panels(N) * K * avx::kNr}, out.options());
      avx::pack(b.data_ptr<float>(), K, N, b.stride(0), b.stride(1), packed.data_ptr<float>());
      avx::compute(M, N, K, a.data_ptr<float>(), a.stride(0) + (faulty ? 1 : 0), packed.data_ptr<float>(),
                   out.data_ptr<float>(), N, accumulate ? out.data_ptr<float>() : nullptr, N);
      return;
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (path == kOneDnn) {
      onednn_fn()(faulty ? a.as_strided({M, K}, {a.stride(0) + 1, a.stride(1)}) : a, b, out,
                  accumulate ? 1.0f : 0.0f, 1.0f);
      return;
    }
  }
  const at::Tensor a_ = faulty ? a.as_strided({M, K}, {a.stride(0) + 1, a.stride(1)}) : a;
  if (accumulate) {
    at::addmm_out(const_cast<at::Tensor&>(out), out, a_, b);
  } else {
    at::mm_out(const_cast<at::Tensor&>(out), a_, b);
  }
}

// Seconds per product on path p, over `reps` products out = a · b. Per-step products (`step`): one StepGemm, as
// a loop makes one per call, then `reps` products; its setup (packing B) is counted as spread over kSetupSteps
// products, a short sequence's length, so that a path which packs pays for it, but not as if every product did.
constexpr int kSetupSteps = 16;

template <typename T>
double time_path(int path, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out, bool step, int reps) {
  using clock = std::chrono::steady_clock;
  const auto t0 = clock::now();
  if (step) {
    const StepGemm<T> g(b, a.size(0), std::max(reps, 2), path);
    const auto t1 = clock::now();
    for (int r = 0; r < reps; ++r) g(out.data_ptr<T>(), a.data_ptr<T>(), a.size(1));
    const auto t2 = clock::now();
    return std::chrono::duration<double>(t2 - t1).count() / reps +
           std::chrono::duration<double>(t1 - t0).count() / kSetupSteps;
  }
  for (int r = 0; r < reps; ++r) mm_into<T>(out, a, b, false, path);
  return std::chrono::duration<double>(clock::now() - t0).count() / reps;
}

}  // namespace gemm
