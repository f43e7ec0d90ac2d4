// flotilla-bench-index: the fleet index (FleetIndex) against SQLite holding the same generated
// fleet. Prints load rate and memory per device of both, then runs one query mix on both and
// prints p50/p99 latency side by side with the ratio and each answer.
//
// A benchmark, not a test: timings are printed, never asserted (the "targets" lines at the end
// are information). What it does check is correctness: both engines must give the same answer to
// every query; any difference is printed as MISMATCH and the exit status is 1 (2 on errors).
// Single-threaded throughout.

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sqlite3.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "flotilla/core/app.hpp"
#include "flotilla/manager/groups.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/index_load.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/device.pb.h"
#include "flotilla/v1/record.pb.h"

namespace {

using namespace flotilla;
using manager::DeviceFacts;
using manager::FleetIndex;
namespace query = manager::query;
using Clock = std::chrono::steady_clock;

// "Now" of the generated fleet and of every query: 2026-01-01T00:00:00Z.
constexpr std::int64_t kNowMs = 1767225600000;
constexpr std::int64_t kMinuteMs = 60'000;
constexpr std::int64_t kDayMs = 86'400'000;
// Devices generated, then loaded, per step: generation stays outside the timed part.
constexpr std::size_t kBatch = 1024;
// Devices per SQLite transaction (generated first, untimed, like kBatch).
constexpr std::size_t kSqlBatch = 16384;
constexpr int kWarmups = 3;
constexpr double kAbsent = std::numeric_limits<double>::quiet_NaN();

struct Options {
  std::size_t devices = 1'000'000;
  std::uint64_t seed = 1;
  std::size_t reps = 200;    // timed runs of a fast query
  std::size_t min_reps = 5;  // timed runs of a slow one
  double budget_s = 3;       // per query and engine: reps = budget / (time of one run), clamped
  std::size_t sqlite_cache_mib = 1024;
  std::string dir;
  bool keep = false;
  bool explain = false;
  bool index_only = false;    // stop after loading the index (for profiling the load)
  bool no_store = false;      // skip the RocksDB store and the start-up measurement
  bool startup_only = false;  // stop after the start-up measurement (for profiling it)
  // When SQLite's software(name, version, device_id) index is built: "after" the bulk load
  // (CREATE INDEX sorts all rows), or "during" it (created first; each transaction inserts its
  // rows in index order, so they land next to each other).
  std::string software_index = "during";
};

[[noreturn]] void fail(const std::string& what) {
  fmt::print(stderr, "flotilla-bench-index: {}\n", what);
  std::exit(2);
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::string read_text(const std::filesystem::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The first three fields of /proc/loadavg: other work on the machine skews every figure.
std::string load_average() {
  std::istringstream in(read_text("/proc/loadavg"));
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

// VmRSS of this process in bytes.
std::size_t rss_bytes() {
  std::istringstream in(read_text("/proc/self/status"));
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with("VmRSS:")) return std::strtoull(line.c_str() + 6, nullptr, 10) * 1024;
  }
  return 0;
}

// splitmix64: small, fast, and the same sequence on every platform (std distributions are not).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  std::uint32_t below(std::uint64_t n) { return static_cast<std::uint32_t>(uniform() * static_cast<double>(n)); }
  std::int64_t below_ms(std::int64_t n) { return static_cast<std::int64_t>(uniform() * static_cast<double>(n)); }

 private:
  std::uint64_t state_;
};

// Picks an index with probability proportional to its weight.
class Weighted {
 public:
  Weighted() = default;
  explicit Weighted(const std::vector<double>& weights) : cumulative_(weights.size()) {
    std::partial_sum(weights.begin(), weights.end(), cumulative_.begin());
  }
  std::size_t pick(Rng& r) const {
    const double u = r.uniform() * cumulative_.back();
    const auto it = std::upper_bound(cumulative_.begin(), cumulative_.end(), u);
    return std::min<std::size_t>(static_cast<std::size_t>(it - cumulative_.begin()), cumulative_.size() - 1);
  }

 private:
  std::vector<double> cumulative_;
};

std::vector<double> zipf(std::size_t n, double s) {
  std::vector<double> w(n);
  for (std::size_t k = 0; k < n; ++k) w[k] = 1.0 / std::pow(static_cast<double>(k + 1), s);
  return w;
}

// Rounds to `digits` decimals, the way agents report readings.
double round_to(double v, int digits) {
  const double f = std::pow(10.0, digits);
  return std::round(v * f) / f;
}

// Number text as facts.cpp writes it: integers without a fraction, else the shortest text that
// reads back to the same double (so the index and SQLite hold the same value).
std::string number_text(double v) {
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<std::int64_t>(v));
  return fmt::format("{}", v);
}

enum Kind : std::uint8_t { computer, printer, sensor };
constexpr std::array<std::string_view, 3> kKindName{"computer", "printer", "sensor"};

struct HardwareModel {
  Kind kind;
  std::string vendor, model, serial_prefix;
};

struct OsRelease {
  std::string name, id;
  std::vector<std::string> versions, kernels;
  double weight;
};

struct Package {
  std::string name;
  std::string field;  // "software.<name>"
  std::vector<std::string> versions;
  Weighted version_pick;
};

// Everything a device's values are drawn from; built once from the seed.
struct Catalog {
  std::vector<std::string> sites, tenants, firmware, tags, agent_versions, cpu_models;
  std::vector<std::uint32_t> tenant_of_site, gateways_of_site;
  Weighted site_pick, firmware_pick, tag_pick, agent_pick, cpu_model_pick, os_pick;
  std::vector<HardwareModel> models;
  std::array<std::vector<std::uint16_t>, 3> models_of_kind;
  std::array<Weighted, 3> model_pick;
  std::vector<OsRelease> os;
  std::vector<Package> packages;  // by popularity rank
  std::vector<double> package_weight;
  std::vector<double> package_scale;  // by target package count n - kMinPackages
  static constexpr std::uint32_t kMinPackages = 100, kMaxPackages = 400;
};

std::string synth_version(Rng& r) {
  std::string v;
  if (r.below(20) == 0) v += fmt::format("{}:", 1 + r.below(2));
  v += fmt::format("{}.{}", r.below(10), r.below(30));
  if (r.below(3) != 0) v += fmt::format(".{}", r.below(25));
  if (r.below(8) == 0) v += "+dfsg";
  switch (r.below(6)) {
    case 0: v += fmt::format("-{}", 1 + r.below(5)); break;
    case 1: v += fmt::format("-{}+deb12u{}", 1 + r.below(9), 1 + r.below(5)); break;
    case 2: v += fmt::format("-{}~deb12u{}", 1 + r.below(3), 1 + r.below(5)); break;
    case 3: v += fmt::format("-{}ubuntu{}.{}", r.below(3), 1 + r.below(5), r.below(20)); break;
    case 4: v += fmt::format("-{}build{}", 1 + r.below(3), 1 + r.below(3)); break;
    default: v += fmt::format("-{}+b{}", 1 + r.below(9), 1 + r.below(3)); break;
  }
  return v;
}

Catalog make_catalog(std::uint64_t seed, std::size_t fleet) {
  Catalog c;
  Rng r(seed ^ 0x5eed'ca7a'1095'0001ULL);

  // 50 sites, a few big ones (Zipf 0.9: site-01 ~14 %, site-07 ~2.5 %, site-50 ~0.4 %); each
  // belongs to one of 20 tenants.
  for (int s = 1; s <= 50; ++s) c.sites.push_back(fmt::format("site-{:02}", s));
  for (int t = 1; t <= 20; ++t) c.tenants.push_back(fmt::format("tenant-{:02}", t));
  const auto site_weights = zipf(c.sites.size(), 0.9);
  c.site_pick = Weighted(site_weights);
  const double site_total = std::accumulate(site_weights.begin(), site_weights.end(), 0.0);
  for (std::size_t s = 0; s < c.sites.size(); ++s) {
    c.tenant_of_site.push_back(static_cast<std::uint32_t>(s % c.tenants.size()));
    // Sensors report through gateways, about 150 per gateway.
    const double sensors = static_cast<double>(fleet) * 0.30 * site_weights[s] / site_total;
    c.gateways_of_site.push_back(std::max<std::uint32_t>(1, static_cast<std::uint32_t>(sensors / 150)));
  }

  // 32 firmware versions, Zipf 1.1 popularity in a fixed shuffled order (1.2.3 is the second most
  // common: the "firmware.version:1.2.3" query selects a realistic ~10 %).
  c.firmware = {"1.2.0", "1.2.1", "1.2.2", "1.2.3", "1.2.4", "1.2.5", "1.2.6", "1.2.7", "1.3.0", "1.3.1", "1.3.2",
                "1.3.4", "2.0.0", "2.0.1", "2.0.3", "2.0.5", "2.1.0", "2.1.1", "2.1.4", "2.2.0", "2.2.2", "3.0.0",
                "3.0.1", "3.1.0", "3.4.0", "3.4.1", "3.4.2", "3.4.3", "3.4.4", "3.4.5", "3.4.6", "3.4.7"};
  {
    const std::array<std::size_t, 32> rank{7, 9,  13, 1,  4,  11, 20, 25, 5, 8, 14, 22, 3,  12, 16, 27,
                                           6, 10, 18, 23, 29, 15, 19, 26, 0, 2, 17, 21, 24, 28, 30, 31};
    const auto w = zipf(c.firmware.size(), 1.1);
    std::vector<double> weights(c.firmware.size());
    for (std::size_t i = 0; i < weights.size(); ++i) weights[i] = w[rank[i]];
    c.firmware_pick = Weighted(weights);
  }

  c.tags = {"lab",      "server", "laptop",  "desktop",   "kiosk",
            "critical", "test",   "finance", "warehouse", "decommissioned"};
  c.tag_pick = Weighted(zipf(c.tags.size(), 0.7));
  c.agent_versions = {"0.9.0", "0.9.1", "1.0.0", "1.0.1", "1.1.0"};
  c.agent_pick = Weighted({0.05, 0.10, 0.20, 0.40, 0.25});
  c.cpu_models = {"Intel(R) Core(TM) i5-10500 CPU @ 3.10GHz",
                  "Intel(R) Core(TM) i7-1265U",
                  "Intel(R) Core(TM) i5-1345U",
                  "Intel(R) Xeon(R) Silver 4314 CPU @ 2.40GHz",
                  "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz",
                  "AMD Ryzen 5 PRO 5650G with Radeon Graphics",
                  "AMD Ryzen 7 PRO 6850U with Radeon Graphics",
                  "AMD EPYC 7313P 16-Core Processor",
                  "Intel(R) Core(TM) i3-10100T CPU @ 3.00GHz",
                  "Intel(R) Celeron(R) J4125 CPU @ 2.00GHz"};
  c.cpu_model_pick = Weighted(zipf(c.cpu_models.size(), 0.8));

  // 40 hardware models: 20 computers, 10 printers, 10 sensors.
  const std::vector<std::array<std::string_view, 3>> computers{{"Dell Inc.", "OptiPlex 7010", "DL"},
                                                               {"Dell Inc.", "OptiPlex 3080", "DL"},
                                                               {"Dell Inc.", "Latitude 5440", "DL"},
                                                               {"Dell Inc.", "Latitude 7420", "DL"},
                                                               {"Dell Inc.", "PowerEdge R650", "DL"},
                                                               {"Dell Inc.", "PowerEdge R740", "DL"},
                                                               {"HP", "EliteBook 840 G9", "HP"},
                                                               {"HP", "ProDesk 400 G7", "HP"},
                                                               {"HP", "EliteDesk 800 G6", "HP"},
                                                               {"HP", "ProLiant DL360 Gen10", "HP"},
                                                               {"LENOVO", "ThinkPad T14 Gen 3", "LN"},
                                                               {"LENOVO", "ThinkPad X1 Carbon Gen 10", "LN"},
                                                               {"LENOVO", "ThinkCentre M70q", "LN"},
                                                               {"LENOVO", "ThinkSystem SR630", "LN"},
                                                               {"Supermicro", "SYS-1029P-WTR", "SM"},
                                                               {"Microsoft Corporation", "Surface Laptop 5", "MS"},
                                                               {"ASUSTeK COMPUTER INC.", "ExpertCenter D7", "AS"},
                                                               {"Intel Corporation", "NUC11PAHi5", "IN"},
                                                               {"QEMU", "Standard PC (Q35 + ICH9, 2009)", "QM"},
                                                               {"VMware, Inc.", "VMware7,1", "VM"}};
  const std::vector<std::array<std::string_view, 3>> printers{
      {"HP", "LaserJet Pro M404dn", "PH"},       {"HP", "Color LaserJet M479fdw", "PH"},
      {"Brother", "HL-L2350DW", "BR"},           {"Brother", "MFC-L8900CDW", "BR"},
      {"Canon", "imageRUNNER C3226", "CA"},      {"Canon", "i-SENSYS MF445dw", "CA"},
      {"Xerox", "VersaLink C405", "XE"},         {"Kyocera", "ECOSYS M2540dn", "KY"},
      {"Epson", "WorkForce Pro WF-C5790", "EP"}, {"Lexmark", "MS521dn", "LX"}};
  const std::vector<std::array<std::string_view, 3>> sensors{
      {"Acme Sensing", "TH-100", "AC"}, {"Acme Sensing", "TH-200", "AC"}, {"Acme Sensing", "CO2-10", "AC"},
      {"SenseCo", "AQ-5", "SC"},        {"SenseCo", "AQ-7 Pro", "SC"},    {"Milesight", "EM300-TH", "MI"},
      {"Milesight", "AM307", "MI"},     {"Elsys", "ERS CO2", "EL"},       {"Elsys", "ERS Lite", "EL"},
      {"Dragino", "LHT65N", "DR"}};
  auto add_models = [&](Kind kind, const std::vector<std::array<std::string_view, 3>>& list) {
    for (const auto& [vendor, model, prefix] : list) {
      c.models_of_kind[kind].push_back(static_cast<std::uint16_t>(c.models.size()));
      c.models.push_back({kind, std::string(vendor), std::string(model), std::string(prefix)});
    }
    c.model_pick[kind] = Weighted(zipf(list.size(), 0.8));
  };
  add_models(computer, computers);
  add_models(printer, printers);
  add_models(sensor, sensors);

  c.os = {{"Debian GNU/Linux",
           "debian",
           {"12.5", "12.4", "12.2"},
           {"6.1.0-18-amd64", "6.1.0-17-amd64", "6.1.0-13-amd64"},
           0.30},
          {"Debian GNU/Linux", "debian", {"11.9", "11.7"}, {"5.10.0-28-amd64", "5.10.0-26-amd64"}, 0.08},
          {"Ubuntu", "ubuntu", {"22.04"}, {"5.15.0-97-generic", "5.15.0-94-generic", "6.5.0-21-generic"}, 0.18},
          {"Ubuntu", "ubuntu", {"24.04"}, {"6.8.0-31-generic", "6.8.0-35-generic"}, 0.08},
          {"Ubuntu", "ubuntu", {"20.04"}, {"5.4.0-172-generic"}, 0.04},
          {"Rocky Linux", "rocky", {"9.3"}, {"5.14.0-362.18.1.el9_3.x86_64"}, 0.05},
          {"Rocky Linux", "rocky", {"8.9"}, {"4.18.0-513.11.1.el8_9.x86_64"}, 0.02},
          {"Windows 11 Pro", "windows", {"10.0.22631"}, {"10.0.22631.3296", "10.0.22631.3447"}, 0.15},
          {"Windows 10 Pro", "windows", {"10.0.19045"}, {"10.0.19045.4170"}, 0.10}};
  {
    std::vector<double> w;
    for (const auto& o : c.os) w.push_back(o.weight);
    c.os_pick = Weighted(w);
  }

  // ~2,000 package names: real base-system names take the top popularity ranks, then synthetic
  // Debian-style names. Popularity is Zipf (s = 1) over the rank.
  const std::vector<std::pair<std::string_view, std::vector<std::string_view>>> core{
      {"libc6", {"2.36-9+deb12u4", "2.36-9+deb12u7", "2.35-0ubuntu3.6"}},
      {"base-files", {"12.4+deb12u5", "12ubuntu4.6"}},
      {"bash", {"5.2.15-2+b2", "5.1-6ubuntu1.1"}},
      {"coreutils", {"9.1-1", "8.32-4.1ubuntu1.2"}},
      {"openssl", {"3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "3.0.2-0ubuntu1.15", "1.1.1w-0+deb11u1"}},
      {"libssl3", {"3.0.11-1~deb12u2", "3.0.13-1~deb12u1", "3.0.2-0ubuntu1.15"}},
      {"systemd", {"252.22-1~deb12u1", "249.11-0ubuntu3.12"}},
      {"openssh-server", {"1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3", "1:8.9p1-3ubuntu0.6"}},
      {"openssh-client", {"1:9.2p1-2+deb12u2", "1:9.2p1-2+deb12u3", "1:8.9p1-3ubuntu0.6"}},
      {"curl", {"7.88.1-10+deb12u5", "7.81.0-1ubuntu1.15"}},
      {"libcurl4", {"7.88.1-10+deb12u5", "7.81.0-1ubuntu1.15"}},
      {"zlib1g", {"1:1.2.13.dfsg-1", "1:1.2.11.dfsg-2ubuntu9.2"}},
      {"tzdata", {"2024a-0+deb12u1", "2024a-0ubuntu0.22.04"}},
      {"ca-certificates", {"20230311", "20230311ubuntu0.22.04.1"}},
      {"apt", {"2.6.1", "2.4.12"}},
      {"dpkg", {"1.21.22", "1.21.1ubuntu2.3"}},
      {"python3", {"3.11.2-1+b1", "3.10.6-1~22.04"}},
      {"perl", {"5.36.0-7+deb12u1", "5.34.0-3ubuntu1.3"}},
      {"sudo", {"1.9.13p3-1+deb12u1", "1.9.9-1ubuntu2.4"}},
      {"util-linux", {"2.38.1-5+b1", "2.37.2-4ubuntu3.4"}}};
  // More base-system names (space-separated), then synthetic ones.
  constexpr std::string_view more_core =
      "gzip tar grep sed procps iproute2 libsystemd0 libudev1 e2fsprogs mount login passwd libpam0g "
      "libgcc-s1 libstdc++6 libzstd1 liblzma5 libbz2-1.0 libexpat1 libxml2 libsqlite3-0 libgnutls30 "
      "libkrb5-3 krb5-locales vim-tiny nano less wget rsync cron logrotate rsyslog dbus libglib2.0-0 "
      "libpython3.11 python3-apt git htop needrestart gnupg gpgv libgcrypt20 libnss3 libnspr4 chrony "
      "nftables iptables fail2ban docker-ce containerd.io nginx apache2 postgresql-15 mariadb-server "
      "redis-server openjdk-17-jre nodejs php8.2 snapd intel-microcode amd64-microcode linux-image-amd64 "
      "firmware-linux-free unattended-upgrades lsb-release ufw";
  std::set<std::string> names;
  auto add_package = [&](const std::string& name, std::vector<std::string> versions) {
    if (!names.insert(name).second) return;
    if (versions.empty()) {
      const std::size_t n = 1 + r.below(4);
      while (versions.size() < n) {
        std::string v = synth_version(r);
        if (std::find(versions.begin(), versions.end(), v) == versions.end()) versions.push_back(std::move(v));
      }
    }
    std::vector<double> w{0.60, 0.25, 0.10, 0.05};
    w.resize(versions.size());
    Package p{name, "software." + name, std::move(versions), Weighted(w)};
    c.packages.push_back(std::move(p));
  };
  for (const auto& [name, versions] : core) add_package(std::string(name), {versions.begin(), versions.end()});
  for (std::string_view rest = more_core; !rest.empty();) {
    const auto space = rest.find(' ');
    add_package(std::string(rest.substr(0, space)), {});
    rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
  }
  const std::array<std::string_view, 24> syllables{"ka",  "lo",  "mi", "tra", "zen", "vel", "pix", "qu",
                                                   "ro",  "sta", "ne", "dor", "fi",  "gel", "hu",  "mar",
                                                   "sol", "tek", "ur", "wy",  "bra", "cor", "dex", "ion"};
  const std::array<std::string_view, 11> prefixes{"lib",    "lib",   "lib",    "python3-", "node-", "golang-",
                                                  "fonts-", "ruby-", "libjs-", "gir1.2-",  ""};
  const std::array<std::string_view, 10> suffixes{"", "", "", "-dev", "-common", "-data", "-bin", "-utils", "6", "1"};
  while (c.packages.size() < 2000) {
    std::string name(prefixes[r.below(prefixes.size())]);
    const std::size_t n = 2 + r.below(2);
    for (std::size_t i = 0; i < n; ++i) name += syllables[r.below(syllables.size())];
    name += suffixes[r.below(suffixes.size())];
    add_package(name, {});
  }
  c.package_weight = zipf(c.packages.size(), 1.0);
  // Each package is installed independently with probability min(1, scale * weight); the scale
  // for each target count n makes the expected number of packages n.
  for (std::uint32_t n = Catalog::kMinPackages; n <= Catalog::kMaxPackages; ++n) {
    double lo = 0, hi = static_cast<double>(c.packages.size());
    for (int it = 0; it < 60; ++it) {
      const double mid = (lo + hi) / 2;
      double sum = 0;
      for (double w : c.package_weight) sum += std::min(1.0, mid * w);
      (sum < n ? lo : hi) = mid;
    }
    c.package_scale.push_back(hi);
  }
  return c;
}

// One generated device, typed; rendered as facts for the index and as rows for SQLite.
struct Device {
  std::string id, serial, gateway;
  Kind kind = computer;
  std::uint32_t site = 0, model = 0, firmware = 0, agent = 0, os = 0, os_version = 0, kernel = 0, cpu_model = 0;
  bool online = false;
  std::int64_t last_seen = 0, first_seen = 0, connected_since = -1;
  std::vector<std::uint8_t> tags;
  // Absent: -1 / NaN.
  std::int64_t cores = -1, memory_total = -1, memory_available = -1, disk_total = -1, disk_free = -1, uptime = -1;
  double cpu = kAbsent, load1 = kAbsent, memory_used_pct = kAbsent, disk_used_pct = kAbsent, cpu_temp = kAbsent,
         battery = kAbsent, humidity = kAbsent;
  std::vector<std::pair<std::uint16_t, std::uint8_t>> software;  // package, version index
};

// Device `index` of the fleet: a pure function of (seed, index).
void generate(const Catalog& c, std::uint64_t seed, std::uint32_t index, Device& d) {
  Rng r(seed * 0x9e3779b97f4a7c15ULL + index);
  r.next();
  d.id = fmt::format("dev-{:07}", index);
  const double k = r.uniform();
  d.kind = k < 0.55 ? computer : (k < 0.70 ? printer : sensor);
  d.site = static_cast<std::uint32_t>(c.site_pick.pick(r));
  d.model = c.models_of_kind[d.kind][c.model_pick[d.kind].pick(r)];
  d.serial = fmt::format("{}{:08X}", c.models[d.model].serial_prefix, r.next() & 0xffffffffULL);
  d.firmware = static_cast<std::uint32_t>(c.firmware_pick.pick(r));
  d.agent = static_cast<std::uint32_t>(c.agent_pick.pick(r));
  d.online = r.uniform() < 0.90;
  // Online devices report every few minutes; offline ones went quiet within the last hour.
  d.last_seen = kNowMs - (d.online ? r.below_ms(5 * kMinuteMs) : r.below_ms(60 * kMinuteMs));
  d.first_seen = kNowMs - kDayMs - r.below_ms(365 * kDayMs);
  d.connected_since = d.online ? std::max(d.first_seen, d.last_seen - r.below_ms(30 * kDayMs)) : -1;
  d.tags.clear();
  for (std::uint32_t n = r.below(4); d.tags.size() < n;) {
    const auto t = static_cast<std::uint8_t>(c.tag_pick.pick(r));
    if (std::find(d.tags.begin(), d.tags.end(), t) == d.tags.end()) d.tags.push_back(t);
  }
  d.gateway.clear();
  d.cores = d.memory_total = d.memory_available = d.disk_total = d.disk_free = d.uptime = -1;
  d.cpu = d.load1 = d.memory_used_pct = d.disk_used_pct = d.cpu_temp = d.battery = d.humidity = kAbsent;
  d.software.clear();
  d.uptime = r.below_ms(90 * 86'400);
  switch (d.kind) {
    case computer: {
      d.os = static_cast<std::uint32_t>(c.os_pick.pick(r));
      d.os_version = r.below(c.os[d.os].versions.size());
      d.kernel = r.below(c.os[d.os].kernels.size());
      d.cpu_model = static_cast<std::uint32_t>(c.cpu_model_pick.pick(r));
      d.cores = std::array<std::int64_t, 6>{4, 8, 8, 12, 16, 32}[r.below(6)];
      d.memory_total = std::array<std::int64_t, 5>{8, 16, 16, 32, 64}[r.below(5)] << 30;
      d.cpu = round_to(100.0 * std::pow(r.uniform(), 2.5), 1);
      d.load1 = round_to(static_cast<double>(d.cores) * d.cpu / 100.0 * (0.5 + r.uniform()), 2);
      d.memory_used_pct = round_to(20 + 75 * r.uniform(), 1);
      d.memory_available = static_cast<std::int64_t>(static_cast<double>(d.memory_total) * (100 - d.memory_used_pct) /
                                                     100);
      d.disk_total = std::array<std::int64_t, 5>{128, 256, 512, 1000, 2000}[r.below(5)] * 1'000'000'000;
      d.disk_free = static_cast<std::int64_t>(static_cast<double>(d.disk_total) * std::pow(r.uniform(), 1.3));
      d.disk_used_pct = round_to(
          100.0 * static_cast<double>(d.disk_total - d.disk_free) / static_cast<double>(d.disk_total), 1);
      d.cpu_temp = round_to(38 + 40 * (r.uniform() + r.uniform() + r.uniform()) / 3, 1);
      const std::uint32_t target = Catalog::kMinPackages + r.below(Catalog::kMaxPackages - Catalog::kMinPackages + 1);
      const double scale = c.package_scale[target - Catalog::kMinPackages];
      for (std::size_t p = 0; p < c.packages.size(); ++p) {
        if (r.uniform() < scale * c.package_weight[p]) {
          d.software.emplace_back(static_cast<std::uint16_t>(p),
                                  static_cast<std::uint8_t>(c.packages[p].version_pick.pick(r)));
        }
      }
      break;
    }
    case printer: break;
    case sensor:
      d.gateway = fmt::format("gw-{:02}-{:03}", d.site + 1, 1 + r.below(c.gateways_of_site[d.site]));
      d.battery = round_to(100.0 * (1 - std::pow(r.uniform(), 3)), 1);
      d.humidity = round_to(25 + 50 * r.uniform(), 1);
      break;
  }
}

// Fills `f` with the facts of `d`, reusing the strings already in it and, past its end, those
// left over by earlier devices in `spare` (keeps the allocator quiet while the index is measured).
using FactStrings = std::vector<std::pair<std::string, std::string>>;
class FactWriter {
 public:
  FactWriter(DeviceFacts& f, FactStrings& spare) : f_(f), spare_(spare) {}
  ~FactWriter() {
    for (std::size_t i = n_; i < f_.values.size(); ++i) spare_.push_back(std::move(f_.values[i]));
    f_.values.resize(n_);
  }
  FactWriter(const FactWriter&) = delete;
  FactWriter& operator=(const FactWriter&) = delete;
  void put(std::string_view field, std::string_view value) {
    if (n_ == f_.values.size()) {
      if (spare_.empty()) {
        f_.values.emplace_back();
      } else {
        f_.values.push_back(std::move(spare_.back()));
        spare_.pop_back();
      }
    }
    f_.values[n_].first.assign(field);
    f_.values[n_].second.assign(value);
    ++n_;
  }
  void number(std::string_view field, double v) {
    if (!std::isnan(v)) put(field, number_text(v));
  }
  void integer(std::string_view field, std::int64_t v) {
    if (v >= 0) put(field, fmt::format("{}", v));
  }

 private:
  DeviceFacts& f_;
  FactStrings& spare_;
  std::size_t n_ = 0;
};

void to_facts(const Catalog& c, const Device& d, DeviceFacts& f, FactStrings& spare) {
  f.id.assign(d.id);
  FactWriter w(f, spare);
  w.put("kind", kKindName[d.kind]);
  w.put("tenant", c.tenants[c.tenant_of_site[d.site]]);
  w.put("site", c.sites[d.site]);
  if (!d.gateway.empty()) w.put("gateway", d.gateway);
  w.put("agent.version", c.agent_versions[d.agent]);
  w.put("online", d.online ? "true" : "false");
  w.integer("last_seen", d.last_seen);
  w.integer("first_seen", d.first_seen);
  w.integer("connected_since", d.connected_since);
  for (auto t : d.tags) w.put("tag", c.tags[t]);
  const auto& m = c.models[d.model];
  w.put("hardware.vendor", m.vendor);
  w.put("hardware.model", m.model);
  w.put("hardware.serial", d.serial);
  w.put("firmware.version", c.firmware[d.firmware]);
  if (d.kind == computer) {
    const auto& os = c.os[d.os];
    w.put("os.name", os.name);
    w.put("os.id", os.id);
    w.put("os.version", os.versions[d.os_version]);
    w.put("os.kernel", os.kernels[d.kernel]);
    w.put("cpu.model", c.cpu_models[d.cpu_model]);
    w.integer("cpu.cores", d.cores);
    w.integer("memory.total", d.memory_total);
    w.integer("software.count", static_cast<std::int64_t>(d.software.size()));
    for (const auto& [p, v] : d.software) w.put(c.packages[p].field, c.packages[p].versions[v]);
  }
  w.number("telemetry.cpu", d.cpu);
  w.number("telemetry.load1", d.load1);
  w.number("telemetry.memory.used_pct", d.memory_used_pct);
  w.integer("telemetry.memory.available", d.memory_available);
  w.integer("telemetry.disk.free", d.disk_free);
  w.number("telemetry.disk.used_pct", d.disk_used_pct);
  w.integer("telemetry.uptime", d.uptime);
  w.number("telemetry.cpu.temp", d.cpu_temp);
  w.number("telemetry.battery", d.battery);
  w.number("telemetry.humidity_percent", d.humidity);
}

// The device as the manager stores it: what facts.cpp turns back into the facts of to_facts(),
// except two derived values facts.cpp computes from bytes (telemetry.memory.used_pct and
// telemetry.disk.used_pct, not rounded) and software.count, which every stored inventory has
// (0 on printers and sensors). No query of the mix reads those three.
void to_records(const Catalog& c, const Device& d, v1::DeviceRecord& r, v1::Inventory& inv, v1::Telemetry& t) {
  r.Clear();
  inv.Clear();
  t.Clear();
  r.set_device_id(d.id);
  r.set_kind(d.kind == computer ? v1::DEVICE_KIND_COMPUTER
                                : (d.kind == printer ? v1::DEVICE_KIND_PRINTER : v1::DEVICE_KIND_SENSOR));
  r.set_tenant(c.tenants[c.tenant_of_site[d.site]]);
  r.set_site(c.sites[d.site]);
  r.set_gateway_id(d.gateway);
  r.set_agent_version(c.agent_versions[d.agent]);
  r.set_online(d.online);
  r.set_last_seen_ms(d.last_seen);
  r.set_first_seen_ms(d.first_seen);
  if (d.connected_since >= 0) r.set_connected_since_ms(d.connected_since);
  for (auto tag : d.tags) r.add_tags(c.tags[tag]);
  const auto& m = c.models[d.model];
  auto* hw = inv.mutable_hardware();
  hw->set_vendor(m.vendor);
  hw->set_model(m.model);
  hw->set_serial(d.serial);
  hw->set_firmware_version(c.firmware[d.firmware]);
  if (d.kind == computer) {
    const auto& os = c.os[d.os];
    inv.mutable_os()->set_name(os.name);
    inv.mutable_os()->set_id(os.id);
    inv.mutable_os()->set_version(os.versions[d.os_version]);
    inv.mutable_os()->set_kernel(os.kernels[d.kernel]);
    inv.mutable_cpu()->set_model(c.cpu_models[d.cpu_model]);
    inv.mutable_cpu()->set_logical_cores(static_cast<std::uint32_t>(d.cores));
    inv.set_memory_total_bytes(static_cast<std::uint64_t>(d.memory_total));
    for (const auto& [p, v] : d.software) {
      auto* pkg = inv.add_packages();
      pkg->set_name(c.packages[p].name);
      pkg->set_version(c.packages[p].versions[v]);
      pkg->set_architecture("amd64");
    }
    t.set_cpu_percent(d.cpu);
    t.set_load1(d.load1);
    t.set_memory_total_bytes(static_cast<std::uint64_t>(d.memory_total));
    t.set_memory_available_bytes(static_cast<std::uint64_t>(d.memory_available));
    auto* root = t.add_mounts();
    root->set_mount_point("/");
    root->set_total_bytes(static_cast<std::uint64_t>(d.disk_total));
    root->set_available_bytes(static_cast<std::uint64_t>(d.disk_free));
    root->set_used_bytes(static_cast<std::uint64_t>(d.disk_total - d.disk_free));
    t.add_temperatures()->set_celsius(d.cpu_temp);
  }
  if (d.uptime > 0) t.set_uptime_s(static_cast<std::uint64_t>(d.uptime));
  if (!std::isnan(d.battery)) t.add_batteries()->set_percent(d.battery);
  if (!std::isnan(d.humidity)) (*t.mutable_metrics())["humidity_percent"] = d.humidity;
}

manager::Store& open_store_or_die(std::unique_ptr<manager::Store>& holder, const std::filesystem::path& dir) {
  auto store = manager::open_rocksdb_store(dir);
  if (!store) fail(fmt::format("store: {}", store.error().message));
  holder = std::move(store).value();
  return *holder;
}

// Writes the fleet into a new store (batches of kBatch devices, unsynced; closing syncs the WAL).
double write_store(const Catalog& c, const Options& o, const std::filesystem::path& dir, std::uint64_t& bytes) {
  std::unique_ptr<manager::Store> holder;
  manager::Store& store = open_store_or_die(holder, dir);
  const auto t0 = Clock::now();
  Device d;
  v1::DeviceRecord record;
  v1::Inventory inventory;
  v1::Telemetry telemetry;
  manager::Batch batch;
  for (std::size_t first = 0; first < o.devices; first += kBatch) {
    batch.clear();
    for (std::size_t j = first; j < std::min(o.devices, first + kBatch); ++j) {
      generate(c, o.seed, static_cast<std::uint32_t>(j), d);
      to_records(c, d, record, inventory, telemetry);
      batch.put(manager::Space::devices, d.id, record.SerializeAsString());
      batch.put(manager::Space::inventory, d.id, inventory.SerializeAsString());
      batch.put(manager::Space::telemetry, d.id, telemetry.SerializeAsString());
      bytes += batch.ops[batch.ops.size() - 3].value->size() + batch.ops[batch.ops.size() - 2].value->size() +
               batch.ops.back().value->size();
    }
    if (auto st = store.write(batch, false); !st) fail(fmt::format("store write: {}", st.error().message));
  }
  holder.reset();
  return seconds_since(t0);
}

// The manager's start-up (Manager::create): open the store, load the registry and the groups,
// build the index with load_index().
struct Startup {
  double open_s = 0, registry_s = 0, groups_s = 0, index_s = 0, total_s = 0;
  std::uint64_t disk_bytes = 0;
  std::optional<manager::LoadedIndex> loaded;
};

Startup start_up(const std::filesystem::path& dir, const std::filesystem::path* snapshot = nullptr) {
  Startup s;
  const auto t0 = Clock::now();
  std::unique_ptr<manager::Store> holder;
  manager::Store& store = open_store_or_die(holder, dir);
  s.open_s = seconds_since(t0);
  auto t = Clock::now();
  auto registry = manager::Registry::load(store);
  if (!registry) fail(fmt::format("registry: {}", registry.error().message));
  s.registry_s = seconds_since(t);
  t = Clock::now();
  auto groups = manager::Groups::load(store);
  if (!groups) fail(fmt::format("groups: {}", groups.error().message));
  s.groups_s = seconds_since(t);
  t = Clock::now();
  auto loaded = manager::load_index(store, *registry, *groups, snapshot);
  if (!loaded) fail(fmt::format("load_index: {}", loaded.error().message));
  s.index_s = seconds_since(t);
  s.total_s = seconds_since(t0);
  s.disk_bytes = store.disk_bytes();
  s.loaded = std::move(loaded).value();
  return s;
}

void print_startup(std::string_view what, const Startup& s, std::size_t devices) {
  const auto& l = *s.loaded;
  if (l.from_snapshot) {
    fmt::print(
        "  {}: {:.2f} s = open {:.2f} s + registry {:.2f} s + groups {:.2f} s + load_index {:.2f} s\n"
        "    (load_index: labels and snapshot read {:.2f} s; {} devices)\n",
        what, s.total_s, s.open_s, s.registry_s, s.groups_s, s.index_s, l.read_ms / 1e3, l.index.size());
    return;
  }
  fmt::print(
      "  {}: {:.2f} s = open {:.2f} s + registry {:.2f} s + groups {:.2f} s + load_index {:.2f} s\n"
      "    (load_index: reading and decoding {:.2f} s, facts and index {:.2f} s; {} devices, {} inventories,\n"
      "    {} telemetry samples, {} facts)\n",
      what, s.total_s, s.open_s, s.registry_s, s.groups_s, s.index_s, l.read_ms / 1e3, l.index_ms / 1e3, devices,
      l.inventories, l.telemetries, l.facts);
}

// The only SQLite door of the project: a benchmark baseline, so errors end the program.
class Db {
 public:
  explicit Db(const std::filesystem::path& file) {
    if (sqlite3_open(file.c_str(), &db_) != SQLITE_OK) fail(fmt::format("sqlite3_open {}: {}", file.string(), error()));
  }
  ~Db() { sqlite3_close_v2(db_); }
  Db(const Db&) = delete;
  Db& operator=(const Db&) = delete;
  sqlite3* get() const { return db_; }
  std::string error() const { return db_ != nullptr ? sqlite3_errmsg(db_) : "out of memory"; }
  void exec(const std::string& sql) {
    char* message = nullptr;
    if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
      std::string m = message != nullptr ? message : error();
      sqlite3_free(message);
      fail(fmt::format("sqlite: {}: {}", sql, m));
    }
  }

 private:
  sqlite3* db_ = nullptr;
};

class Stmt {
 public:
  Stmt(Db& db, std::string sql) : db_(db), sql_(std::move(sql)) {
    if (sqlite3_prepare_v3(db.get(), sql_.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK) {
      fail(fmt::format("sqlite prepare: {}: {}", sql_, db.error()));
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  // Text is bound without a copy: it must live until the statement is reset.
  void text(int i, std::string_view v) {
    check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC));
  }
  void integer(int i, std::int64_t v) { check(sqlite3_bind_int64(stmt_, i, v)); }
  void integer_or_null(int i, std::int64_t v) {
    check(v < 0 ? sqlite3_bind_null(stmt_, i) : sqlite3_bind_int64(stmt_, i, v));
  }
  void real_or_null(int i, double v) {
    check(std::isnan(v) ? sqlite3_bind_null(stmt_, i) : sqlite3_bind_double(stmt_, i, v));
  }
  void text_or_null(int i, std::string_view v) {
    if (v.empty()) check(sqlite3_bind_null(stmt_, i));
    else text(i, v);
  }
  // True while there is a row.
  bool step() {
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) fail(fmt::format("sqlite step: {}: {}", sql_, db_.error()));
    return false;
  }
  void reset() { sqlite3_reset(stmt_); }
  void run() {
    step();
    reset();
  }
  std::int64_t col_int(int i) const { return sqlite3_column_int64(stmt_, i); }
  double col_real(int i) const { return sqlite3_column_double(stmt_, i); }
  bool col_null(int i) const { return sqlite3_column_type(stmt_, i) == SQLITE_NULL; }
  std::string col_text(int i) const {
    const auto* p = sqlite3_column_text(stmt_, i);
    return p != nullptr
               ? std::string(reinterpret_cast<const char*>(p), static_cast<std::size_t>(sqlite3_column_bytes(stmt_, i)))
               : std::string();
  }
  const std::string& sql() const { return sql_; }

 private:
  void check(int rc) {
    if (rc != SQLITE_OK) fail(fmt::format("sqlite bind: {}: {}", sql_, db_.error()));
  }
  Db& db_;
  std::string sql_;
  sqlite3_stmt* stmt_ = nullptr;
};

// dpkg version order for SQL: `version < '3.0.11' COLLATE dpkg`, the same function the index uses.
int dpkg_collation(void*, int na, const void* a, int nb, const void* b) {
  return query::compare_versions(std::string_view(static_cast<const char*>(a), static_cast<std::size_t>(na)),
                                 std::string_view(static_cast<const char*>(b), static_cast<std::size_t>(nb)));
}

constexpr std::string_view kSchema = R"sql(
CREATE TABLE devices(
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, tenant TEXT, site TEXT, gateway TEXT, agent_version TEXT,
  online INTEGER NOT NULL, last_seen INTEGER, first_seen INTEGER, connected_since INTEGER,
  hw_vendor TEXT, hw_model TEXT, hw_serial TEXT, firmware_version TEXT,
  os_name TEXT, os_id TEXT, os_version TEXT, os_kernel TEXT, cpu_model TEXT, cpu_cores INTEGER,
  memory_total INTEGER, software_count INTEGER,
  cpu REAL, load1 REAL, memory_used_pct REAL, memory_available INTEGER, disk_free INTEGER,
  disk_used_pct REAL, uptime INTEGER, cpu_temp REAL, battery REAL, humidity REAL);
CREATE TABLE tags(device_id TEXT NOT NULL, tag TEXT NOT NULL);
CREATE TABLE software(device_id TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL);
)sql";

// Created after the bulk load (faster than maintaining them row by row), then ANALYZE.
const std::vector<std::string_view> kSqlIndexes{
    "CREATE INDEX devices_kind ON devices(kind)",
    "CREATE INDEX devices_site ON devices(site)",
    "CREATE INDEX devices_tenant ON devices(tenant)",
    "CREATE INDEX devices_firmware ON devices(firmware_version)",
    "CREATE INDEX devices_os_name ON devices(os_name)",
    "CREATE INDEX devices_os_version ON devices(os_version)",
    "CREATE INDEX devices_os_kernel ON devices(os_kernel)",
    "CREATE INDEX devices_hw_model ON devices(hw_model)",
    "CREATE INDEX devices_online ON devices(online)",
    "CREATE INDEX devices_last_seen ON devices(last_seen)",
    "CREATE INDEX devices_cpu ON devices(cpu)",
    "CREATE INDEX devices_disk_free ON devices(disk_free)",
    "CREATE INDEX devices_cpu_temp ON devices(cpu_temp)",
    "CREATE INDEX devices_battery ON devices(battery)",
    "CREATE INDEX devices_kind_site_firmware ON devices(kind, site, firmware_version)",
    "CREATE INDEX tags_tag ON tags(tag, device_id)",
    "CREATE INDEX software_name_version ON software(name, version, device_id)",
};

struct SqlLoad {
  double insert_s = 0, index_s = 0, analyze_s = 0, checkpoint_s = 0;
  double software_index_s = 0;  // of index_s
  std::uint64_t db_bytes = 0, software_rows = 0, tag_rows = 0;
};

// Inserts the whole fleet (one transaction per batch of devices; generation untimed), then builds
// the indexes and runs ANALYZE.
SqlLoad load_sqlite(Db& db, const Catalog& c, const Options& o) {
  SqlLoad out;
  db.exec(std::string(kSchema));
  Stmt dev(db,
           "INSERT INTO devices VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21,?22,"
           "?23,?24,?25,?26,?27,?28,?29,?30,?31,?32)");
  Stmt tag(db, "INSERT INTO tags VALUES(?1,?2)");
  Stmt sw(db, "INSERT INTO software VALUES(?1,?2,?3)");
  Stmt begin(db, "BEGIN"), commit(db, "COMMIT");
  const bool during = o.software_index == "during";
  const std::string_view software_index = kSqlIndexes.back();
  if (during) {
    const auto t = Clock::now();
    db.exec(std::string(software_index));
    out.index_s += seconds_since(t);
  }
  // Byte order of package names and of each package's versions (SQLite's BINARY collation).
  std::vector<std::uint32_t> name_rank(c.packages.size());
  std::vector<std::array<std::uint8_t, 4>> version_rank(c.packages.size());
  {
    std::vector<std::uint32_t> by_name(c.packages.size());
    std::iota(by_name.begin(), by_name.end(), 0u);
    std::sort(by_name.begin(), by_name.end(), [&](auto a, auto b) { return c.packages[a].name < c.packages[b].name; });
    for (std::uint32_t r = 0; r < by_name.size(); ++r) name_rank[by_name[r]] = r;
    for (std::size_t p = 0; p < c.packages.size(); ++p) {
      const auto& v = c.packages[p].versions;
      for (std::size_t i = 0; i < v.size(); ++i) {
        version_rank[p][i] = static_cast<std::uint8_t>(
            std::count_if(v.begin(), v.end(), [&](const auto& x) { return x < v[i]; }));
      }
    }
  }
  struct SoftwareRow {
    std::uint64_t key;  // name rank, version rank, device in batch
    std::uint16_t package;
    std::uint8_t version;
  };
  std::vector<SoftwareRow> software_rows;
  std::vector<Device> batch(kSqlBatch);
  for (std::size_t first = 0; first < o.devices; first += kSqlBatch) {
    const std::size_t n = std::min(kSqlBatch, o.devices - first);
    for (std::size_t j = 0; j < n; ++j) generate(c, o.seed, static_cast<std::uint32_t>(first + j), batch[j]);
    const auto t0 = Clock::now();
    begin.run();
    for (std::size_t j = 0; j < n; ++j) {
      const Device& d = batch[j];
      const bool pc = d.kind == computer;
      const auto& m = c.models[d.model];
      const OsRelease* os = pc ? &c.os[d.os] : nullptr;
      dev.text(1, d.id);
      dev.text(2, kKindName[d.kind]);
      dev.text(3, c.tenants[c.tenant_of_site[d.site]]);
      dev.text(4, c.sites[d.site]);
      dev.text_or_null(5, d.gateway);
      dev.text(6, c.agent_versions[d.agent]);
      dev.integer(7, d.online ? 1 : 0);
      dev.integer(8, d.last_seen);
      dev.integer(9, d.first_seen);
      dev.integer_or_null(10, d.connected_since);
      dev.text(11, m.vendor);
      dev.text(12, m.model);
      dev.text(13, d.serial);
      dev.text(14, c.firmware[d.firmware]);
      dev.text_or_null(15, pc ? std::string_view(os->name) : std::string_view());
      dev.text_or_null(16, pc ? std::string_view(os->id) : std::string_view());
      dev.text_or_null(17, pc ? std::string_view(os->versions[d.os_version]) : std::string_view());
      dev.text_or_null(18, pc ? std::string_view(os->kernels[d.kernel]) : std::string_view());
      dev.text_or_null(19, pc ? std::string_view(c.cpu_models[d.cpu_model]) : std::string_view());
      dev.integer_or_null(20, d.cores);
      dev.integer_or_null(21, d.memory_total);
      dev.integer_or_null(22, pc ? static_cast<std::int64_t>(d.software.size()) : -1);
      dev.real_or_null(23, d.cpu);
      dev.real_or_null(24, d.load1);
      dev.real_or_null(25, d.memory_used_pct);
      dev.integer_or_null(26, d.memory_available);
      dev.integer_or_null(27, d.disk_free);
      dev.real_or_null(28, d.disk_used_pct);
      dev.integer_or_null(29, d.uptime);
      dev.real_or_null(30, d.cpu_temp);
      dev.real_or_null(31, d.battery);
      dev.real_or_null(32, d.humidity);
      dev.run();
      for (auto t : d.tags) {
        tag.text(1, d.id);
        tag.text(2, c.tags[t]);
        tag.run();
      }
      out.tag_rows += d.tags.size();
      for (const auto& [p, v] : d.software) {
        if (during) {
          software_rows.push_back(
              {(std::uint64_t{name_rank[p]} << 40) | (std::uint64_t{version_rank[p][v]} << 32) | j, p, v});
          continue;
        }
        sw.text(1, d.id);
        sw.text(2, c.packages[p].name);
        sw.text(3, c.packages[p].versions[v]);
        sw.run();
      }
      out.software_rows += d.software.size();
    }
    if (during) {
      std::sort(software_rows.begin(), software_rows.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
      for (const auto& r : software_rows) {
        sw.text(1, batch[r.key & 0xffffffffULL].id);
        sw.text(2, c.packages[r.package].name);
        sw.text(3, c.packages[r.package].versions[r.version]);
        sw.run();
      }
      software_rows.clear();
    }
    commit.run();
    out.insert_s += seconds_since(t0);
  }
  auto t1 = Clock::now();
  for (auto sql : kSqlIndexes) {
    if (during && sql == software_index) continue;
    const auto t2 = Clock::now();
    db.exec(std::string(sql));
    if (sql.find("software") != std::string_view::npos) out.software_index_s = seconds_since(t2);
  }
  out.index_s = seconds_since(t1);
  t1 = Clock::now();
  db.exec("ANALYZE");
  out.analyze_s = seconds_since(t1);
  t1 = Clock::now();
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)");
  out.checkpoint_s = seconds_since(t1);
  Stmt pages(db, "PRAGMA page_count"), page_size(db, "PRAGMA page_size");
  pages.step();
  page_size.step();
  out.db_bytes = static_cast<std::uint64_t>(pages.col_int(0) * page_size.col_int(0));
  return out;
}

// One answer of one engine. `exact` must be byte-equal between the engines; `approx` (averages,
// summed in a different order) equal within a relative 1e-9.
struct Answer {
  std::string exact;
  std::vector<double> approx;
  std::string summary;  // short, for the table
};

bool same(const Answer& a, const Answer& b) {
  if (a.exact != b.exact || a.approx.size() != b.approx.size()) return false;
  for (std::size_t i = 0; i < a.approx.size(); ++i) {
    const double scale = std::max({1.0, std::fabs(a.approx[i]), std::fabs(b.approx[i])});
    if (std::fabs(a.approx[i] - b.approx[i]) > 1e-9 * scale) return false;
  }
  return true;
}

Answer count_answer(std::uint64_t n) { return {fmt::format("{}", n), {}, fmt::format("{}", n)}; }

Answer groups_answer(std::vector<std::pair<std::string, std::uint64_t>> groups) {
  std::sort(groups.begin(), groups.end());
  Answer a;
  for (const auto& [v, n] : groups) a.exact += fmt::format("{}={};", v, n);
  auto top = std::max_element(groups.begin(), groups.end(),
                              [](const auto& x, const auto& y) { return x.second < y.second; });
  a.summary = groups.empty() ? "0 groups" : fmt::format("{} groups, top {}={}", groups.size(), top->first, top->second);
  return a;
}

struct Top {
  std::string id;
  std::int64_t disk_free;
};
Answer top_answer(const std::vector<Top>& rows) {
  Answer a;
  for (const auto& r : rows) a.exact += fmt::format("{}={};", r.id, r.disk_free);
  a.summary = rows.empty()
                  ? "0 rows"
                  : fmt::format("{} rows, {}..{} B", rows.size(), rows.front().disk_free, rows.back().disk_free);
  return a;
}

struct StatsView {
  std::uint64_t count = 0;
  double min = 0, max = 0, avg = 0;
  std::optional<double> p50, p90, p99;
  std::optional<std::uint64_t> distinct;
};
Answer stats_answer(const StatsView& s) {
  Answer a;
  a.exact = fmt::format("n={} min={} max={}", s.count, s.min, s.max);
  if (s.p50) a.exact += fmt::format(" p50={} p90={} p99={} distinct={}", *s.p50, *s.p90, *s.p99, *s.distinct);
  a.approx = {s.avg};
  a.summary = fmt::format("n={} min={} max={} avg={:.3f}", s.count, s.min, s.max, s.avg);
  if (s.p50) a.summary += fmt::format(" p50={} p99={}", *s.p50, *s.p99);
  return a;
}

struct Case {
  std::string label;         // the Flotilla request
  bool aggregation = false;  // count / group-by / stats (the "10x" target); else rows
  bool group_by = false;     // the "group-by <= 50 ms" target
  std::string sql_note;      // how the SQL side answers, when it needs saying
  std::function<Answer(const FleetIndex&)> flotilla;
  std::function<Answer()> sqlite;
  std::vector<std::shared_ptr<Stmt>> statements;  // for --explain
};

struct Timing {
  std::size_t reps = 0;
  double p50_ms = 0, p99_ms = 0;
};

double nearest_rank(const std::vector<double>& sorted, double q) {
  const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, i == 0 ? 0 : i - 1)];
}

// kWarmups untimed runs (the first answer is kept), then reps = budget / (last warm-up),
// clamped to [min_reps, reps], timed one by one.
Timing measure(const std::function<Answer()>& f, Answer& answer, const Options& o) {
  answer = f();
  double last = 0;
  for (int i = 1; i < kWarmups; ++i) {
    const auto t0 = Clock::now();
    (void)f();
    last = seconds_since(t0);
  }
  Timing t;
  t.reps = std::clamp<std::size_t>(static_cast<std::size_t>(o.budget_s / std::max(last, 1e-9)), o.min_reps, o.reps);
  std::vector<double> ms;
  ms.reserve(t.reps);
  for (std::size_t i = 0; i < t.reps; ++i) {
    const auto t0 = Clock::now();
    const Answer a = f();
    ms.push_back(1e3 * seconds_since(t0));
    if (a.exact.empty()) fail("empty answer");  // keeps the call observable
  }
  std::sort(ms.begin(), ms.end());
  t.p50_ms = nearest_rank(ms, 0.50);
  t.p99_ms = nearest_rank(ms, 0.99);
  return t;
}

query::Node parse_or_die(std::string_view text) {
  auto n = query::parse(text);
  if (!n) fail(fmt::format("query '{}': {}", text, n.error().message));
  return std::move(*n);
}

std::vector<Case> make_cases(Db& db) {
  std::vector<Case> cases;
  auto stmt = [&](std::string sql) { return std::make_shared<Stmt>(db, std::move(sql)); };
  auto sql_count = [](std::shared_ptr<Stmt> s) {
    return [s] {
      s->step();
      const auto n = static_cast<std::uint64_t>(s->col_int(0));
      s->reset();
      return count_answer(n);
    };
  };
  auto add_count = [&](const std::string& text, std::string sql, std::string note = {}) {
    auto node = std::make_shared<query::Node>(parse_or_die(text));
    auto s = stmt(std::move(sql));
    cases.push_back({"count " + text,
                     true,
                     false,
                     std::move(note),
                     [node](const FleetIndex& index) { return count_answer(index.count(*node, kNowMs)); },
                     sql_count(s),
                     {s}});
  };
  add_count("firmware.version:1.2.3", "SELECT COUNT(*) FROM devices WHERE firmware_version = '1.2.3'",
            "version equality as text equality: each generated version has one spelling");
  add_count("kind:sensor", "SELECT COUNT(*) FROM devices WHERE kind = 'sensor'");
  add_count("firmware.version:1.2.*", "SELECT COUNT(*) FROM devices WHERE firmware_version GLOB '1.2.*'");
  add_count(
      "kind:sensor AND site:site-07 AND firmware.version:1.2.*",
      "SELECT COUNT(*) FROM devices WHERE kind = 'sensor' AND site = 'site-07' AND firmware_version GLOB '1.2.*'");
  add_count("telemetry.cpu.temp>70", "SELECT COUNT(*) FROM devices WHERE cpu_temp > 70");
  add_count("last_seen<-30m", fmt::format("SELECT COUNT(*) FROM devices WHERE last_seen < {}", kNowMs - 30 * kMinuteMs),
            "relative time resolved to a constant");
  add_count("NOT online:true", "SELECT COUNT(*) FROM devices WHERE online = 0", "online is NOT NULL: NOT true = false");
  add_count("software.openssl<3.0.11 AND online:true",
            "SELECT COUNT(*) FROM devices WHERE online = 1 AND id IN (SELECT device_id FROM software WHERE name = "
            "'openssl' AND version < '3.0.11' COLLATE dpkg)",
            "dpkg order through a custom collation calling query::compare_versions");

  auto add_group = [&](std::string field, const std::string& where, std::string sql) {
    auto node = std::make_shared<query::Node>(where.empty() ? query::Node{} : parse_or_die(where));
    auto s = stmt(std::move(sql));
    auto label = fmt::format("count_by {}{}", field, where.empty() ? " (whole fleet)" : " where " + where);
    cases.push_back({label,
                     true,
                     true,
                     {},
                     [node, field](const FleetIndex& index) {
                       auto r = index.count_by(field, *node, kNowMs);
                       if (!r) fail(fmt::format("count_by {}: {}", field, r.error().message));
                       return groups_answer(std::move(*r));
                     },
                     [s] {
                       std::vector<std::pair<std::string, std::uint64_t>> g;
                       while (s->step()) g.emplace_back(s->col_text(0), static_cast<std::uint64_t>(s->col_int(1)));
                       s->reset();
                       return groups_answer(std::move(g));
                     },
                     {s}});
  };
  add_group("firmware.version", "", "SELECT firmware_version, COUNT(*) FROM devices GROUP BY firmware_version");
  add_group("kind", "site:site-07", "SELECT kind, COUNT(*) FROM devices WHERE site = 'site-07' GROUP BY kind");

  {
    auto node = std::make_shared<query::Node>(parse_or_die("kind:computer"));
    auto s = stmt(
        "SELECT id, kind, online, os_name, os_version, firmware_version, last_seen, disk_free FROM devices "
        "WHERE kind = 'computer' ORDER BY disk_free, id LIMIT 20");
    cases.push_back(
        {"top 20 kind:computer by telemetry.disk.free asc",
         false,
         false,
         "same projection: the default summary fields + disk free",
         [node](const FleetIndex& index) {
           manager::QueryOptions opt;
           opt.sort = manager::SortKey{"telemetry.disk.free", false};
           opt.limit = 20;
           opt.fields = {
               "kind", "online", "os.name", "os.version", "firmware.version", "last_seen", "telemetry.disk.free"};
           auto page = index.query(*node, opt, kNowMs);
           if (!page) fail(fmt::format("query: {}", page.error().message));
           std::vector<Top> rows;
           for (const auto& r : page->rows) rows.push_back({r.id, std::stoll(r.values.back().second)});
           return top_answer(rows);
         },
         [s] {
           std::vector<Top> rows;
           while (s->step()) rows.push_back({s->col_text(0), s->col_int(7)});
           s->reset();
           return top_answer(rows);
         },
         {s}});
  }

  {
    auto node = std::make_shared<query::Node>(parse_or_die("kind:computer"));
    auto flotilla_stats = [node](const FleetIndex& index, bool percentiles) {
      auto st = index.stats("telemetry.cpu", *node, kNowMs);
      if (!st) fail(fmt::format("stats: {}", st.error().message));
      StatsView v{st->count, st->min, st->max, st->avg, {}, {}, {}, {}};
      if (percentiles) {
        v.p50 = st->p50;
        v.p90 = st->p90;
        v.p99 = st->p99;
        v.distinct = st->distinct;
      }
      return stats_answer(v);
    };
    auto agg = stmt("SELECT COUNT(cpu), MIN(cpu), MAX(cpu), AVG(cpu) FROM devices WHERE kind = 'computer'");
    auto sql_agg = [agg] {
      agg->step();
      StatsView v{static_cast<std::uint64_t>(agg->col_int(0)),
                  agg->col_real(1),
                  agg->col_real(2),
                  agg->col_real(3),
                  {},
                  {},
                  {},
                  {}};
      agg->reset();
      return v;
    };
    cases.push_back({"stats telemetry.cpu where kind:computer (SQL: min/max/avg only)",
                     true,
                     false,
                     "Flotilla computes percentiles and distinct as well (stats() always does)",
                     [flotilla_stats](const FleetIndex& index) { return flotilla_stats(index, false); },
                     [sql_agg] { return stats_answer(sql_agg()); },
                     {agg}});
    auto distinct = stmt("SELECT COUNT(DISTINCT cpu) FROM devices WHERE kind = 'computer'");
    auto nth = stmt(
        "SELECT cpu FROM devices WHERE kind = 'computer' AND cpu IS NOT NULL ORDER BY cpu LIMIT 1 OFFSET ?1");
    cases.push_back({"stats telemetry.cpu where kind:computer (SQL: + distinct, p50/p90/p99)",
                     true,
                     false,
                     "percentiles by ORDER BY cpu LIMIT 1 OFFSET k, one statement each",
                     [flotilla_stats](const FleetIndex& index) { return flotilla_stats(index, true); },
                     [sql_agg, distinct, nth] {
                       StatsView v = sql_agg();
                       distinct->step();
                       v.distinct = static_cast<std::uint64_t>(distinct->col_int(0));
                       distinct->reset();
                       auto at = [&](double q) {
                         const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.count)));
                         nth->integer(
                             1, static_cast<std::int64_t>(std::min<std::size_t>(v.count - 1, i == 0 ? 0 : i - 1)));
                         nth->step();
                         const double x = nth->col_real(0);
                         nth->reset();
                         return x;
                       };
                       v.p50 = at(0.50);
                       v.p90 = at(0.90);
                       v.p99 = at(0.99);
                       return stats_answer(v);
                     },
                     {agg, distinct, nth}});
  }
  return cases;
}

// SQLite time over Flotilla time: "0.04x" (SQLite faster), "7.8x", "35x".
std::string ratio_text(double sqlite_ms, double flotilla_ms) {
  const double r = sqlite_ms / flotilla_ms;
  if (r < 1) return fmt::format("{:.2f}x", r);
  return r < 10 ? fmt::format("{:.1f}x", r) : fmt::format("{:.0f}x", r);
}

std::string per_device(double bytes, std::size_t devices) {
  return fmt::format("{:.0f} B", bytes / static_cast<double>(devices));
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App cli{"Flotilla fleet index benchmark: FleetIndex vs SQLite on the same generated fleet."};
  cli.add_option("--devices", o.devices, "Devices in the generated fleet")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1000}, std::size_t{10'000'000}));
  cli.add_option("--seed", o.seed, "Seed of the generated fleet")->capture_default_str();
  cli.add_option("--reps", o.reps, "Timed runs of a fast query per engine (after 3 warm-ups)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}));
  cli.add_option("--min-reps", o.min_reps, "Timed runs of a slow query (fewer than --reps when one run is slow)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}));
  cli.add_option("--budget", o.budget_s, "Seconds per query and engine that set the number of runs")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 3600.0));
  cli.add_option("--sqlite-cache-mib", o.sqlite_cache_mib, "SQLite page cache (PRAGMA cache_size) in MiB")
      ->capture_default_str();
  cli.add_option("--dir", o.dir, "Parent of the temporary SQLite directory (default: the temp dir)");
  cli.add_flag("--keep", o.keep, "Keep the SQLite database");
  cli.add_flag("--explain", o.explain, "Print the index plan and SQLite's query plan of every query");
  cli.add_option("--sqlite-software-index", o.software_index,
                 "Build SQLite's software index 'after' the bulk load or 'during' it (rows inserted in index order)")
      ->capture_default_str()
      ->check(CLI::IsMember({"after", "during"}));
  cli.add_flag("--index-only", o.index_only, "Stop after loading the index (to profile the load alone)");
  cli.add_flag("--no-store", o.no_store, "Skip the RocksDB store and the start-up measurement");
  cli.add_flag("--startup-only", o.startup_only, "Stop after the start-up measurement (to profile it)");
  if (auto code = flotilla::app::parse(cli, argc, argv)) return *code;
  o.min_reps = std::min(o.min_reps, o.reps);

  fmt::print("flotilla-bench-index: FleetIndex vs SQLite {}, {} devices, seed {}, single thread\n",
             sqlite3_libversion(), o.devices, o.seed);
  fmt::print("load average at start: {} (other work on the machine skews every figure)\n\n", load_average());
  std::fflush(stdout);

  const auto cat0 = Clock::now();
  const Catalog catalog = make_catalog(o.seed, o.devices);
  fmt::print("catalog: {} sites, {} tenants, {} firmware versions, {} hardware models, {} packages ({:.1f} s)\n",
             catalog.sites.size(), catalog.tenants.size(), catalog.firmware.size(), catalog.models.size(),
             catalog.packages.size(), seconds_since(cat0));

  // 1. The index.
  const std::size_t rss0 = rss_bytes();
  FleetIndex index;
  double index_s = 0, gen_s = 0;
  std::uint64_t facts_total = 0, software_facts = 0;
  {
    std::vector<Device> devices(kBatch);
    std::vector<DeviceFacts> facts(kBatch);
    FactStrings spare;
    for (std::size_t first = 0; first < o.devices; first += kBatch) {
      const std::size_t n = std::min(kBatch, o.devices - first);
      const auto g0 = Clock::now();
      for (std::size_t j = 0; j < n; ++j) {
        generate(catalog, o.seed, static_cast<std::uint32_t>(first + j), devices[j]);
        to_facts(catalog, devices[j], facts[j], spare);
        facts_total += facts[j].values.size();
        software_facts += devices[j].software.size();
      }
      gen_s += seconds_since(g0);
      const auto t0 = Clock::now();
      for (std::size_t j = 0; j < n; ++j) index.upsert(facts[j]);
      index_s += seconds_since(t0);
    }
  }
  const auto finish0 = Clock::now();
  index.finish_load();
  const double finish_s = seconds_since(finish0);
  index_s += finish_s;
  const std::size_t rss1 = rss_bytes();
  const auto [mem_software, mem_other] = index.memory_bytes();
  const double dev = static_cast<double>(o.devices);
  fmt::print("generated {} devices, {} facts ({:.0f} per device; {} software.<package> facts) in {:.1f} s (untimed)\n",
             o.devices, facts_total, static_cast<double>(facts_total) / dev, software_facts, gen_s);
  fmt::print("\nFleetIndex load (upsert of every device, then finish_load(), single thread)\n");
  fmt::print("  time {:.2f} s = {:.0f} devices/s ({:.2f} us/device, {:.0f} ns/fact; finish_load {:.2f} s of it)\n",
             index_s, dev / index_s, 1e6 * index_s / dev, 1e9 * index_s / static_cast<double>(facts_total), finish_s);
  fmt::print("  memory_bytes(): software {} /device, other {} /device (total {:.0f} MiB)\n",
             per_device(static_cast<double>(mem_software), o.devices),
             per_device(static_cast<double>(mem_other), o.devices),
             static_cast<double>(mem_software + mem_other) / 1048576.0);
  fmt::print("  process RSS delta (VmRSS after - before loading): {} /device ({:.0f} MiB)\n",
             per_device(static_cast<double>(rss1 - rss0), o.devices), static_cast<double>(rss1 - rss0) / 1048576.0);
  std::fflush(stdout);

  if (o.index_only) return 0;

  const std::filesystem::path parent = o.dir.empty() ? std::filesystem::temp_directory_path()
                                                     : std::filesystem::path(o.dir);
  std::string pattern = (parent / "flotilla-bench-index-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) fail(fmt::format("mkdtemp {}: cannot create", pattern));
  const std::filesystem::path root = pattern;
  int status = 0;

  // 2. The manager's start-up from a RocksDB store holding the same fleet.
  std::optional<Startup> startup;
  double rebuild_s = 0;  // the slower of the two rebuilding start-ups
  if (!o.no_store) {
    fmt::print(
        "\nStart-up: the fleet in a RocksDB store ({}), then what Manager::create does: open, Registry::load,\n"
        "Groups::load, load_index (the function Manager::build_index calls)\n",
        (root / "store").string());
    std::fflush(stdout);
    std::uint64_t record_bytes = 0;
    const double write_s = write_store(catalog, o, root / "store", record_bytes);
    fmt::print(
        "  store written in {:.1f} s (untimed below): {} of records per device (DeviceRecord + Inventory +\n"
        "  Telemetry, protobuf)\n",
        write_s, per_device(static_cast<double>(record_bytes), o.devices));
    std::fflush(stdout);
    // The first start-up replays the WAL of the write and competes with its compactions; the
    // second opens a settled store. The page cache is warm for both (the data was just written).
    Startup first = start_up(root / "store");
    print_startup("first start-up after the write", first, o.devices);
    first.loaded.reset();
    std::fflush(stdout);
    startup = start_up(root / "store");
    print_startup("second start-up", *startup, o.devices);
    fmt::print("  store size {} /device ({:.0f} MiB, SST + WAL)\n",
               per_device(static_cast<double>(startup->disk_bytes), o.devices),
               static_cast<double>(startup->disk_bytes) / 1048576.0);
    rebuild_s = std::max(startup->total_s, first.total_s);
    std::fflush(stdout);
    // A clean stop saves the index; the next start-up reads it instead of rebuilding.
    const auto snapshot_file = root / "index.snapshot";
    {
      std::unique_ptr<manager::Store> holder;
      manager::Store& store = open_store_or_die(holder, root / "store");
      const auto s0 = Clock::now();
      if (auto st = manager::save_index_snapshot(store, startup->loaded->index, snapshot_file); !st) {
        fail(fmt::format("save_index_snapshot: {}", st.error().message));
      }
      const double save_s = seconds_since(s0);
      std::error_code ec;
      const auto bytes = std::filesystem::file_size(snapshot_file, ec);
      fmt::print("  snapshot saved in {:.2f} s (what a clean stop adds): {} /device ({:.0f} MiB)\n", save_s,
                 per_device(static_cast<double>(bytes), o.devices), static_cast<double>(bytes) / 1048576.0);
    }
    startup->loaded.reset();
    startup = start_up(root / "store", &snapshot_file);
    if (!startup->loaded->from_snapshot) fail(fmt::format("snapshot not used: {}", startup->loaded->snapshot_note));
    print_startup("start-up from the snapshot", *startup, o.devices);
    std::fflush(stdout);
    if (o.startup_only) {
      std::error_code ec;
      if (!o.keep) std::filesystem::remove_all(root, ec);
      return 0;
    }
  }

  // 3. SQLite.
  {
    Db db(root / "fleet.db");
    if (sqlite3_create_collation_v2(db.get(), "dpkg", SQLITE_UTF8, nullptr, dpkg_collation, nullptr) != SQLITE_OK) {
      fail("sqlite: cannot register the dpkg collation");
    }
    db.exec("PRAGMA journal_mode=WAL");
    db.exec("PRAGMA synchronous=OFF");
    db.exec(fmt::format("PRAGMA cache_size=-{}", o.sqlite_cache_mib * 1024));
    fmt::print("\nSQLite load ({}; WAL, synchronous=OFF, cache {} MiB; one transaction per {} devices)\n",
               (root / "fleet.db").string(), o.sqlite_cache_mib, kSqlBatch);
    std::fflush(stdout);
    const SqlLoad load = load_sqlite(db, catalog, o);
    const double sql_total = load.insert_s + load.index_s + load.analyze_s + load.checkpoint_s;
    fmt::print(
        "  inserts {:.1f} s ({} devices, {} tag rows, {} software rows), CREATE INDEX x{} {:.1f} s\n"
        "  (software(name, version, device_id) {:.1f} s of it), ANALYZE {:.1f} s, checkpoint {:.1f} s;\n"
        "  total {:.1f} s = {:.0f} devices/s ({:.1f}x the index's time)\n",
        load.insert_s, o.devices, load.tag_rows, load.software_rows, kSqlIndexes.size(), load.index_s,
        load.software_index_s, load.analyze_s, load.checkpoint_s, sql_total, dev / sql_total, sql_total / index_s);
    fmt::print("  database size {} /device ({:.0f} MiB, page_count x page_size after checkpoint)\n",
               per_device(static_cast<double>(load.db_bytes), o.devices),
               static_cast<double>(load.db_bytes) / 1048576.0);
    std::fflush(stdout);

    // 4. The query mix.
    auto cases = make_cases(db);
    if (startup) {
      // The index the start-up built must answer every query like the one built by upserts.
      bool equal = true;
      for (const auto& c : cases) {
        const Answer a = c.flotilla(index), b = c.flotilla(startup->loaded->index);
        if (!same(a, b)) {
          equal = false;
          fmt::print("MISMATCH between the upserted and the loaded index: {}\n  {}\n  {}\n", c.label,
                     a.exact.substr(0, 500), b.exact.substr(0, 500));
        }
      }
      if (!equal) status = 1;
      fmt::print(
          "\nindex read from the snapshot: {}\n",
          equal ? "every answer of the query mix equal to the upserted index's" : "MISMATCH (a correctness failure)");
      startup->loaded.reset();
    }
    fmt::print("\nQueries: {} warm-ups, then reps = {:g} s / (one run), clamped to [{}, {}], per engine; now = {} ms\n",
               kWarmups, o.budget_s, o.min_reps, o.reps, kNowMs);
    fmt::print(
        "(p50/p99 by nearest rank: with fewer than 100 runs p99 is the slowest run; the same parsed query\n"
        "and prepared statement are reused by every run of an engine)\n");
    fmt::print("{:<70} {:>9} {:>19} {:>19} {:>13}  {}\n", "", "reps", "Flotilla ms", "SQLite ms", "SQLite/Flot.", "");
    fmt::print("{:<70} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}  {}\n", "query", "F/S", "p50", "p99", "p50", "p99",
               "p50", "p99", "result (check)");
    struct Row {
      const Case* c;
      Timing f, s;
      bool ok;
    };
    std::vector<Row> rows;
    for (const auto& c : cases) {
      Answer fa, sa;
      const Timing f = measure([&] { return c.flotilla(index); }, fa, o);
      const Timing s = measure(c.sqlite, sa, o);
      const bool ok = same(fa, sa);
      if (!ok) status = 1;
      rows.push_back({&c, f, s, ok});
      fmt::print("{:<70} {:>4}/{:<4} {:>9.3f} {:>9.3f} {:>9.3f} {:>9.3f} {:>6} {:>6}  {} ({})\n", c.label, f.reps,
                 s.reps, f.p50_ms, f.p99_ms, s.p50_ms, s.p99_ms, ratio_text(s.p50_ms, f.p50_ms),
                 ratio_text(s.p99_ms, f.p99_ms), fa.summary, ok ? "equal" : "MISMATCH");
      if (!ok) {
        fmt::print("    MISMATCH flotilla: {} {}\n", fa.exact.substr(0, 2000), fmt::join(fa.approx, ","));
        fmt::print("    MISMATCH sqlite:   {} {}\n", sa.exact.substr(0, 2000), fmt::join(sa.approx, ","));
      }
      std::fflush(stdout);
    }
    fmt::print("\nSQL notes:\n");
    for (const auto& c : cases) {
      if (!c.sql_note.empty()) fmt::print("  {}: {}\n", c.label, c.sql_note);
    }
    if (o.explain) {
      fmt::print("\nPlans:\n");
      for (const auto& c : cases) {
        fmt::print("  {}\n", c.label);
        if (c.label.starts_with("count ")) {
          std::string plan = index.explain(parse_or_die(std::string_view(c.label).substr(6)), kNowMs);
          fmt::print("    index:\n");
          std::string_view rest = plan;
          while (!rest.empty()) {
            const auto nl = rest.find('\n');
            fmt::print("      {}\n", rest.substr(0, nl));
            rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
          }
        }
        for (const auto& s : c.statements) {
          fmt::print("    sql: {}\n", s->sql());
          Stmt eqp(db, "EXPLAIN QUERY PLAN " + s->sql());
          if (s->sql().find("?1") != std::string::npos) eqp.integer(1, 0);
          while (eqp.step()) fmt::print("      {}\n", eqp.col_text(3));
        }
      }
    }

    fmt::print("\nTargets (information, not assertions):\n");
    auto verdict = [](bool met) { return met ? "met   " : "MISSED"; };
    for (const auto& r : rows) {
      if (r.c->label.starts_with("count ")) {
        fmt::print("  {} p99 <= 1 ms: {:.3f} ms  {}\n", verdict(r.f.p99_ms <= 1.0), r.f.p99_ms, r.c->label);
      }
    }
    for (const auto& r : rows) {
      if (r.c->group_by) {
        fmt::print("  {} group-by p99 <= 50 ms: {:.3f} ms  {}\n", verdict(r.f.p99_ms <= 50.0), r.f.p99_ms, r.c->label);
      }
    }
    for (const auto& r : rows) {
      if (r.c->aggregation) {
        fmt::print("  {} >= 10x SQLite (p50): {}  {}\n", verdict(r.s.p50_ms >= 10.0 * r.f.p50_ms),
                   ratio_text(r.s.p50_ms, r.f.p50_ms), r.c->label);
      }
    }
    auto startup_line = [&](std::string_view how, double s) {
      fmt::print("  {} start-up ({}) <= 5 s at 1M devices: {:.2f} s for {} devices{}\n", verdict(s * 1e6 / dev <= 5.0),
                 how, s, o.devices,
                 o.devices == 1'000'000 ? "" : fmt::format(" (x{:.2f} scaled: {:.2f} s)", 1e6 / dev, s * 1e6 / dev));
    };
    if (startup) {
      startup_line("from the snapshot a clean stop saves", startup->total_s);
      startup_line("rebuilding from the store, the slower run", rebuild_s);
    } else {
      startup_line("upserts only: --no-store", index_s);
    }
    fmt::print("  {} <= 1 KiB RAM per device excluding software: memory_bytes() other {:.0f} B/device\n",
               verdict(static_cast<double>(mem_other) / dev <= 1024), static_cast<double>(mem_other) / dev);
    fmt::print("\nresults: {}\n",
               status == 0 ? "every answer equal in both engines" : "MISMATCH (a correctness failure, not a timing)");
  }
  if (!o.keep) {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  } else {
    fmt::print("kept {}\n", root.string());
  }
  return status;
}
