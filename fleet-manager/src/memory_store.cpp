// An in-memory Store with the RocksDB store's semantics, for unit tests of flows.

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flotilla/manager/store.hpp"

namespace flotilla::manager {
namespace {

constexpr auto kSpaceCount = static_cast<std::size_t>(Space::count);

// Owns one sorted map per Space. Thread-safe: readers share a lock, a batch is applied under
// an exclusive one, so it is atomic. `sync` is accepted and ignored.
class MemoryStore final : public Store {
 public:
  Result<std::string> get(Space space, std::string_view key) const override {
    const auto index = static_cast<std::size_t>(space);
    if (index >= kSpaceCount) return invalid_space(space);
    const std::shared_lock lock(mutex_);
    const auto& map = spaces_[index];
    const auto it = map.find(key);
    if (it == map.end()) return make_error(Errc::not_found, "memory store: no key {:?} in space {}", key, index);
    return it->second;
  }

  Status write(const Batch& batch, bool /*sync*/) override {
    // Validate first, so that a bad batch changes nothing.
    for (const auto& op : batch.ops) {
      if (static_cast<std::size_t>(op.space) >= kSpaceCount) return invalid_space(op.space);
    }
    const std::unique_lock lock(mutex_);
    for (const auto& op : batch.ops) {
      auto& map = spaces_[static_cast<std::size_t>(op.space)];
      if (op.value) {
        map.insert_or_assign(op.key, *op.value);
      } else if (const auto it = map.find(op.key); it != map.end()) {
        map.erase(it);
      }
    }
    return {};
  }

  // Like a RocksDB iterator, `visit` sees the entries as they were when the scan began and
  // may itself write to the store: matching entries are copied under the lock, then visited
  // without it.
  Status scan(Space space, std::string_view prefix,
              const std::function<bool(std::string_view key, std::string_view value)>& visit) const override {
    const auto index = static_cast<std::size_t>(space);
    if (index >= kSpaceCount) return invalid_space(space);
    std::vector<std::pair<std::string, std::string>> snapshot;
    {
      const std::shared_lock lock(mutex_);
      const auto& map = spaces_[index];
      for (auto it = map.lower_bound(prefix); it != map.end() && it->first.starts_with(prefix); ++it) {
        snapshot.emplace_back(*it);
      }
    }
    for (const auto& [key, value] : snapshot) {
      if (!visit(key, value)) break;
    }
    return {};
  }

  Status scan_reverse(Space space, std::string_view prefix,
                      const std::function<bool(std::string_view key, std::string_view value)>& visit) const override {
    std::vector<std::pair<std::string, std::string>> forward;
    if (auto st = scan(space, prefix,
                       [&](std::string_view k, std::string_view v) {
                         forward.emplace_back(k, v);
                         return true;
                       });
        !st) {
      return st;
    }
    for (auto it = forward.rbegin(); it != forward.rend(); ++it) {
      if (!visit(it->first, it->second)) break;
    }
    return {};
  }

  std::uint64_t disk_bytes() const override { return 0; }

 private:
  static Error invalid_space(Space space) {
    return make_error(Errc::invalid_argument, "memory store: invalid space {}", static_cast<int>(space));
  }

  mutable std::shared_mutex mutex_;
  std::array<std::map<std::string, std::string, std::less<>>, kSpaceCount> spaces_;
};

}  // namespace

std::unique_ptr<Store> make_memory_store() { return std::make_unique<MemoryStore>(); }

}  // namespace flotilla::manager
