#include "flotilla/agent/protocol.hpp"

#include <fmt/format.h>

#include "flotilla/core/codec.hpp"
#include "flotilla/core/topics.hpp"

namespace flotilla::agent {

v1::Header DeviceProtocol::reading_header(std::int64_t now_ms) {
  return codec::make_header(identity_.id, epoch_, next_seq_++, now_ms);
}

Message DeviceProtocol::will(std::int64_t now_ms) const {
  v1::Death death;
  *death.mutable_header() = codec::make_header(identity_.id, epoch_, 0, now_ms);
  death.set_reason(v1::Death::REASON_CONNECTION_LOST);
  return Message{topics::device(identity_.id, topics::Channel::death), codec::encode(death), 1, false, {}, {}};
}

Message DeviceProtocol::birth(const v1::Inventory& inventory, std::uint64_t acked_seq, std::uint64_t outbox_dropped,
                              std::int64_t now_ms) {
  v1::Birth birth;
  *birth.mutable_header() = codec::make_header(identity_.id, epoch_, 0, now_ms);
  birth.set_kind(identity_.kind);
  birth.set_agent_version(identity_.agent_version);
  *birth.mutable_inventory() = inventory;
  *birth.mutable_inventory()->mutable_header() = birth.header();
  birth.set_keepalive_s(identity_.keepalive_s);
  birth.set_telemetry_interval_s(identity_.telemetry_interval_s);
  birth.set_tenant(identity_.tenant);
  birth.set_site(identity_.site);
  for (const auto& t : identity_.tags) birth.add_tags(t);
  birth.set_outbox_dropped(outbox_dropped);
  birth.set_gateway_id(identity_.gateway_id);
  birth.set_stream_id(stream_id_);
  birth.set_stream_acked_seq(acked_seq);
  birth.set_config_version(config_version_);
  return Message{topics::device(identity_.id, topics::Channel::birth), codec::encode(birth), 1, false, {}, {}};
}

Message DeviceProtocol::graceful_death(std::int64_t now_ms) {
  v1::Death death;
  *death.mutable_header() = codec::make_header(identity_.id, epoch_, 0, now_ms);
  death.set_reason(v1::Death::REASON_GRACEFUL);
  return Message{topics::device(identity_.id, topics::Channel::death), codec::encode(death), 1, false, {}, {}};
}

Message DeviceProtocol::telemetry(v1::Telemetry telemetry, std::int64_t now_ms) {
  *telemetry.mutable_header() = reading_header(now_ms);
  telemetry.set_config_version(config_version_);
  return Message{topics::device(identity_.id, topics::Channel::telemetry), codec::encode(telemetry), 1, false, {}, {}};
}

Message DeviceProtocol::inventory(v1::Inventory inventory, std::int64_t now_ms) {
  *inventory.mutable_header() = reading_header(now_ms);
  return Message{topics::device(identity_.id, topics::Channel::inventory), codec::encode(inventory), 1, false, {}, {}};
}

DeviceProtocol::CommandDecision DeviceProtocol::on_command(const Message& message, std::int64_t now_ms) {
  auto cmd = codec::decode<v1::Command>(message.payload, codec::max_command_bytes);
  if (!cmd) return Ignore{cmd.error().message};
  if (auto st = codec::check_header(cmd->header(), identity_.id); !st) return Ignore{st.error().message};
  if (cmd->command_id().empty() || cmd->command_id().size() > 128) return Ignore{"command id missing or too long"};
  if (cmd->type() == "job") return Execute{std::move(cmd).value()};  // the job runner decides
  if (auto it = executed_.find(cmd->command_id()); it != executed_.end()) {
    v1::CommandResult again = it->second;
    *again.mutable_header() = reading_header(now_ms);
    return Reply{
        Message{topics::device(identity_.id, topics::Channel::result), codec::encode(again), 1, false, {}, {}}};
  }
  if (cmd->expires_at_ms() != 0 && now_ms > cmd->expires_at_ms()) {
    return Reply{reply_for(cmd->command_id(), v1::CommandResult::STATUS_REJECTED, "command expired", {}, now_ms)};
  }
  return Execute{std::move(cmd).value()};
}

Message DeviceProtocol::result(const v1::Command& command, v1::CommandResult::Status status, std::string text,
                               const std::map<std::string, std::string>& output, std::int64_t now_ms) {
  return reply_for(command.command_id(), status, std::move(text), output, now_ms);
}

Message DeviceProtocol::job_result(std::string_view job_id, std::uint32_t attempt, v1::CommandResult::Status status,
                                   std::string text, const std::map<std::string, std::string>& output,
                                   std::uint32_t progress_percent, std::int64_t now_ms) {
  v1::CommandResult r;
  *r.mutable_header() = reading_header(now_ms);
  r.set_command_id(fmt::format("{}/{}", job_id, attempt));
  r.set_job_id(std::string(job_id));
  r.set_attempt(attempt);
  r.set_status(status);
  r.set_message(std::move(text));
  r.set_progress_percent(progress_percent);
  for (const auto& [k, v] : output) (*r.mutable_output())[k] = v;
  return Message{topics::device(identity_.id, topics::Channel::result), codec::encode(r), 1, false, {}, {}};
}

Message DeviceProtocol::reply_for(const std::string& command_id, v1::CommandResult::Status status, std::string text,
                                  const std::map<std::string, std::string>& output, std::int64_t now_ms) {
  v1::CommandResult r;
  *r.mutable_header() = reading_header(now_ms);
  r.set_command_id(command_id);
  r.set_status(status);
  r.set_message(std::move(text));
  for (const auto& [k, v] : output) (*r.mutable_output())[k] = v;
  if (executed_.emplace(command_id, r).second) {
    executed_order_.push_back(command_id);
    if (executed_order_.size() > kRememberedCommands) {
      executed_.erase(executed_order_.front());
      executed_order_.pop_front();
    }
  }
  return Message{topics::device(identity_.id, topics::Channel::result), codec::encode(r), 1, false, {}, {}};
}

}  // namespace flotilla::agent
