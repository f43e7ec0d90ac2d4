#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

struct Usage {
  std::uint64_t total = 0;
  std::uint64_t used = 0;
  std::uint64_t available = 0;
};

std::optional<Usage> filesystem_usage(const std::string& mount_point) {
  struct statvfs st {};
  if (::statvfs(mount_point.c_str(), &st) != 0) return std::nullopt;
  const std::uint64_t fragment = st.f_frsize != 0 ? st.f_frsize : st.f_bsize;
  const std::uint64_t blocks = st.f_blocks;
  const std::uint64_t free_blocks = std::min<std::uint64_t>(st.f_bfree, blocks);
  return Usage{blocks * fragment, (blocks - free_blocks) * fragment, std::uint64_t{st.f_bavail} * fragment};
}

// A file bind-mounted onto a file (a container's /etc/hosts, /etc/resolv.conf) is not a volume.
bool is_file_bind_mount(const std::string& mount_point) {
  struct stat st {};
  return ::stat(mount_point.c_str(), &st) == 0 && !S_ISDIR(st.st_mode);
}

// Mounted filesystems (see select_mounts for which) with their sizes, from the mounts file and
// statvfs(3). "/" is always reported when statvfs("/") works. Network filesystems are listed
// in the inventory with size 0 and left out of telemetry: a dead server would block statvfs.
class StorageCollector final : public Collector {
 public:
  explicit StorageCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "storage"; }

  Status collect_inventory(v1::Inventory& out) override {
    out.clear_mounts();
    auto mounts = read_mounts();
    if (!mounts) return std::move(mounts).error();
    for (const Mounted& m : *mounts) {
      v1::Mount& mount = *out.add_mounts();
      mount.set_mount_point(m.entry.mount_point);
      mount.set_device(m.entry.device);
      mount.set_fs_type(m.entry.fs_type);
      mount.set_total_bytes(m.usage ? m.usage->total : 0);
    }
    return {};
  }

  Status collect_telemetry(v1::Telemetry& out) override {
    out.clear_mounts();
    auto mounts = read_mounts();
    if (!mounts) return std::move(mounts).error();
    for (const Mounted& m : *mounts) {
      if (!m.usage) continue;
      v1::MountUsage& usage = *out.add_mounts();
      usage.set_mount_point(m.entry.mount_point);
      usage.set_total_bytes(m.usage->total);
      usage.set_used_bytes(m.usage->used);
      usage.set_available_bytes(m.usage->available);
    }
    return {};
  }

 private:
  struct Mounted {
    MountEntry entry;
    std::optional<Usage> usage;  // absent for network filesystems and when statvfs fails
  };

  Result<std::vector<Mounted>> read_mounts() const {
    auto text = detail::read_host_file(paths_.mounts, detail::kMaxMountsBytes);
    if (!text) return std::move(text).error();
    std::vector<MountEntry> all = parse_mounts(*text);

    std::vector<Mounted> mounted;
    bool has_root = false;
    for (MountEntry& entry : select_mounts(all)) {
      const bool network = is_network_filesystem(entry.fs_type);
      if (!network && is_file_bind_mount(entry.mount_point)) continue;
      std::optional<Usage> usage = network ? std::nullopt : filesystem_usage(entry.mount_point);
      has_root = has_root || entry.mount_point == "/";
      mounted.push_back(Mounted{std::move(entry), usage});
    }
    if (!has_root) {
      if (auto usage = filesystem_usage("/")) {
        // "/" was filtered out (a tmpfs or rootfs root) or is missing from the mounts file.
        const auto last_root = std::find_if(all.rbegin(), all.rend(),
                                            [](const MountEntry& e) { return e.mount_point == "/"; });
        MountEntry root = last_root != all.rend() ? *last_root : MountEntry{{}, "/", {}};
        mounted.insert(mounted.begin(), Mounted{std::move(root), usage});
      }
    }
    return mounted;
  }

  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_storage_collector(const HostPaths& paths) {
  return std::make_unique<StorageCollector>(paths);
}

}  // namespace flotilla::agent
