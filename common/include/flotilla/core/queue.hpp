#pragma once
// A bounded, closable multi-producer queue. Transport callbacks push into it (blocking briefly
// when full, which pushes back on the network instead of growing without bound); one reactor
// thread drains it in batches.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <vector>

namespace flotilla {

template <typename T>
class BoundedQueue {
 public:
  explicit BoundedQueue(std::size_t capacity) : capacity_(capacity) {}

  // Blocks while full. Returns false when the queue is closed (the item is dropped).
  bool push(T item) {
    std::unique_lock lock(mutex_);
    not_full_.wait(lock, [&] { return closed_ || items_.size() < capacity_; });
    if (closed_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  // Never blocks. Returns false when full or closed.
  bool try_push(T item) {
    std::lock_guard lock(mutex_);
    if (closed_ || items_.size() >= capacity_) return false;
    items_.push_back(std::move(item));
    not_empty_.notify_one();
    return true;
  }

  // Waits up to `timeout` for at least one item, then moves up to `max` items into `out`.
  // Returns the number moved; 0 on timeout or when closed and empty.
  std::size_t drain(std::vector<T>& out, std::size_t max, std::chrono::steady_clock::duration timeout) {
    std::unique_lock lock(mutex_);
    not_empty_.wait_for(lock, timeout, [&] { return closed_ || !items_.empty(); });
    std::size_t n = 0;
    while (n < max && !items_.empty()) {
      out.push_back(std::move(items_.front()));
      items_.pop_front();
      ++n;
    }
    if (n > 0) not_full_.notify_all();
    return n;
  }

  std::optional<T> pop(std::chrono::steady_clock::duration timeout) {
    std::vector<T> one;
    if (drain(one, 1, timeout) == 0) return std::nullopt;
    return std::move(one.front());
  }

  // Wakes every waiter; later pushes fail. Items already queued can still be drained.
  void close() {
    std::lock_guard lock(mutex_);
    closed_ = true;
    not_empty_.notify_all();
    not_full_.notify_all();
  }

  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

  std::size_t size() const {
    std::lock_guard lock(mutex_);
    return items_.size();
  }

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable not_empty_;
  std::condition_variable not_full_;
  std::deque<T> items_;
  bool closed_ = false;
};

}  // namespace flotilla
