#pragma once
// Host collectors: read facts about the Linux machine the agent runs on (os-release, DMI, /proc,
// /sys, the dpkg database, getifaddrs, statvfs) into Inventory and Telemetry messages.
//
// The parse_* functions are pure and total: garbage or truncated text yields a partial result
// or an Error, never a crash. Every file is read whole with a size bound (detail::kMax*Bytes).

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/v1/device.pb.h"

namespace flotilla::agent {

// Where collectors read the host. Tests point these at fixture trees.
struct HostPaths {
  std::filesystem::path proc = "/proc";
  std::filesystem::path sys = "/sys";
  // Falls back to /usr/lib/os-release when missing, but only while it is this default: a path the
  // caller chose is authoritative, so fixtures never leak the real host.
  std::filesystem::path os_release = "/etc/os-release";
  std::filesystem::path dpkg_status = "/var/lib/dpkg/status";
  std::filesystem::path mounts = "/proc/self/mounts";
};

// One source of host facts. Owned and called by the agent's reactor thread only.
//
// A collector fills what it can and returns the first failure of a source it needs (io_error,
// not_found, permission_denied, too_large, parse_error; the message names the path). Repeated
// fields it owns are cleared first, so a message may be refilled.
class Collector {
 public:
  virtual ~Collector() = default;
  virtual std::string_view name() const = 0;
  // Fill this collector's part of the inventory; a missing optional source is not an error.
  virtual Status collect_inventory(v1::Inventory& out) {
    (void)out;
    return {};
  }
  virtual Status collect_telemetry(v1::Telemetry& out) {
    (void)out;
    return {};
  }
};

// The collectors of this host, in this order and with these names: os, hardware, cpu, memory,
// storage, network, packages, thermal, battery. The cpu collector takes its first /proc/stat
// reading here, so the first telemetry sample already covers the time since construction.
//
// Optional sources (absent is not an error): DMI (ARM boards, some VMs; the device tree model is
// used instead), product_serial (root-only), the dpkg database (non-Debian hosts), thermal zones
// and batteries. Blocking: storage calls statvfs on every local mount; network filesystems are
// never stat'ed because a dead server would hang the reactor thread.
[[nodiscard]] std::vector<std::unique_ptr<Collector>> make_host_collectors(const HostPaths& paths = {});

// os-release(5): shell-style KEY=value lines. Values may mix "double quotes" (backslash escapes
// $ " \ and `), 'single quotes' (literal) and unquoted text (backslash escapes any character),
// and end at the first unquoted blank. # comments, blank and malformed lines are skipped; an
// unterminated quote runs to the end of the line; a repeated key keeps its last value.
[[nodiscard]] std::map<std::string, std::string, std::less<>> parse_os_release(std::string_view text);

// /proc/meminfo: field name -> number as written, which is kB for every field with a "kB" unit
// (MemTotal, SwapFree...) and a plain count for the others (HugePages_Total). Lines without a
// valid unsigned number are skipped.
[[nodiscard]] std::map<std::string, std::uint64_t, std::less<>> parse_meminfo(std::string_view text);

// dpkg's status database: deb822 stanzas separated by blank lines, continuation lines start with
// a space or tab, field names are case-insensitive. Returns, in file order, the stanzas with a
// Package field whose Status has "installed" as its third word ("install ok installed", "hold ok
// installed"; not "deinstall ok config-files"). One pass, no allocation per line.
[[nodiscard]] std::vector<v1::SoftwarePackage> parse_dpkg_status(std::string_view text);

// Jiffies of all CPUs since boot. busy = user + nice + system + irq + softirq + steal; total =
// busy + idle + iowait. guest and guest_nice are already inside user and nice, so not added.
struct CpuTimes {
  std::uint64_t busy = 0;
  std::uint64_t total = 0;
};

// The aggregate "cpu " line of /proc/stat (at least the four counters of the oldest kernels).
// Errors: parse_error when that line is missing or has fewer than four counters.
[[nodiscard]] Result<CpuTimes> parse_proc_stat_cpu(std::string_view text);

struct MountEntry {
  std::string device;
  std::string mount_point;
  std::string fs_type;
  bool operator==(const MountEntry&) const = default;
};

// /proc/self/mounts (fstab format): the first three fields of every line that has them, with
// octal escapes such as \040 (space) decoded in device and mount point.
[[nodiscard]] std::vector<MountEntry> parse_mounts(std::string_view text);

// False for filesystems that hold no user data or whose usage means nothing: kernel pseudo
// filesystems (proc, sysfs, devtmpfs, devpts, tmpfs, ramfs, cgroup*, bpf, tracefs, debugfs,
// securityfs, pstore, mqueue, hugetlbfs, autofs, binfmt_misc, ...), read-only images that are
// always full (squashfs, erofs: snaps, live media) and FUSE helpers (lxcfs, gvfsd-fuse, portal,
// snapfuse). overlay is kept: a container's root runs on it.
[[nodiscard]] bool is_reported_filesystem(std::string_view fs_type);

// Network filesystems (nfs*, cifs, smb3, ceph, glusterfs, sshfs, ...): listed, never stat'ed.
[[nodiscard]] bool is_network_filesystem(std::string_view fs_type);

// The mounts worth reporting, in order of first appearance: a later mount on the same mount point
// replaces an earlier one (it shadows it), then unreported filesystems and container runtime
// internals (under /var/lib/docker/, /var/lib/containers/, /run/containerd/, /run/docker/) are
// dropped.
[[nodiscard]] std::vector<MountEntry> select_mounts(std::vector<MountEntry> entries);

struct CpuInfo {
  std::string model;                // empty when the kernel names none (most arm64 kernels)
  std::uint32_t logical_cores = 0;  // 0 when no "processor : N" line was found
};

// /proc/cpuinfo: model from the first "model name", else "Processor" (older ARM), else
// "Hardware" (the SoC); cores = number of "processor : N" lines.
[[nodiscard]] CpuInfo parse_cpuinfo(std::string_view text);

struct LoadAverage {
  double load1 = 0;
  double load5 = 0;
  double load15 = 0;
};

// /proc/loadavg. Errors: parse_error unless it starts with three finite non-negative numbers.
[[nodiscard]] Result<LoadAverage> parse_loadavg(std::string_view text);

// /proc/uptime, in seconds. Errors: parse_error unless it starts with a finite non-negative number.
[[nodiscard]] Result<double> parse_uptime(std::string_view text);

namespace detail {
// Shared by the sources in device-agent/src/collectors; not an interface for other components.

inline constexpr std::size_t kMaxFileBytes = 1 << 20;         // any /proc or /etc file
inline constexpr std::size_t kMaxDpkgStatusBytes = 16 << 20;  // ~20,000 packages
inline constexpr std::size_t kMaxCpuinfoBytes = 8 << 20;      // ~1.6 KiB per CPU on x86
inline constexpr std::size_t kMaxMountsBytes = 8 << 20;       // container hosts have thousands
inline constexpr std::size_t kMaxAttributeBytes = 4096;       // one sysfs value

// The whole regular file (procfs and sysfs files qualify), at most max_bytes. Never blocks on
// a FIFO. Errors: not_found, permission_denied, too_large, io_error.
[[nodiscard]] Result<std::string> read_host_file(const std::filesystem::path& path, std::size_t max_bytes);

// A one-value sysfs attribute with surrounding whitespace and NULs removed; empty if unreadable.
[[nodiscard]] std::string read_host_attribute(const std::filesystem::path& path);

// Entries of a directory, shorter names first so that thermal_zone2 precedes thermal_zone10;
// empty if the directory is missing or unreadable.
[[nodiscard]] std::vector<std::filesystem::path> list_host_directory(const std::filesystem::path& dir);

// A whole (already trimmed) decimal integer; nullopt on anything else.
[[nodiscard]] std::optional<std::int64_t> parse_decimal(std::string_view text);

[[nodiscard]] std::unique_ptr<Collector> make_os_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_hardware_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_cpu_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_memory_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_storage_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_network_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_packages_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_thermal_collector(const HostPaths& paths);
[[nodiscard]] std::unique_ptr<Collector> make_battery_collector(const HostPaths& paths);
}  // namespace detail

}  // namespace flotilla::agent
