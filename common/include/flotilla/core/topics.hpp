#pragma once
// The topic scheme. Every topic the project uses is built here; call sites never concatenate
// topic strings. docs/topics.md is the contract this file implements.

#include <optional>
#include <string>
#include <string_view>

#include "flotilla/core/ids.hpp"
#include "flotilla/core/result.hpp"

namespace flotilla::topics {

inline constexpr std::string_view root = "flotilla/v1";

// Leaves of a device's own subtree flotilla/v1/dev/{id}/{channel}.
enum class Channel {
  birth,      // device -> manager, QoS 1
  death,      // device (or its Will) -> manager, QoS 1
  telemetry,  // device -> manager, QoS 1
  inventory,  // device -> manager, QoS 1
  result,     // device -> manager, QoS 1: command results
  cmd,        // manager -> device, QoS 1, never retained
  config,     // manager -> device, QoS 1, retained desired configuration
};

std::string_view to_string(Channel channel) noexcept;
std::optional<Channel> channel_from_string(std::string_view text) noexcept;

std::string device(const DeviceId& id, Channel channel);
// Filter matching one channel of every device: flotilla/v1/dev/+/{channel}.
std::string all_devices(Channel channel);

std::string manager_state();  // retained ManagerState
std::string manager_rpc();    // RpcRequest from operators
// Membership events of one group: flotilla/v1/mgr/groups/{group}/events.
Result<std::string> group_events(std::string_view group);
// Reply topic of one CLI invocation: flotilla/v1/cli/{user}/{session}.
Result<std::string> cli_reply(std::string_view user, std::string_view session);

struct DeviceTopic {
  DeviceId device;
  Channel channel;
};

// Parses flotilla/v1/dev/{id}/{channel}. Errors: invalid_argument naming what is wrong.
Result<DeviceTopic> parse_device_topic(std::string_view topic);

}  // namespace flotilla::topics
