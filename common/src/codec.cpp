#include "flotilla/core/codec.hpp"

#include <limits>
#include <mutex>

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/stubs/logging.h>

#include "flotilla/core/log.hpp"

namespace flotilla::codec {

std::string encode(const google::protobuf::MessageLite& message) { return message.SerializeAsString(); }

namespace {

// Protobuf logs hostile input itself (e.g. invalid UTF-8 in a string field) straight to stderr;
// a misbehaving device could flood it. Decoders report failures through their Result and the
// callers' rate-limited counters, so protobuf's own lines go to the debug level.
void protobuf_log(google::protobuf::LogLevel level, const char* file, int line, const std::string& message) {
  if (level >= google::protobuf::LOGLEVEL_FATAL) log::error("protobuf {}:{}: {}", file, line, message);
  else log::debug("protobuf {}:{}: {}", file, line, message);
}

std::once_flag g_log_handler_once;

}  // namespace

Status decode_into(std::string_view bytes, std::size_t max_bytes, google::protobuf::MessageLite& out) {
  std::call_once(g_log_handler_once, [] { google::protobuf::SetLogHandler(&protobuf_log); });
  if (bytes.size() > max_bytes) {
    return make_error(Errc::too_large, "{} bytes exceeds the limit of {}", bytes.size(), max_bytes);
  }
  if (bytes.size() > static_cast<std::size_t>(std::numeric_limits<int>::max())) {
    return make_error(Errc::too_large, "{} bytes cannot be parsed", bytes.size());
  }
  google::protobuf::io::CodedInputStream input(reinterpret_cast<const std::uint8_t*>(bytes.data()),  // NOLINT
                                               static_cast<int>(bytes.size()));
  input.SetRecursionLimit(32);
  if (!out.MergePartialFromCodedStream(&input) || !input.ConsumedEntireMessage()) {
    return make_error(Errc::parse_error, "payload is not a valid {}", out.GetTypeName());
  }
  return {};
}

v1::Header make_header(const DeviceId& device, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms) {
  v1::Header header;
  header.set_schema_version(schema_version);
  header.set_device_id(device.str());
  header.set_session_epoch(epoch);
  header.set_seq(seq);
  header.set_timestamp_ms(now_ms);
  return header;
}

Status check_header(const v1::Header& header, const DeviceId& topic_device) {
  if (header.schema_version() == 0 || header.schema_version() > schema_version) {
    return make_error(Errc::invalid_argument, "unsupported schema_version {}", header.schema_version());
  }
  if (header.device_id() != topic_device.str()) {
    return make_error(Errc::invalid_argument, "device_id mismatch: topic names {}", topic_device);
  }
  return {};
}

}  // namespace flotilla::codec
