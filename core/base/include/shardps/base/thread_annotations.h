// Locking contracts the compiler checks: clang's thread-safety analysis (-Wthread-safety, on in
// the SHARDPS_THREAD_SAFETY build) proves at compile time that every member declared
// SHARDPS_GUARDED_BY(mu_) is touched only while mu_ is held.
//
//   class Queue {
//    public:
//     void Push(int v) SHARDPS_EXCLUDES(mu_) {
//       MutexLock lock(mu_);
//       items_.push_back(v);
//     }
//    private:
//     Mutex mu_;
//     std::vector<int> items_ SHARDPS_GUARDED_BY(mu_);
//   };
//
// The macros expand to nothing under compilers without the analysis (GCC). The library's
// std::mutex carries no annotations, so guarded state is protected by shardps::Mutex, a
// zero-cost annotated wrapper around it. The macros are prefixed because this header is part of
// the installed headers and must not clash with a user's own GUARDED_BY.
#pragma once

#include <mutex>

#if defined(__clang__)
#define SHARDPS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define SHARDPS_THREAD_ANNOTATION(x)
#endif

// A type that is a lock (a "capability" named `x` in the warnings).
#define SHARDPS_CAPABILITY(x) SHARDPS_THREAD_ANNOTATION(capability(x))
// An RAII type that holds a capability for its lifetime.
#define SHARDPS_SCOPED_CAPABILITY SHARDPS_THREAD_ANNOTATION(scoped_lockable)
// A member that may be read or written only while `x` is held.
#define SHARDPS_GUARDED_BY(x) SHARDPS_THREAD_ANNOTATION(guarded_by(x))
// A pointer member whose pointee may be touched only while `x` is held.
#define SHARDPS_PT_GUARDED_BY(x) SHARDPS_THREAD_ANNOTATION(pt_guarded_by(x))
// A function the caller must call with the capabilities held (and that does not release them).
#define SHARDPS_REQUIRES(...) SHARDPS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
// A function the caller must not call with the capabilities held (it takes them itself).
#define SHARDPS_EXCLUDES(...) SHARDPS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
// A function that takes / gives back the capabilities (none listed: `this`).
#define SHARDPS_ACQUIRE(...) SHARDPS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define SHARDPS_RELEASE(...) SHARDPS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
// A function that takes the capabilities when it returns its first argument (e.g. true).
#define SHARDPS_TRY_ACQUIRE(...) SHARDPS_THREAD_ANNOTATION(try_acquire_capability(__VA_ARGS__))
// A function returning a reference to the capability `x`.
#define SHARDPS_RETURN_CAPABILITY(x) SHARDPS_THREAD_ANNOTATION(lock_returned(x))
// Turns the analysis off for one function; say why next to it.
#define SHARDPS_NO_THREAD_SAFETY_ANALYSIS SHARDPS_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace shardps {

// std::mutex with the annotations the analysis needs. Same size, same cost: every call is an
// inline forward.
class SHARDPS_CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() SHARDPS_ACQUIRE() { mu_.lock(); }
  void Unlock() SHARDPS_RELEASE() { mu_.unlock(); }
  bool TryLock() SHARDPS_TRY_ACQUIRE(true) { return mu_.try_lock(); }

 private:
  friend class MutexLock;
  std::mutex mu_;
};

// Holds a Mutex from construction to the end of the scope (std::lock_guard for Mutex).
//
// Waiting on a std::condition_variable: pass native() to wait()/wait_until(), and test the
// condition in a loop in the function that holds the lock, not in a predicate lambda (a lambda is
// a separate function to the analysis, which cannot know the lock is held when it runs):
//
//   MutexLock lock(mu_);
//   while (!ready_) cv_.wait(lock.native());
//
// The analysis accepts this, and rightly: it does not look inside wait(), so to it the Mutex stays
// held for the whole scope; wait() does release the mutex while it sleeps, but it takes it again
// before returning, so every access to guarded state in the scope happens with the lock held. Do
// not unlock() the std::unique_lock yourself: the analysis would not see it.
class SHARDPS_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) SHARDPS_ACQUIRE(mu) : lock_(mu.mu_) {}
  ~MutexLock() SHARDPS_RELEASE() {}
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  // The held lock, for std::condition_variable::wait and wait_until only.
  std::unique_lock<std::mutex>& native() { return lock_; }

 private:
  std::unique_lock<std::mutex> lock_;
};

}  // namespace shardps
