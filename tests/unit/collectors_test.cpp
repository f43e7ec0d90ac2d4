#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>

#include <arpa/inet.h>
#include <doctest/doctest.h>

#include "flotilla/agent/collectors.hpp"

#ifndef FLOTILLA_SOURCE_DIR
#define FLOTILLA_SOURCE_DIR "."
#endif

namespace fa = flotilla::agent;
namespace v1 = flotilla::v1;

namespace {

const std::filesystem::path kFixtureHost = std::filesystem::path(FLOTILLA_SOURCE_DIR) / "tests/fixtures/host";

std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

fa::HostPaths fixture_paths() {
  fa::HostPaths paths;
  paths.proc = kFixtureHost / "proc";
  paths.sys = kFixtureHost / "sys";
  paths.os_release = kFixtureHost / "etc/os-release";
  paths.dpkg_status = kFixtureHost / "var/lib/dpkg/status";
  paths.mounts = kFixtureHost / "proc/mounts";
  return paths;
}

fa::Collector& find_collector(std::vector<std::unique_ptr<fa::Collector>>& collectors, std::string_view name) {
  const auto it = std::find_if(collectors.begin(), collectors.end(), [&](const auto& c) { return c->name() == name; });
  REQUIRE(it != collectors.end());
  return **it;
}

// The value of a KEY="value" or KEY=value line, read without the code under test.
std::string simple_os_release_value(const std::string& text, const std::string& key) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key + "=", 0) != 0) continue;
    std::string value = line.substr(key.size() + 1);
    if (value.size() >= 2 && (value.front() == '"' || value.front() == '\'')) value = value.substr(1, value.size() - 2);
    return value;
  }
  return {};
}

const v1::Mount* find_mount(const v1::Inventory& inventory, std::string_view mount_point) {
  for (const auto& mount : inventory.mounts()) {
    if (mount.mount_point() == mount_point) return &mount;
  }
  return nullptr;
}

constexpr std::string_view kDpkgStatus =
    "Package: zlib1g\n"
    "Status: install ok installed\n"
    "Priority: required\n"
    "Architecture: amd64\n"
    "Version: 1:1.2.13.dfsg-1\n"
    "Description: compression library - runtime\n"
    " zlib is a library implementing the deflate compression method found\n"
    " in gzip and PKZIP.\n"
    " .\n"
    " Package: not-a-field-because-continuation\n"
    "\n"
    "Package: removed-thing\n"
    "Status: deinstall ok config-files\n"
    "Architecture: all\n"
    "Version: 2.0\n"
    "\n"
    "\n"
    "package: held\r\n"
    "STATUS: hold ok installed\r\n"
    "architecture: arm64\r\n"
    "version: 3.1-2\r\n"
    "\r\n"
    "Status: install ok installed\n"
    "Version: 9\n"
    "\n"
    "Package: last-without-newline\n"
    "Version: 0.1\n"
    "Status: install ok installed";

}  // namespace

TEST_CASE("parse_os_release handles quotes, escapes and comments") {
  const auto fields = fa::parse_os_release(
      "# comment line\n"
      "NAME=\"Debian \\\"GNU\\\"/Linux \\$HOME \\\\ \\n\"\n"
      "  ID=debian  \n"
      "VERSION_ID='12 $literal \\n'\n"
      "PRETTY_NAME=Unquoted\\ with\\ escapes # trailing comment\n"
      "MIXED=\"a b\"'c d'e\n"
      "EMPTY=\n"
      "BROKEN=\"never closed\n"
      "not an assignment\n"
      "=no key\n"
      "1BAD=starts with digit\n"
      "BAD KEY=x\n"
      "ID=debian2\r\n");
  CHECK(fields.at("NAME") == "Debian \"GNU\"/Linux $HOME \\ \\n");
  CHECK(fields.at("ID") == "debian2");
  CHECK(fields.at("VERSION_ID") == "12 $literal \\n");
  CHECK(fields.at("PRETTY_NAME") == "Unquoted with escapes");
  CHECK(fields.at("MIXED") == "a bc de");
  CHECK(fields.at("EMPTY").empty());
  CHECK(fields.at("BROKEN") == "never closed");
  CHECK(fields.size() == 7);
}

TEST_CASE("parse_meminfo reads kB values and skips bad lines") {
  const auto fields = fa::parse_meminfo(
      "MemTotal:       24684096 kB\n"
      "MemAvailable:   24324660 kB\n"
      "HugePages_Total:       0\n"
      "Broken:   12x kB\n"
      "NoColon 5 kB\n"
      "Overflow: 99999999999999999999999 kB\n"
      ":  7 kB\n"
      "SwapTotal:      0 kB");
  CHECK(fields.at("MemTotal") == 24684096);
  CHECK(fields.at("MemAvailable") == 24324660);
  CHECK(fields.at("HugePages_Total") == 0);
  CHECK(fields.at("SwapTotal") == 0);
  CHECK(fields.size() == 4);
}

TEST_CASE("parse_dpkg_status keeps installed packages only") {
  const auto packages = fa::parse_dpkg_status(kDpkgStatus);
  REQUIRE(packages.size() == 3);
  CHECK(packages[0].name() == "zlib1g");
  CHECK(packages[0].version() == "1:1.2.13.dfsg-1");
  CHECK(packages[0].architecture() == "amd64");
  CHECK(packages[1].name() == "held");
  CHECK(packages[1].version() == "3.1-2");
  CHECK(packages[1].architecture() == "arm64");
  CHECK(packages[2].name() == "last-without-newline");
  CHECK(packages[2].architecture().empty());
}

TEST_CASE("parse_proc_stat_cpu sums busy and total jiffies") {
  const auto times = fa::parse_proc_stat_cpu(
      "cpu  5262 1 2706 39777 3109 7 37 59 100 3\n"
      "cpu0 2365 0 994 22111 36 0 10 25 0 0\n");
  REQUIRE(times.ok());
  CHECK(times->busy == 5262 + 1 + 2706 + 7 + 37 + 59);
  CHECK(times->total == times->busy + 39777 + 3109);

  const auto old_kernel = fa::parse_proc_stat_cpu("intr 1 2\ncpu 10 20 30 40\n");
  REQUIRE(old_kernel.ok());
  CHECK(old_kernel->busy == 60);
  CHECK(old_kernel->total == 100);

  CHECK_FALSE(fa::parse_proc_stat_cpu("").ok());
  CHECK_FALSE(fa::parse_proc_stat_cpu("cpu0 1 2 3 4\n").ok());
  CHECK_FALSE(fa::parse_proc_stat_cpu("cpu  1 2 3").ok());
  CHECK(fa::parse_proc_stat_cpu("cpu  1 2 x 4").error().code == flotilla::Errc::parse_error);
}

TEST_CASE("parse_mounts decodes escapes; select_mounts dedups and filters") {
  const auto entries = fa::parse_mounts(
      "/dev/sda1 / ext4 rw 0 0\n"
      "proc /proc proc rw 0 0\n"
      "/dev/sdb1 /media/My\\040Disk\\134x vfat rw 0 0\n"
      "short line\n"
      "\n"
      "tmpfs /media/My\\040Disk\\134x tmpfs rw 0 0\n"
      "overlay / overlay rw 0 0\n"
      "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
      "/dev/sdc1 /data xfs rw 0 0\n"
      "bad\\9 /odd\\04 ext4");
  REQUIRE(entries.size() == 8);
  CHECK(entries[2] == fa::MountEntry{"/dev/sdb1", "/media/My Disk\\x", "vfat"});
  CHECK(entries[7] == fa::MountEntry{"bad\\9", "/odd\\04", "ext4"});

  const auto selected = fa::select_mounts(entries);
  REQUIRE(selected.size() == 3);
  CHECK(selected[0] == fa::MountEntry{"overlay", "/", "overlay"});
  CHECK(selected[1] == fa::MountEntry{"/dev/sdc1", "/data", "xfs"});
  CHECK(selected[2] == fa::MountEntry{"bad\\9", "/odd\\04", "ext4"});

  for (const char* skipped : {"proc", "sysfs", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "squashfs", "devpts"}) {
    CHECK_MESSAGE(!fa::is_reported_filesystem(skipped), skipped);
  }
  for (const char* kept : {"ext4", "xfs", "btrfs", "overlay", "vfat", "zfs", "nfs4"}) {
    CHECK_MESSAGE(fa::is_reported_filesystem(kept), kept);
  }
  CHECK(fa::is_network_filesystem("nfs4"));
  CHECK(fa::is_network_filesystem("cifs"));
  CHECK_FALSE(fa::is_network_filesystem("ext4"));
}

TEST_CASE("parse_cpuinfo finds the model on x86 and ARM") {
  const auto x86 = fa::parse_cpuinfo(
      "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n"
      "processor\t: 1\nmodel name\t: second\n");
  CHECK(x86.model == "AMD EPYC");
  CHECK(x86.logical_cores == 2);

  const auto arm = fa::parse_cpuinfo(read_text(kFixtureHost / "proc/cpuinfo"));
  CHECK(arm.model == "ARMv7 Processor rev 4 (v7l)");
  CHECK(arm.logical_cores == 4);

  const auto soc_only = fa::parse_cpuinfo("processor : 0\nHardware : BCM2835\n");
  CHECK(soc_only.model == "BCM2835");
}

TEST_CASE("parse_loadavg and parse_uptime") {
  const auto load = fa::parse_loadavg("0.51 0.28 0.11 1/86 3788\n");
  REQUIRE(load.ok());
  CHECK(load->load1 == doctest::Approx(0.51));
  CHECK(load->load5 == doctest::Approx(0.28));
  CHECK(load->load15 == doctest::Approx(0.11));
  CHECK_FALSE(fa::parse_loadavg("0.51 0.28").ok());
  CHECK_FALSE(fa::parse_loadavg("0.51 -1 0.3").ok());
  CHECK_FALSE(fa::parse_loadavg("nan 1 2").ok());

  const auto uptime = fa::parse_uptime("256.55 397.77\n");
  REQUIRE(uptime.ok());
  CHECK(*uptime == doctest::Approx(256.55));
  CHECK_FALSE(fa::parse_uptime("").ok());
  CHECK_FALSE(fa::parse_uptime("inf 1").ok());
}

TEST_CASE("parsers survive garbage and truncated input") {
  const std::string samples[] = {
      std::string(kDpkgStatus),
      read_text(kFixtureHost / "etc/os-release"),
      read_text(kFixtureHost / "proc/meminfo"),
      read_text(kFixtureHost / "proc/stat"),
      read_text(kFixtureHost / "proc/mounts"),
      read_text(kFixtureHost / "proc/cpuinfo"),
  };
  const auto run_all = [](std::string_view text) {
    (void)fa::parse_os_release(text);
    (void)fa::parse_meminfo(text);
    for (const auto& p : fa::parse_dpkg_status(text)) CHECK_FALSE(p.name().empty());
    if (const auto times = fa::parse_proc_stat_cpu(text); times.ok()) (void)times->total;
    for (const auto& m : fa::parse_mounts(text)) CHECK_FALSE(m.fs_type.empty());
    (void)fa::select_mounts(fa::parse_mounts(text));
    (void)fa::parse_cpuinfo(text);
    (void)fa::parse_loadavg(text);
    (void)fa::parse_uptime(text);
  };
  for (const auto& sample : samples) {
    REQUIRE_FALSE(sample.empty());
    for (std::size_t cut = 0; cut <= sample.size(); ++cut) run_all(std::string_view(sample).substr(0, cut));
  }

  std::mt19937 rng(12345);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 200; ++round) {
    std::string junk(static_cast<std::size_t>(round * 7), '\0');
    for (char& c : junk) c = static_cast<char>(byte(rng));
    run_all(junk);
  }
  run_all(std::string_view("\0\0\0", 3));

  // Truncation in the middle of the one field that matters.
  CHECK(fa::parse_dpkg_status("Package: a\nStatus: install ok inst").empty());
  CHECK(fa::parse_dpkg_status("Package: a\nStatus: install ok").empty());
  CHECK(fa::parse_os_release("NAME=\"Deb").at("NAME") == "Deb");
  CHECK(fa::parse_os_release("NAME=\"Deb\\").at("NAME") == "Deb\\");
}

TEST_CASE("read_host_file bounds the size and classifies errors") {
  const auto path = kFixtureHost / "proc/meminfo";
  const auto whole = fa::detail::read_host_file(path, fa::detail::kMaxFileBytes);
  REQUIRE(whole.ok());
  CHECK(*whole == read_text(path));
  CHECK(fa::detail::read_host_file(path, whole->size()).ok());
  CHECK(fa::detail::read_host_file(path, whole->size() - 1).error().code == flotilla::Errc::too_large);
  CHECK(fa::detail::read_host_file(kFixtureHost / "missing", 10).error().code == flotilla::Errc::not_found);
  CHECK(fa::detail::read_host_file(kFixtureHost / "proc", 10).error().code == flotilla::Errc::io_error);
  CHECK(fa::detail::read_host_attribute(kFixtureHost / "sys/class/dmi/id/sys_vendor") == "QEMU");
  CHECK(fa::detail::read_host_attribute(kFixtureHost / "sys/class/dmi/id/product_serial").empty());
}

TEST_CASE("collectors read a fixture host tree") {
  auto collectors = fa::make_host_collectors(fixture_paths());
  REQUIRE(collectors.size() == 9);

  v1::Inventory inventory;
  v1::Telemetry telemetry;
  for (auto& collector : collectors) {
    const auto inventory_status = collector->collect_inventory(inventory);
    CHECK_MESSAGE(inventory_status.ok(), collector->name());
    const auto telemetry_status = collector->collect_telemetry(telemetry);
    CHECK_MESSAGE(telemetry_status.ok(), collector->name());
  }

  CHECK(inventory.os().name() == "Flotilla \"Test\" Linux");
  CHECK(inventory.os().id() == "flotilla");
  CHECK(inventory.os().version() == "24.04");
  CHECK(inventory.os().pretty_name() == "Flotilla Test Linux 24.04 (it's a fixture)");
  CHECK_FALSE(inventory.os().kernel().empty());

  CHECK(inventory.hardware().vendor() == "QEMU");
  CHECK(inventory.hardware().model() == "Standard PC (Q35 + ICH9, 2009)");
  CHECK(inventory.hardware().serial().empty());
  CHECK(inventory.hardware().firmware_version() == "1.16.2-debian-1.16.2-1");

  CHECK(inventory.cpu().model() == "ARMv7 Processor rev 4 (v7l)");
  CHECK(inventory.cpu().logical_cores() == 4);
  CHECK(inventory.memory_total_bytes() == 3884096ull * 1024);
  CHECK(inventory.swap_total_bytes() == 102396ull * 1024);

  REQUIRE(inventory.packages_size() == 2);
  CHECK(inventory.packages(0).name() == "base-files");
  CHECK(inventory.packages(0).version() == "12.4+deb12u5");
  CHECK(inventory.packages(1).name() == "libc6");
  CHECK(inventory.packages(1).architecture() == "i386");

  REQUIRE(inventory.mounts_size() == 3);
  struct statvfs root {};
  REQUIRE(::statvfs("/", &root) == 0);
  CHECK(inventory.mounts(0).mount_point() == "/");
  CHECK(inventory.mounts(0).device() == "/dev/vda1");
  CHECK(inventory.mounts(0).total_bytes() == std::uint64_t{root.f_blocks} * root.f_frsize);
  CHECK(inventory.mounts(1).mount_point() == "/srv/media library");
  CHECK(inventory.mounts(1).fs_type() == "xfs");
  CHECK(inventory.mounts(2).mount_point() == "/mnt/nas");
  CHECK(inventory.mounts(2).total_bytes() == 0);
  REQUIRE(telemetry.mounts_size() == 1);
  CHECK(telemetry.mounts(0).mount_point() == "/");

  CHECK(telemetry.cpu_percent() == 0.0);
  CHECK(telemetry.load1() == doctest::Approx(0.42));
  CHECK(telemetry.load15() == doctest::Approx(0.30));
  CHECK(telemetry.uptime_s() == 12345);
  CHECK(telemetry.memory_available_bytes() == 2811220ull * 1024);
  CHECK(telemetry.swap_free_bytes() == 51200ull * 1024);

  REQUIRE(telemetry.temperatures_size() == 2);
  CHECK(telemetry.temperatures(0).sensor() == "x86_pkg_temp");
  CHECK(telemetry.temperatures(0).celsius() == doctest::Approx(45.5));
  CHECK(telemetry.temperatures(1).sensor() == "thermal_zone10");
  CHECK(telemetry.temperatures(1).celsius() == doctest::Approx(-5.25));

  REQUIRE(telemetry.batteries_size() == 1);
  CHECK(telemetry.batteries(0).name() == "BAT0");
  CHECK(telemetry.batteries(0).percent() == doctest::Approx(87));
  CHECK(telemetry.batteries(0).status() == "Discharging");

  // Refilling the same messages does not duplicate repeated fields.
  for (auto& collector : collectors) {
    (void)collector->collect_inventory(inventory);
    (void)collector->collect_telemetry(telemetry);
  }
  CHECK(inventory.packages_size() == 2);
  CHECK(inventory.mounts_size() == 3);
  CHECK(telemetry.temperatures_size() == 2);
}

TEST_CASE("missing sources: os-release is required, dpkg and sysfs are optional") {
  fa::HostPaths paths = fixture_paths();
  paths.os_release = kFixtureHost / "etc/missing-os-release";
  paths.dpkg_status = kFixtureHost / "var/lib/dpkg/missing";
  paths.sys = kFixtureHost / "no-sys";
  auto collectors = fa::make_host_collectors(paths);

  v1::Inventory inventory;
  const auto os_status = find_collector(collectors, "os").collect_inventory(inventory);
  REQUIRE_FALSE(os_status.ok());
  CHECK(os_status.error().code == flotilla::Errc::not_found);
  CHECK(os_status.error().message.find("missing-os-release") != std::string::npos);
  CHECK_FALSE(inventory.os().kernel().empty());

  CHECK(find_collector(collectors, "packages").collect_inventory(inventory).ok());
  CHECK(inventory.packages_size() == 0);
  CHECK(find_collector(collectors, "hardware").collect_inventory(inventory).ok());
  v1::Telemetry telemetry;
  CHECK(find_collector(collectors, "thermal").collect_telemetry(telemetry).ok());
  CHECK(find_collector(collectors, "battery").collect_telemetry(telemetry).ok());
  CHECK(telemetry.temperatures_size() == 0);
}

TEST_CASE("host inventory has the shape of this machine") {
  auto collectors = fa::make_host_collectors();
  v1::Inventory inventory;
  for (auto& collector : collectors) {
    const auto status = collector->collect_inventory(inventory);
    CHECK_MESSAGE(status.ok(), (std::string(collector->name()) + ": " + (status.ok() ? "" : status.error().message)));
  }

  SUBCASE("memory") {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    std::uint64_t kb = 0;
    std::string unit;
    while (meminfo >> key >> kb >> unit && key != "MemTotal:") {
    }
    REQUIRE(key == "MemTotal:");
    CHECK(inventory.memory_total_bytes() == kb * 1024);
  }

  SUBCASE("root mount") {
    struct statvfs root {};
    REQUIRE(::statvfs("/", &root) == 0);
    const v1::Mount* mount = find_mount(inventory, "/");
    REQUIRE(mount != nullptr);
    CHECK(mount->total_bytes() == std::uint64_t{root.f_blocks} * root.f_frsize);
  }

  SUBCASE("os") {
    std::string text = read_text("/etc/os-release");
    if (text.empty()) text = read_text("/usr/lib/os-release");
    CHECK(inventory.os().name() == simple_os_release_value(text, "NAME"));
    CHECK(inventory.os().version() == simple_os_release_value(text, "VERSION_ID"));
    utsname uts{};
    REQUIRE(::uname(&uts) == 0);
    CHECK(inventory.os().kernel() == uts.release);
    CHECK(inventory.hardware().architecture() == uts.machine);
    CHECK_FALSE(inventory.os().hostname().empty());
  }

  SUBCASE("packages") {
    FILE* pipe = ::popen("dpkg-query -W -f='${Status}\\n' 2>/dev/null", "r");
    REQUIRE(pipe != nullptr);
    std::string output;
    char buffer[4096];
    for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) output.append(buffer, n);
    const int rc = ::pclose(pipe);
    if (rc != 0) {
      MESSAGE("dpkg-query not usable here; package count not checked");
      return;
    }
    std::size_t installed = 0;
    std::istringstream lines(output);
    for (std::string want, error, state; lines >> want >> error >> state;) installed += state == "installed";
    CHECK(installed > 0);
    CHECK(static_cast<std::size_t>(inventory.packages_size()) == installed);
  }

  SUBCASE("cpu") {
    const auto cores = inventory.cpu().logical_cores();
    const auto online = static_cast<unsigned>(::sysconf(_SC_NPROCESSORS_ONLN));
    CHECK((cores == std::thread::hardware_concurrency() || cores == online));
  }

  SUBCASE("network") {
    REQUIRE(inventory.interfaces_size() > 0);
    for (const auto& interface : inventory.interfaces()) {
      CHECK_FALSE(interface.name().empty());
      for (const auto& address : interface.addresses()) {
        unsigned char binary[16];
        const int family = address.find(':') == std::string::npos ? AF_INET : AF_INET6;
        CHECK_MESSAGE(::inet_pton(family, address.c_str(), binary) == 1, address);
      }
      if (interface.name() == "lo") CHECK(interface.mac().empty());
    }
  }
}

TEST_CASE("host telemetry is in plausible ranges") {
  auto collectors = fa::make_host_collectors();
  v1::Telemetry first;
  v1::Telemetry second;
  for (auto& collector : collectors) CHECK(collector->collect_telemetry(first).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  for (auto& collector : collectors) CHECK(collector->collect_telemetry(second).ok());

  for (const auto* sample : {&first, &second}) {
    CHECK(sample->cpu_percent() >= 0.0);
    CHECK(sample->cpu_percent() <= 100.0);
    CHECK(sample->load1() >= 0.0);
    CHECK(sample->load5() >= 0.0);
    CHECK(sample->load15() >= 0.0);
    CHECK(sample->uptime_s() > 0);
    CHECK(sample->memory_total_bytes() > 0);
    CHECK(sample->memory_available_bytes() <= sample->memory_total_bytes());
    CHECK(sample->swap_free_bytes() <= sample->swap_total_bytes());
    for (const auto& mount : sample->mounts()) {
      CHECK(mount.used_bytes() <= mount.total_bytes());
      CHECK(mount.available_bytes() <= mount.total_bytes());
    }
    for (const auto& temperature : sample->temperatures()) CHECK(temperature.celsius() > -274.0);
    for (const auto& battery : sample->batteries()) {
      CHECK(battery.percent() >= 0.0);
      CHECK(battery.percent() <= 100.0);
    }
  }
}
