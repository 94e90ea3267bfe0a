// pool.h: memory for a call's large buffers (T steps long), kept between calls.
//
// Part of the native engine: included by engine.cpp, in reading order, inside its anonymous namespace.
//
// A training step allocates some ten buffers of T x N x 4H floats (gates, normalized terms, the input term and
// their gradients) and frees them after backward. glibc serves buffers that large with fresh pages from the
// kernel (mmap), so every call pays a page fault and a cleared page per 4 KiB: at 100 x 32 x 256 on the AMD
// EPYC, 2 threads, a batch-norm LSTM step faulted 12,400 times (nn.LSTM: 8,200) and spent 26 ms of CPU in the
// kernel against 136 ms in user code. So buffers of at least kMinBytes come from this pool: a freed buffer's
// memory goes back to it, not to the system, and the next call of the same shape takes it again, as oneDNN keeps
// its scratchpad and PyTorch's CUDA allocator its blocks. What the pool holds unused is capped (limit(), 512 MiB;
// a block that would exceed it is freed), and release() returns all of it (normrnn.fused.release_scratch).
// Tensors from the pool are ordinary CPU tensors whose storage cannot be resized; none is handed to the user as
// an output (outputs and states still come from at::empty).
#pragma once

class BufferPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;  // smaller buffers: at::empty (glibc reuses those)
  static constexpr size_t kAlign = 64;

  static BufferPool& get() {
    static BufferPool* pool = new BufferPool();  // (never destroyed: tensors may outlive static destruction)
    return *pool;
  }

  // For the tests: fill every buffer handed out with NaN (floating types), so that a kernel reading a pooled
  // buffer before writing it shows in its results (fresh pages from the system read as zeros and hide that).
  static bool& poison() {
    static bool on = false;
    return on;
  }

  static int64_t& limit() {
    static int64_t bytes = int64_t(512) << 20;
    return bytes;
  }

  // An uninitialized tensor of `sizes`, from the pool where it is large enough to be worth keeping.
  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& o) {
    int64_t numel = 1;
    for (const int64_t s : sizes) numel *= s;
    const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(c10::typeMetaToScalarType(o.dtype()));
    if (bytes < kMinBytes || o.device().type() != c10::DeviceType::CPU) return at::empty(sizes, o);
    size_t size = (bytes + kRound - 1) / kRound * kRound;
    void* p = take(size);
    if (p == nullptr) {
      p = std::aligned_alloc(kAlign, size);
      if (p == nullptr) return at::empty(sizes, o);
    }
    auto t = at::from_blob(p, sizes, [size](void* q) { BufferPool::get().give_back(q, size); }, o);
    if (poison() && at::isFloatingType(t.scalar_type())) t.fill_(std::numeric_limits<double>::quiet_NaN());
    return t;
  }

  // Frees every block the pool holds unused; returns the bytes freed.
  int64_t release() {
    std::multimap<size_t, void*> blocks;
    {
      const std::lock_guard<std::mutex> g(lock_);
      blocks.swap(free_);
      cached_ = 0;
    }
    int64_t freed = 0;
    for (auto& [size, p] : blocks) {
      std::free(p);
      freed += static_cast<int64_t>(size);
    }
    return freed;
  }

  int64_t cached_bytes() {
    const std::lock_guard<std::mutex> g(lock_);
    return static_cast<int64_t>(cached_);
  }

 private:
  static constexpr size_t kRound = size_t(64) << 10;  // sizes in 64 KiB units: nearby shapes share blocks

  // A free block of at least `size` bytes and at most 1.25x that (a larger one would idle more than it saves);
  // `size` becomes the block's.
  void* take(size_t& size) {
    const std::lock_guard<std::mutex> g(lock_);
    const auto it = free_.lower_bound(size);
    if (it == free_.end() || it->first > size + size / 4) return nullptr;
    void* p = it->second;
    size = it->first;
    cached_ -= size;
    free_.erase(it);
    return p;
  }

  void give_back(void* p, size_t size) {
    {
      const std::lock_guard<std::mutex> g(lock_);
      if (cached_ + size <= static_cast<size_t>(std::max<int64_t>(limit(), 0))) {
        free_.emplace(size, p);
        cached_ += size;
        return;
      }
    }
    std::free(p);
  }

  std::mutex lock_;
  std::multimap<size_t, void*> free_;  // unused blocks by size
  size_t cached_ = 0;
};

// A T-steps-long buffer of the engine: from the pool (see above).
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& o) {
  return BufferPool::get().empty(sizes, o);
}
