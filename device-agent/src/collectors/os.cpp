#include <sys/utsname.h>
#include <unistd.h>

#include <array>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

constexpr const char* kFallbackOsRelease = "/usr/lib/os-release";

// os-release NAME, ID, VERSION_ID, PRETTY_NAME; the kernel release from uname(2); gethostname.
class OsCollector final : public Collector {
 public:
  explicit OsCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "os"; }

  Status collect_inventory(v1::Inventory& out) override {
    v1::OperatingSystem& os = *out.mutable_os();
    if (utsname uts{}; ::uname(&uts) == 0) os.set_kernel(uts.release);
    std::array<char, 256> host{};
    if (::gethostname(host.data(), host.size() - 1) == 0) os.set_hostname(host.data());

    auto text = read_os_release();
    if (!text) return std::move(text).error();
    const auto fields = parse_os_release(*text);
    // Defaults from os-release(5) for fields the file leaves out.
    const auto get = [&fields](std::string_view key, std::string_view fallback) {
      const auto it = fields.find(key);
      return std::string(it != fields.end() ? std::string_view(it->second) : fallback);
    };
    os.set_name(get("NAME", "Linux"));
    os.set_id(get("ID", "linux"));
    os.set_version(get("VERSION_ID", ""));
    os.set_pretty_name(get("PRETTY_NAME", "Linux"));
    return {};
  }

 private:
  Result<std::string> read_os_release() const {
    auto text = detail::read_host_file(paths_.os_release, detail::kMaxFileBytes);
    if (text || text.error().code != Errc::not_found || paths_.os_release != HostPaths{}.os_release) return text;
    return detail::read_host_file(kFallbackOsRelease, detail::kMaxFileBytes);
  }

  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_os_collector(const HostPaths& paths) {
  return std::make_unique<OsCollector>(paths);
}

}  // namespace flotilla::agent
