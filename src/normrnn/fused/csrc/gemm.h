// gemm.h: the per-step recurrent GEMM (MKL's packed GEMM where torch carries it, else at::mm_out).
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
#pragma once

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
