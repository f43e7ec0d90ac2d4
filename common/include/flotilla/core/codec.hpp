#pragma once
// Encoding and hostile-input decoding of flotilla.v1 messages. Sizes are checked before any
// parsing; headers are validated after it.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <google/protobuf/message_lite.h>

#include "flotilla/core/ids.hpp"
#include "flotilla/core/result.hpp"
#include "flotilla/v1/device.pb.h"

namespace flotilla::codec {

// Wire schema version this build writes. Readers accept 1..this.
inline constexpr std::uint32_t schema_version = 1;

// Default decode limits per message family, in bytes. Inventory carries the installed-software
// list (≈ 60 B a package; 3,000 packages ≈ 180 KiB), hence the larger bound.
inline constexpr std::size_t max_inventory_bytes = 768 * 1024;
inline constexpr std::size_t max_telemetry_bytes = 64 * 1024;
inline constexpr std::size_t max_small_bytes = 16 * 1024;     // death, command result header-ish
inline constexpr std::size_t max_command_bytes = 256 * 1024;  // commands and results with output
inline constexpr std::size_t max_rpc_bytes = 1000 * 1000;     // RPC requests; the broker bounds packets at 1 MiB
inline constexpr std::size_t max_rpc_reply_bytes = 64 * 1024 * 1024;  // replies read by the CLI

std::string encode(const google::protobuf::MessageLite& message);

// Errors: too_large (before parsing), parse_error.
Status decode_into(std::string_view bytes, std::size_t max_bytes, google::protobuf::MessageLite& out);

template <typename M>
Result<M> decode(std::string_view bytes, std::size_t max_bytes) {
  M message;
  if (auto st = decode_into(bytes, max_bytes, message); !st) return std::move(st).error();
  return message;
}

v1::Header make_header(const DeviceId& device, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms);

// Checks schema version range and that the header names the device of the topic.
// Errors: invalid_argument ("schema_version" / "device_id mismatch" in the message).
Status check_header(const v1::Header& header, const DeviceId& topic_device);

}  // namespace flotilla::codec
