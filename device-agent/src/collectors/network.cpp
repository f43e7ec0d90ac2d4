#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <system_error>
#include <utility>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent {
namespace {

struct IfaddrsDeleter {
  void operator()(ifaddrs* list) const { ::freeifaddrs(list); }
};

// Textual form of an IPv4 or IPv6 socket address; empty for any other family.
std::string address_text(const sockaddr* address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address->sa_family == AF_INET) {
    sockaddr_in in4{};
    std::memcpy(&in4, address, sizeof in4);
    if (::inet_ntop(AF_INET, &in4.sin_addr, text, sizeof text) != nullptr) return text;
  } else if (address->sa_family == AF_INET6) {
    sockaddr_in6 in6{};
    std::memcpy(&in6, address, sizeof in6);
    if (::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text) != nullptr) return text;
  }
  return {};
}

bool is_safe_interface_name(std::string_view name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string_view::npos;
}

// Every interface getifaddrs(3) reports, in kernel order, with its IPv4/IPv6 addresses and the
// MAC from /sys/class/net/<if>/address (empty when absent or all zeros, as on lo).
class NetworkCollector final : public Collector {
 public:
  explicit NetworkCollector(HostPaths paths) : paths_(std::move(paths)) {}

  std::string_view name() const override { return "network"; }

  Status collect_inventory(v1::Inventory& out) override {
    out.clear_interfaces();
    ifaddrs* raw = nullptr;
    if (::getifaddrs(&raw) != 0) {
      return make_error(Errc::io_error, "getifaddrs: {}", std::generic_category().message(errno));
    }
    const std::unique_ptr<ifaddrs, IfaddrsDeleter> list(raw);

    std::map<std::string, v1::NetworkInterface*, std::less<>> by_name;
    for (const ifaddrs* ifa = list.get(); ifa != nullptr; ifa = ifa->ifa_next) {
      if (ifa->ifa_name == nullptr || !is_safe_interface_name(ifa->ifa_name)) continue;
      auto [it, inserted] = by_name.try_emplace(ifa->ifa_name, nullptr);
      if (inserted) {
        it->second = out.add_interfaces();
        it->second->set_name(ifa->ifa_name);
        it->second->set_mac(read_mac(ifa->ifa_name));
      }
      if (ifa->ifa_addr == nullptr) continue;
      if (std::string text = address_text(ifa->ifa_addr); !text.empty()) it->second->add_addresses(std::move(text));
    }
    return {};
  }

 private:
  std::string read_mac(std::string_view interface) const {
    std::string mac = detail::read_host_attribute(paths_.sys / "class/net" / interface / "address");
    if (mac.find_first_not_of("0:") == std::string::npos) return {};
    return mac;
  }

  HostPaths paths_;
};

}  // namespace

std::unique_ptr<Collector> detail::make_network_collector(const HostPaths& paths) {
  return std::make_unique<NetworkCollector>(paths);
}

}  // namespace flotilla::agent
