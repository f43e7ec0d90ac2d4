#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <unordered_map>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

constexpr bool is_blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string_view trim(std::string_view text) {
  while (!text.empty() && is_blank(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_blank(text.back())) text.remove_suffix(1);
  return text;
}

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return ascii_lower(x) == ascii_lower(y); });
}

// Calls fn(line) for every line, without "\n" or "\r\n"; a last line without "\n" counts too.
template <typename Fn>
void for_each_line(std::string_view text, Fn&& fn) {
  while (!text.empty()) {
    const std::size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
}

// Removes and returns the next blank-separated word of `rest` (empty when none is left).
std::string_view next_word(std::string_view& rest) {
  std::size_t begin = 0;
  while (begin < rest.size() && is_blank(rest[begin])) ++begin;
  std::size_t end = begin;
  while (end < rest.size() && !is_blank(rest[end])) ++end;
  const std::string_view word = rest.substr(begin, end - begin);
  rest.remove_prefix(end);
  return word;
}

template <typename T>
std::optional<T> parse_number(std::string_view text) {
  if (text.empty()) return std::nullopt;
  T value{};
  const char* last = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), last, value);
  if (ec != std::errc{} || ptr != last) return std::nullopt;
  return value;
}

std::optional<double> parse_non_negative(std::string_view text) {
  const auto value = parse_number<double>(text);
  if (!value || !std::isfinite(*value) || *value < 0) return std::nullopt;
  return value;
}

bool is_shell_name(std::string_view key) {
  if (key.empty() || (key.front() >= '0' && key.front() <= '9')) return false;
  return std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

// One shell word: quoted and unquoted parts, concatenated up to the first unquoted blank.
std::string unquote_shell_word(std::string_view in) {
  std::string out;
  std::size_t i = 0;
  while (i < in.size()) {
    const char c = in[i];
    if (c == ' ' || c == '\t') break;
    if (c == '\'') {
      const std::size_t close = in.find('\'', i + 1);
      const std::size_t end = close == std::string_view::npos ? in.size() : close;
      out.append(in.substr(i + 1, end - i - 1));
      i = end == in.size() ? end : end + 1;
    } else if (c == '"') {
      for (++i; i < in.size() && in[i] != '"'; ++i) {
        if (in[i] == '\\' && i + 1 < in.size() &&
            (in[i + 1] == '$' || in[i + 1] == '"' || in[i + 1] == '\\' || in[i + 1] == '`')) {
          ++i;
        }
        out += in[i];
      }
      if (i < in.size()) ++i;
    } else if (c == '\\') {
      if (i + 1 < in.size()) out += in[i + 1];
      i += 2;
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

bool is_octal(char c) { return c >= '0' && c <= '7'; }

// Undoes the kernel's escaping of blanks and backslashes in mount fields (\040, \011, \012, \134).
std::string decode_mount_field(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '\\' && i + 3 < in.size() && in[i + 1] >= '0' && in[i + 1] <= '3' && is_octal(in[i + 2]) &&
        is_octal(in[i + 3])) {
      out += static_cast<char>((in[i + 1] - '0') * 64 + (in[i + 2] - '0') * 8 + (in[i + 3] - '0'));
      i += 3;
    } else {
      out += in[i];
    }
  }
  return out;
}

constexpr std::array<std::string_view, 31> kUnreportedFilesystems = {
    "autofs",      "binfmt_misc",   "bpf",      "configfs",  "debugfs",         "devfs",
    "devpts",      "devtmpfs",      "efivarfs", "erofs",     "fuse.gvfsd-fuse", "fuse.lxcfs",
    "fuse.portal", "fuse.snapfuse", "fusectl",  "hugetlbfs", "mqueue",          "nfsd",
    "nsfs",        "proc",          "pstore",   "ramfs",     "rootfs",          "rpc_pipefs",
    "securityfs",  "selinuxfs",     "squashfs", "sysfs",     "tmpfs",           "tracefs",
    "usbfs",
};

constexpr std::array<std::string_view, 13> kNetworkFilesystems = {
    "afs",    "ceph",  "cifs", "fuse.glusterfs", "fuse.rclone", "fuse.s3fs", "fuse.sshfs", "glusterfs",
    "lustre", "ncpfs", "nfs",  "nfs4",           "smb3",
};

constexpr std::array<std::string_view, 4> kContainerRuntimeDirs = {"/var/lib/docker/", "/var/lib/containers/",
                                                                   "/run/containerd/", "/run/docker/"};

}  // namespace

std::map<std::string, std::string, std::less<>> parse_os_release(std::string_view text) {
  std::map<std::string, std::string, std::less<>> fields;
  for_each_line(text, [&](std::string_view line) {
    line = trim(line);
    if (line.empty() || line.front() == '#') return;
    const std::size_t eq = line.find('=');
    if (eq == std::string_view::npos) return;
    const std::string_view key = line.substr(0, eq);
    if (!is_shell_name(key)) return;
    fields.insert_or_assign(std::string(key), unquote_shell_word(line.substr(eq + 1)));
  });
  return fields;
}

std::map<std::string, std::uint64_t, std::less<>> parse_meminfo(std::string_view text) {
  std::map<std::string, std::uint64_t, std::less<>> fields;
  for_each_line(text, [&](std::string_view line) {
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;
    const std::string_view name = trim(line.substr(0, colon));
    std::string_view rest = line.substr(colon + 1);
    const auto value = parse_number<std::uint64_t>(next_word(rest));
    if (name.empty() || !value) return;
    fields.insert_or_assign(std::string(name), *value);
  });
  return fields;
}

std::vector<v1::SoftwarePackage> parse_dpkg_status(std::string_view text) {
  std::vector<v1::SoftwarePackage> packages;
  std::string_view package;
  std::string_view version;
  std::string_view architecture;
  std::string_view status;
  const auto end_stanza = [&] {
    std::string_view words = status;
    next_word(words);
    next_word(words);
    if (!package.empty() && next_word(words) == "installed") {
      v1::SoftwarePackage& p = packages.emplace_back();
      p.set_name(std::string(package));
      p.set_version(std::string(version));
      p.set_architecture(std::string(architecture));
    }
    package = version = architecture = status = {};
  };
  for_each_line(text, [&](std::string_view line) {
    if (trim(line).empty()) {
      end_stanza();
      return;
    }
    if (line.front() == ' ' || line.front() == '\t') return;
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;
    const std::string_view field = line.substr(0, colon);
    const std::string_view value = trim(line.substr(colon + 1));
    if (iequals(field, "Package")) {
      package = value;
    } else if (iequals(field, "Status")) {
      status = value;
    } else if (iequals(field, "Version")) {
      version = value;
    } else if (iequals(field, "Architecture")) {
      architecture = value;
    }
  });
  end_stanza();
  return packages;
}

Result<CpuTimes> parse_proc_stat_cpu(std::string_view text) {
  std::optional<std::string_view> cpu_line;
  for_each_line(text, [&](std::string_view line) {
    std::string_view rest = line;
    if (!cpu_line && next_word(rest) == "cpu") cpu_line = rest;
  });
  if (!cpu_line) return make_error(Errc::parse_error, "no aggregate \"cpu\" line");

  // user nice system idle iowait irq softirq steal guest guest_nice
  std::array<std::uint64_t, 8> counters{};
  std::size_t count = 0;
  std::string_view rest = *cpu_line;
  while (count < counters.size()) {
    const auto value = parse_number<std::uint64_t>(next_word(rest));
    if (!value) break;
    counters[count++] = *value;
  }
  if (count < 4) return make_error(Errc::parse_error, "\"cpu\" line has {} counters, expected at least 4", count);
  CpuTimes times;
  times.busy = counters[0] + counters[1] + counters[2] + counters[5] + counters[6] + counters[7];
  times.total = times.busy + counters[3] + counters[4];
  return times;
}

std::vector<MountEntry> parse_mounts(std::string_view text) {
  std::vector<MountEntry> mounts;
  for_each_line(text, [&](std::string_view line) {
    const std::string_view device = next_word(line);
    const std::string_view mount_point = next_word(line);
    const std::string_view fs_type = next_word(line);
    if (fs_type.empty()) return;
    mounts.push_back(MountEntry{decode_mount_field(device), decode_mount_field(mount_point), std::string(fs_type)});
  });
  return mounts;
}

bool is_reported_filesystem(std::string_view fs_type) {
  if (fs_type.empty() || fs_type.starts_with("cgroup")) return false;
  return std::find(kUnreportedFilesystems.begin(), kUnreportedFilesystems.end(), fs_type) ==
         kUnreportedFilesystems.end();
}

bool is_network_filesystem(std::string_view fs_type) {
  return std::find(kNetworkFilesystems.begin(), kNetworkFilesystems.end(), fs_type) != kNetworkFilesystems.end();
}

std::vector<MountEntry> select_mounts(std::vector<MountEntry> entries) {
  std::vector<MountEntry> selected;
  std::unordered_map<std::string, std::size_t> index_of;
  for (MountEntry& entry : entries) {
    const auto [it, inserted] = index_of.try_emplace(entry.mount_point, selected.size());
    if (inserted) {
      selected.push_back(std::move(entry));
    } else {
      selected[it->second] = std::move(entry);
    }
  }
  std::erase_if(selected, [](const MountEntry& entry) {
    if (!is_reported_filesystem(entry.fs_type)) return true;
    return std::any_of(kContainerRuntimeDirs.begin(), kContainerRuntimeDirs.end(),
                       [&](std::string_view dir) { return entry.mount_point.starts_with(dir); });
  });
  return selected;
}

CpuInfo parse_cpuinfo(std::string_view text) {
  CpuInfo info;
  std::string_view model_name;
  std::string_view processor;
  std::string_view hardware;
  for_each_line(text, [&](std::string_view line) {
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) return;
    const std::string_view key = trim(line.substr(0, colon));
    const std::string_view value = trim(line.substr(colon + 1));
    if (key == "processor") {
      if (parse_number<std::uint32_t>(value)) ++info.logical_cores;
    } else if (key == "model name") {
      if (model_name.empty()) model_name = value;
    } else if (key == "Processor") {
      if (processor.empty()) processor = value;
    } else if (key == "Hardware") {
      if (hardware.empty()) hardware = value;
    }
  });
  info.model = std::string(!model_name.empty() ? model_name : !processor.empty() ? processor : hardware);
  return info;
}

Result<LoadAverage> parse_loadavg(std::string_view text) {
  const auto load1 = parse_non_negative(next_word(text));
  const auto load5 = parse_non_negative(next_word(text));
  const auto load15 = parse_non_negative(next_word(text));
  if (!load1 || !load5 || !load15) return make_error(Errc::parse_error, "expected three load averages");
  return LoadAverage{*load1, *load5, *load15};
}

Result<double> parse_uptime(std::string_view text) {
  const auto uptime = parse_non_negative(next_word(text));
  if (!uptime) return make_error(Errc::parse_error, "expected the uptime in seconds");
  return *uptime;
}

namespace detail {

std::optional<std::int64_t> parse_decimal(std::string_view text) { return parse_number<std::int64_t>(text); }

}  // namespace detail

}  // namespace flotilla::agent
