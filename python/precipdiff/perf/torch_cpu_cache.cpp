// torch_cpu_cache.cpp -- a caching CPU allocator for torch's own tensors.
//
// Why: eager inference at 721x1440 frees and re-allocates the same large activations in
// every network evaluation. glibc serves blocks above its mmap threshold (at most 32 MiB)
// with mmap/munmap, so every forward re-faults its activations page by page (hundreds of
// thousands of minor page faults and seconds of system time per window). Raising glibc's
// thresholds (mallopt) would cure it but changes the malloc behaviour of the whole process,
// i.e. of the host model. This allocator keeps freed large blocks of *torch's* tensors for
// reuse instead and leaves the host's malloc untouched.
//
// Installed with c10::SetCPUAllocator at a priority above torch's default; every block it
// hands out comes from, and finally goes back to, the allocator it replaced (through that
// allocator's raw allocate/deleter pair). Blocks below `min_block` bytes are not cached.
// A freed block is kept when the cache stays within its cap: `max_cached` bytes if given,
// else twice the peak of live cached-size bytes (room for one working set even when the
// freed blocks do not fit the next requests exactly). Best fit: a request takes the
// smallest cached block that is at least as large and at most 2x as large.
//
// C interface (loaded with ctypes by precipdiff.perf.allocator): pdc_install, pdc_uninstall,
// pdc_release, pdc_stats. The singleton is never destroyed: tensors may be freed after
// static destructors have run.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

namespace {

constexpr uint8_t kPriority = 100;
constexpr size_t kRound = size_t(1) << 16;  // sizes rounded up to 64 KiB

class CachingCPUAllocator final : public c10::Allocator {
 public:
  c10::Allocator* base = nullptr;  // the allocator this one replaced
  size_t min_block = size_t(1) << 20;
  size_t max_cached = 0;  // 0: adaptive (peak live bytes)
  bool installed = false;

  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;   // size -> block
  std::unordered_map<void*, size_t> live;     // block -> size (cached-size blocks in use)
  size_t cached_bytes = 0, live_bytes = 0, peak_live = 0;
  int64_t hits = 0, misses = 0, released = 0;

  static void deleter(void* ptr);

  c10::DataPtr allocate(size_t n) override {
    if (n < min_block || !installed) return base->allocate(n);
    const size_t size = (n + kRound - 1) / kRound * kRound;
    void* ptr = nullptr;
    size_t got = size;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free_blocks.lower_bound(size);
      if (it != free_blocks.end() && it->first <= 2 * size) {
        ptr = it->second;
        got = it->first;
        cached_bytes -= got;
        free_blocks.erase(it);
        ++hits;
      } else {
        ++misses;
      }
    }
    if (ptr == nullptr) ptr = base->raw_allocate(size);  // throws c10::Error when out of memory
    {
      std::lock_guard<std::mutex> lock(mu);
      live.emplace(ptr, got);
      live_bytes += got;
      if (live_bytes > peak_live) peak_live = live_bytes;
    }
    return {ptr, ptr, &CachingCPUAllocator::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &CachingCPUAllocator::deleter; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  // Free every cached block; returns the bytes given back.
  size_t release() {
    std::multimap<size_t, void*> blocks;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu);
      blocks.swap(free_blocks);
      bytes = cached_bytes;
      cached_bytes = 0;
      released += static_cast<int64_t>(blocks.size());
    }
    const c10::DeleterFnPtr free_fn = base->raw_deleter();
    for (auto& kv : blocks) free_fn(kv.second);
    return bytes;
  }
};

CachingCPUAllocator* g_cache = nullptr;

void CachingCPUAllocator::deleter(void* ptr) {
  CachingCPUAllocator* c = g_cache;
  {
    std::lock_guard<std::mutex> lock(c->mu);
    auto it = c->live.find(ptr);
    if (it != c->live.end()) {
      const size_t size = it->second;
      c->live.erase(it);
      c->live_bytes -= size;
      const size_t cap = c->max_cached ? c->max_cached : 2 * c->peak_live;
      if (c->installed && c->cached_bytes + size <= cap) {
        c->free_blocks.emplace(size, ptr);
        c->cached_bytes += size;
        return;
      }
      ++c->released;
    }
  }
  // Not cached (or a small block from the replaced allocator's raw_allocate): give it back.
  c->base->raw_deleter()(ptr);
}

}  // namespace

#define PDC_API __attribute__((visibility("default")))

extern "C" {

// Install the cache. Returns 0 when installed, 1 when it already was, -1 when the current
// CPU allocator cannot be wrapped (no raw deleter), -2 on any other failure.
PDC_API int pdc_install(unsigned long long min_block, unsigned long long max_cached) {
  try {
    if (g_cache == nullptr) g_cache = new CachingCPUAllocator();
    if (g_cache->installed) return 1;
    c10::Allocator* current = c10::GetCPUAllocator();
    if (current == g_cache) current = g_cache->base;
    if (current == nullptr || current->raw_deleter() == nullptr) return -1;
    g_cache->base = current;
    if (min_block) g_cache->min_block = static_cast<size_t>(min_block);
    g_cache->max_cached = static_cast<size_t>(max_cached);
    g_cache->installed = true;
    c10::SetCPUAllocator(g_cache, kPriority);
    return 0;
  } catch (...) {
    return -2;
  }
}

// Put the replaced allocator back and free the cached blocks. Blocks still in use are
// given back to it when their tensors die. Returns 0, or 1 when not installed.
PDC_API int pdc_uninstall(void) {
  if (g_cache == nullptr || !g_cache->installed) return 1;
  g_cache->installed = false;
  c10::SetCPUAllocator(g_cache->base, kPriority);
  g_cache->release();
  return 0;
}

// Free the cached blocks (the cache stays installed). Returns the bytes given back.
PDC_API unsigned long long pdc_release(void) {
  if (g_cache == nullptr) return 0;
  return static_cast<unsigned long long>(g_cache->release());
}

// out[0..7]: installed, hits, misses, cached bytes, live bytes, peak live bytes, blocks
// given back to the replaced allocator, cached blocks.
PDC_API void pdc_stats(long long* out) {
  for (int i = 0; i < 8; ++i) out[i] = 0;
  if (g_cache == nullptr) return;
  std::lock_guard<std::mutex> lock(g_cache->mu);
  out[0] = g_cache->installed ? 1 : 0;
  out[1] = g_cache->hits;
  out[2] = g_cache->misses;
  out[3] = static_cast<long long>(g_cache->cached_bytes);
  out[4] = static_cast<long long>(g_cache->live_bytes);
  out[5] = static_cast<long long>(g_cache->peak_live);
  out[6] = g_cache->released;
  out[7] = static_cast<long long>(g_cache->free_blocks.size());
}

}  // extern "C"
