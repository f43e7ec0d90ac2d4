#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

// Installed Debian packages from dpkg's status database, read in one go. Entries still in
// /var/lib/dpkg/updates (an interrupted dpkg run) are not seen until dpkg merges them.
class PackagesCollector final : public Collector {
 public:
  explicit PackagesCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "packages"; }

  Status collect_inventory(v1::Inventory& out) override {
    out.clear_packages();
    auto text = detail::read_host_file(paths_.dpkg_status, detail::kMaxDpkgStatusBytes);
    if (!text) {
      if (text.error().code == Errc::not_found) return {};  // not a dpkg-based system
      return std::move(text).error();
    }
    std::vector<v1::SoftwarePackage> packages = parse_dpkg_status(*text);
    out.mutable_packages()->Reserve(static_cast<int>(packages.size()));
    for (v1::SoftwarePackage& package : packages) out.mutable_packages()->Add(std::move(package));
    return {};
  }

 private:
  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_packages_collector(const HostPaths& paths) {
  return std::make_unique<PackagesCollector>(paths);
}

}  // namespace flotilla::agent
