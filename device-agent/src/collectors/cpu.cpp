#include <unistd.h>

#include <algorithm>
#include <optional>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

// CPU model and logical cores from /proc/cpuinfo; busy share from /proc/stat deltas, load
// averages and uptime. Keeps the previous /proc/stat reading between telemetry samples.
class CpuCollector final : public Collector {
 public:
  explicit CpuCollector(HostPaths paths) : paths_(std::move(paths)) {
    if (auto times = read_cpu_times()) previous_ = *times;
  }

  std::string_view name() const override { return "cpu"; }

  Status collect_inventory(v1::Inventory& out) override {
    v1::Cpu& cpu = *out.mutable_cpu();
    auto text = detail::read_host_file(paths_.proc / "cpuinfo", detail::kMaxCpuinfoBytes);
    CpuInfo info = text ? parse_cpuinfo(*text) : CpuInfo{};
    if (info.logical_cores == 0) {
      const long online = ::sysconf(_SC_NPROCESSORS_ONLN);
      info.logical_cores = online > 0 ? static_cast<std::uint32_t>(online) : 0;
    }
    cpu.set_model(std::move(info.model));
    cpu.set_logical_cores(info.logical_cores);
    if (!text) return std::move(text).error();
    return {};
  }

  Status collect_telemetry(v1::Telemetry& out) override {
    Status status;
    const auto keep_first = [&status](Error error) {
      if (status) status = std::move(error);
    };

    if (auto times = read_cpu_times()) {
      out.set_cpu_percent(busy_percent(*times));
    } else {
      keep_first(std::move(times).error());
    }

    const auto loadavg_path = paths_.proc / "loadavg";
    if (auto text = detail::read_host_file(loadavg_path, detail::kMaxFileBytes); !text) {
      keep_first(std::move(text).error());
    } else if (auto load = parse_loadavg(*text); !load) {
      keep_first(make_error(Errc::parse_error, "{}: {}", loadavg_path.string(), load.error().message));
    } else {
      out.set_load1(load->load1);
      out.set_load5(load->load5);
      out.set_load15(load->load15);
    }

    const auto uptime_path = paths_.proc / "uptime";
    if (auto text = detail::read_host_file(uptime_path, detail::kMaxFileBytes); !text) {
      keep_first(std::move(text).error());
    } else if (auto uptime = parse_uptime(*text); !uptime) {
      keep_first(make_error(Errc::parse_error, "{}: {}", uptime_path.string(), uptime.error().message));
    } else {
      out.set_uptime_s(static_cast<std::uint64_t>(*uptime));
    }
    return status;
  }

 private:
  Result<CpuTimes> read_cpu_times() const {
    const auto path = paths_.proc / "stat";
    auto text = detail::read_host_file(path, detail::kMaxFileBytes);
    if (!text) return std::move(text).error();
    auto times = parse_proc_stat_cpu(*text);
    if (!times) return make_error(Errc::parse_error, "{}: {}", path.string(), times.error().message);
    return times;
  }

  // Busy share since the previous reading. 0 when no jiffy passed or the counters went
  // backwards (CPU hotplug, garbage); the reading then becomes the new baseline.
  double busy_percent(const CpuTimes& now) {
    double percent = 0;
    if (previous_ && now.total > previous_->total && now.busy >= previous_->busy) {
      const auto total = static_cast<double>(now.total - previous_->total);
      const auto busy = static_cast<double>(now.busy - previous_->busy);
      percent = std::clamp(100.0 * busy / total, 0.0, 100.0);
    }
    previous_ = now;
    return percent;
  }

  HostPaths paths_;
  std::optional<CpuTimes> previous_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_cpu_collector(const HostPaths& paths) {
  return std::make_unique<CpuCollector>(paths);
}

}  // namespace flotilla::agent
