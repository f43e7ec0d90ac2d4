#include <limits>
#include <optional>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

// Memory and swap sizes from /proc/meminfo, converted from kB to bytes.
class MemoryCollector final : public Collector {
 public:
  explicit MemoryCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "memory"; }

  Status collect_inventory(v1::Inventory& out) override {
    auto info = read_meminfo();
    if (!info) return std::move(info).error();
    out.set_memory_total_bytes(info->total);
    out.set_swap_total_bytes(info->swap_total);
    return {};
  }

  Status collect_telemetry(v1::Telemetry& out) override {
    auto info = read_meminfo();
    if (!info) return std::move(info).error();
    out.set_memory_total_bytes(info->total);
    out.set_memory_available_bytes(info->available);
    out.set_swap_total_bytes(info->swap_total);
    out.set_swap_free_bytes(info->swap_free);
    return {};
  }

 private:
  struct Memory {
    std::uint64_t total = 0;
    std::uint64_t available = 0;
    std::uint64_t swap_total = 0;
    std::uint64_t swap_free = 0;
  };

  Result<Memory> read_meminfo() const {
    const auto path = paths_.proc / "meminfo";
    auto text = detail::read_host_file(path, detail::kMaxFileBytes);
    if (!text) return std::move(text).error();
    const auto fields = parse_meminfo(*text);
    const auto bytes = [&fields](std::string_view name) -> std::optional<std::uint64_t> {
      const auto it = fields.find(name);
      if (it == fields.end() || it->second > std::numeric_limits<std::uint64_t>::max() / 1024) return std::nullopt;
      return it->second * 1024;
    };
    const auto total = bytes("MemTotal");
    if (!total) return make_error(Errc::parse_error, "{}: no valid MemTotal", path.string());
    Memory memory;
    memory.total = *total;
    // MemAvailable exists since Linux 3.14; before it, free + buffers + page cache approximates it.
    if (const auto available = bytes("MemAvailable")) {
      memory.available = *available;
    } else {
      memory.available = bytes("MemFree").value_or(0) + bytes("Buffers").value_or(0) + bytes("Cached").value_or(0);
    }
    memory.swap_total = bytes("SwapTotal").value_or(0);
    memory.swap_free = bytes("SwapFree").value_or(0);
    return memory;
  }

  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_memory_collector(const HostPaths& paths) {
  return std::make_unique<MemoryCollector>(paths);
}

}  // namespace flotilla::agent
