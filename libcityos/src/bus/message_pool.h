// Internal: a recycling allocator for the Messages the bus makes for every
// event it routes to live subscribers (std::allocate_shared with
// MessageAllocator: the message and its reference count in one chunk).
//
// Why: a publisher thread allocates each message and a subscriber thread frees
// it. With glibc's malloc most of those frees land in the publisher's arena
// under its lock while the publisher allocates from it: two threads taking one
// futex-backed lock per event (perf: a third of the 1 -> 1 hand-off's time in
// lock wake-ups and waits). Here each thread keeps its own cache of free
// chunks, and threads exchange free chunks in chains of kChain through a
// mutex-guarded depot: one lock per kChain frees or allocations, none per
// event.
//
// Bounded: a thread caches at most 2 * kChain chunks, the depot at most
// kMaxChains chains; beyond that chunks go back to operator delete. A thread's
// cache is freed when the thread ends.
#ifndef CITYOS_SRC_BUS_MESSAGE_POOL_H_
#define CITYOS_SRC_BUS_MESSAGE_POOL_H_

#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

namespace cityos::bus_internal {

// Free chunks of exactly kSize bytes. `Tag` makes a separate pool (its own
// depot and thread caches), for tests; the bus uses the default.
template <size_t kSize, typename Tag = void>
class ChunkPool {
  struct Free {
    Free* next;
  };
  static_assert(kSize >= sizeof(Free));

 public:
  static constexpr size_t kChain = 64;
  static constexpr size_t kMaxChains = 64;

  static void* Allocate() {
    Cache& c = cache_;
    if (c.dead) return ::operator new(kSize);
    if (c.a == nullptr) Refill(c);
    if (c.a == nullptr) return ::operator new(kSize);
    Free* f = c.a;
    c.a = f->next;
    --c.na;
    return f;
  }

  static void Deallocate(void* p) {
    Cache& c = cache_;
    if (c.dead) {
      ::operator delete(p);
      return;
    }
    Free* f = static_cast<Free*>(p);
    if (c.na == 0) Reaper().Touch();  // so that the thread's end frees the cache
    if (c.na < kChain) {
      f->next = c.a;
      c.a = f;
      ++c.na;
      return;
    }
    f->next = c.b;
    c.b = f;
    if (++c.nb == kChain) {
      Depot().Put(c.b);
      c.b = nullptr;
      c.nb = 0;
    }
  }

  // Chunks cached in the depot (for tests).
  static size_t DepotChunks() { return Depot().Chains() * kChain; }
  // Frees every chunk in the depot (for tests: a known start).
  static void DrainDepot() {
    while (Free* chain = Depot().Take()) DeleteList(chain);
  }

 private:
  // Trivially destructible, so that it stays usable while the thread ends;
  // Reaper empties it and sets `dead` when the thread's destructors run.
  struct Cache {
    Free* a;  // allocations pop here, frees push here first (up to kChain)
    Free* b;  // then here; a full chain goes to the depot
    size_t na;
    size_t nb;
    bool dead;
  };

  class DepotT {
   public:
    Free* Take() {
      std::lock_guard<std::mutex> lock(mu_);
      if (chains_.empty()) return nullptr;
      Free* f = chains_.back();
      chains_.pop_back();
      return f;
    }
    void Put(Free* chain) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (chains_.size() < kMaxChains) {
          chains_.push_back(chain);
          return;
        }
      }
      DeleteList(chain);
    }
    size_t Chains() {
      std::lock_guard<std::mutex> lock(mu_);
      return chains_.size();
    }

   private:
    std::mutex mu_;
    std::vector<Free*> chains_;  // each exactly kChain chunks
  };

  struct ReaperT {
    void Touch() {}
    ~ReaperT() {
      Cache& c = cache_;
      c.dead = true;
      DeleteList(c.a);
      DeleteList(c.b);
      c.a = c.b = nullptr;
      c.na = c.nb = 0;
    }
  };

  static void DeleteList(Free* f) {
    while (f != nullptr) {
      Free* next = f->next;
      ::operator delete(f);
      f = next;
    }
  }

  // Never destroyed: chunks may be freed during static destruction.
  static DepotT& Depot() {
    static DepotT* const depot = new DepotT;
    return *depot;
  }

  static ReaperT& Reaper() {
    thread_local ReaperT reaper;
    return reaper;
  }

  static void Refill(Cache& c) {
    Reaper().Touch();
    if (c.b != nullptr) {
      c.a = c.b;
      c.na = c.nb;
      c.b = nullptr;
      c.nb = 0;
      return;
    }
    if (Free* chain = Depot().Take()) {
      c.a = chain;
      c.na = kChain;
    }
  }

  static thread_local Cache cache_;
};

template <size_t kSize, typename Tag>
thread_local typename ChunkPool<kSize, Tag>::Cache ChunkPool<kSize, Tag>::cache_{};

// For std::allocate_shared: single objects come from ChunkPool (of `Tag`),
// anything else from operator new.
template <typename T, typename Tag = void>
struct MessageAllocator {
  using value_type = T;
  static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__);

  MessageAllocator() = default;
  template <typename U>
  MessageAllocator(const MessageAllocator<U, Tag>&) {}  // NOLINT: rebinding

  T* allocate(size_t n) {
    if (n == 1) return static_cast<T*>(ChunkPool<sizeof(T), Tag>::Allocate());
    return static_cast<T*>(::operator new(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) {
    if (n == 1) {
      ChunkPool<sizeof(T), Tag>::Deallocate(p);
    } else {
      ::operator delete(p);
    }
  }
  template <typename U>
  bool operator==(const MessageAllocator<U, Tag>&) const {
    return true;
  }
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_MESSAGE_POOL_H_
