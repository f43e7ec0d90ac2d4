#include "flotilla/core/topics.hpp"

#include <array>
#include <utility>

#include <fmt/format.h>

namespace flotilla::topics {
namespace {

constexpr std::array<std::pair<Channel, std::string_view>, 7> kChannels{{
    {Channel::birth, "birth"},
    {Channel::death, "death"},
    {Channel::telemetry, "telemetry"},
    {Channel::inventory, "inventory"},
    {Channel::result, "result"},
    {Channel::cmd, "cmd"},
    {Channel::config, "config"},
}};

constexpr std::string_view kDevicePrefix = "flotilla/v1/dev/";

}  // namespace

std::string_view to_string(Channel channel) noexcept {
  for (const auto& [c, name] : kChannels) {
    if (c == channel) return name;
  }
  return "unknown";
}

std::optional<Channel> channel_from_string(std::string_view text) noexcept {
  for (const auto& [c, name] : kChannels) {
    if (name == text) return c;
  }
  return std::nullopt;
}

std::string device(const DeviceId& id, Channel channel) {
  return fmt::format("{}{}/{}", kDevicePrefix, id.str(), to_string(channel));
}

std::string all_devices(Channel channel) { return fmt::format("{}+/{}", kDevicePrefix, to_string(channel)); }

std::string manager_state() { return fmt::format("{}/mgr/state", root); }

std::string manager_rpc() { return fmt::format("{}/mgr/rpc", root); }

Result<std::string> cli_reply(std::string_view user, std::string_view session) {
  if (auto st = validate_topic_level_name(user, "operator name"); !st) return std::move(st).error();
  if (auto st = validate_topic_level_name(session, "cli session"); !st) return std::move(st).error();
  return fmt::format("{}/cli/{}/{}", root, user, session);
}

Result<std::string> group_events(std::string_view group) {
  if (auto st = validate_topic_level_name(group, "group name"); !st) return std::move(st).error();
  return fmt::format("{}/mgr/groups/{}/events", root, group);
}

Result<DeviceTopic> parse_device_topic(std::string_view topic) {
  if (!topic.starts_with(kDevicePrefix)) {
    return make_error(Errc::invalid_argument, "topic is not under {}", kDevicePrefix);
  }
  const std::string_view rest = topic.substr(kDevicePrefix.size());
  const auto slash = rest.find('/');
  if (slash == std::string_view::npos) return make_error(Errc::invalid_argument, "topic has no channel");
  auto id = DeviceId::parse(rest.substr(0, slash));
  if (!id) return std::move(id).error();
  const std::string_view leaf = rest.substr(slash + 1);
  const auto channel = channel_from_string(leaf);
  if (!channel) return make_error(Errc::invalid_argument, "unknown channel '{}'", leaf.substr(0, 32));
  return DeviceTopic{std::move(id).value(), *channel};
}

}  // namespace flotilla::topics
