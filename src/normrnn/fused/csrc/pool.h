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
// its scratchpad and PyTorch's CUDA allocator its blocks. What the pool holds unused is capped (limit(), 512 MiB):
// a freed block that would exceed it pushes out the blocks freed longest ago, so that when the shapes change
// (other lengths, another model) the pool comes to hold the new ones rather than keep the old ones forever; and
// release() returns all of it (normrnn.fused.release_scratch).
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
    std::list<Block> blocks;
    {
      const std::lock_guard<std::mutex> g(lock_);
      blocks.swap(free_);
      cached_ = 0;
    }
    int64_t freed = 0;
    for (const Block& b : blocks) {
      std::free(b.p);
      freed += static_cast<int64_t>(b.size);
    }
    return freed;
  }

  int64_t cached_bytes() {
    const std::lock_guard<std::mutex> g(lock_);
    return static_cast<int64_t>(cached_);
  }

 private:
  static constexpr size_t kRound = size_t(64) << 10;  // sizes in 64 KiB units: nearby shapes share blocks

  struct Block {
    void* p;
    size_t size;
  };

  // The smallest free block of at least `size` bytes and at most 1.25x that (a larger one would idle more than it
  // saves), the most recently freed among equals; `size` becomes the block's. (A linear search: a pool holds a few
  // blocks per buffer of a call, tens in all, each worth a megabyte or more of work.)
  void* take(size_t& size) {
    const std::lock_guard<std::mutex> g(lock_);
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->size >= size && it->size <= size + size / 4 && (best == free_.end() || it->size < best->size)) best = it;
    if (best == free_.end()) return nullptr;
    void* p = best->p;
    size = best->size;
    cached_ -= size;
    free_.erase(best);
    return p;
  }

  // Keeps a freed block, pushing out the blocks freed longest ago while the pool would exceed its limit.
  void give_back(void* p, size_t size) {
    std::vector<void*> out;
    {
      const std::lock_guard<std::mutex> g(lock_);
      const size_t cap = static_cast<size_t>(std::max<int64_t>(limit(), 0));
      if (size > cap) {
        out.push_back(p);
      } else {
        free_.push_front({p, size});
        cached_ += size;
        while (cached_ > cap) {
          out.push_back(free_.back().p);
          cached_ -= free_.back().size;
          free_.pop_back();
        }
      }
    }
    for (void* q : out) std::free(q);  // (outside the lock)
  }

  std::mutex lock_;
  std::list<Block> free_;  // unused blocks, the most recently freed first
  size_t cached_ = 0;
};

// A T-steps-long buffer of the engine: from the pool (see above).
inline at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& o) {
  return BufferPool::get().empty(sizes, o);
}
