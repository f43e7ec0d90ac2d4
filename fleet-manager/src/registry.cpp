#include "flotilla/manager/registry.hpp"

#include "flotilla/core/codec.hpp"
#include "flotilla/manager/presence.hpp"
#include "flotilla/v1/command.pb.h"

namespace flotilla::manager {
namespace {

IngestOutcome dropped(std::string reason, std::string detail) {
  IngestOutcome o;
  o.dropped = std::move(reason);
  o.detail = std::move(detail);
  return o;
}

std::size_t limit_for(topics::Channel channel) {
  switch (channel) {
    case topics::Channel::birth:
    case topics::Channel::inventory: return codec::max_inventory_bytes;
    case topics::Channel::telemetry: return codec::max_telemetry_bytes;
    case topics::Channel::result: return codec::max_command_bytes;
    default: return codec::max_small_bytes;
  }
}

template <typename M>
Result<M> decode_checked(std::string_view payload, topics::Channel channel, const DeviceId& id,
                         IngestOutcome& failure) {
  auto msg = codec::decode<M>(payload, limit_for(channel));
  if (!msg) {
    failure = dropped(msg.error().code == Errc::too_large ? "oversized" : "parse_error", msg.error().message);
    return std::move(msg).error();
  }
  if (auto st = codec::check_header(msg->header(), id); !st) {
    failure = dropped("bad_header", st.error().message);
    return std::move(st).error();
  }
  return msg;
}

void copy_inventory_summary(const v1::Inventory& inv, v1::DeviceRecord& r) {
  r.set_os_name(inv.os().name());
  r.set_os_version(inv.os().version());
  r.set_os_kernel(inv.os().kernel());
  r.set_firmware_version(inv.hardware().firmware_version());
  r.set_hardware_vendor(inv.hardware().vendor());
  r.set_hardware_model(inv.hardware().model());
  r.set_package_count(static_cast<std::uint32_t>(inv.packages_size()));
}

}  // namespace

Result<Registry> Registry::load(const Store& store) {
  Registry reg;
  Status decode_status;
  auto st = store.scan(Space::devices, "", [&](std::string_view key, std::string_view value) {
    v1::DeviceRecord rec;
    if (!rec.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      decode_status = make_error(Errc::corruption, "device record '{}' does not decode", key);
      return false;
    }
    reg.devices_.emplace(std::string(key), std::move(rec));
    return true;
  });
  if (!st) return std::move(st).error();
  if (!decode_status) return std::move(decode_status).error();
  return reg;
}

v1::DeviceRecord& Registry::record_for(const DeviceId& id, std::int64_t now_ms) {
  auto [it, inserted] = devices_.try_emplace(id.str());
  if (inserted) {
    it->second.set_device_id(id.str());
    it->second.set_first_seen_ms(now_ms);
  }
  return it->second;
}

bool Registry::note_reading(v1::DeviceRecord& r, const v1::Header& h, std::int64_t now_ms, IngestOutcome& outcome) {
  const std::uint64_t previous = r.last_seq();
  const auto check = apply_reading(r, h.session_epoch(), h.seq(), now_ms);
  if (check.newer_session) {
    outcome.events.emplace_back("newer_session");
    outcome.request_rebirth = true;
  }
  if (check.late) outcome.events.emplace_back("late");
  if (check.duplicate) {
    outcome.events.emplace_back("duplicate");
    return false;
  }
  if (check.missing > 0) {
    // A lost reading may have been an inventory change: a birth brings the full picture back.
    outcome.events.emplace_back("seq_gap");
    outcome.detail = fmt::format("reading {} follows {}: {} missing", h.seq(), previous, check.missing);
    outcome.request_rebirth = true;
  }
  return true;
}

IngestOutcome Registry::ingest(const topics::DeviceTopic& topic, std::string_view payload, std::int64_t now_ms,
                               Batch& batch) {
  IngestOutcome outcome;
  const DeviceId& id = topic.device;
  const bool known = devices_.contains(id.str());

  switch (topic.channel) {
    case topics::Channel::birth: {
      auto birth = decode_checked<v1::Birth>(payload, topic.channel, id, outcome);
      if (!birth) return outcome;
      v1::DeviceRecord& r = record_for(id, now_ms);
      const auto check = apply_birth(r, birth->header().session_epoch(), birth->stream_id(), birth->stream_acked_seq(),
                                     now_ms);
      if (check.verdict == BirthVerdict::stale) {
        return dropped("stale_birth",
                       fmt::format("epoch {} < current {}", birth->header().session_epoch(), r.session_epoch()));
      }
      if (check.stream_reset) outcome.events.emplace_back("stream_reset");
      r.set_kind(birth->kind());
      r.set_agent_version(birth->agent_version());
      r.set_tenant(birth->tenant());
      r.set_site(birth->site());
      r.mutable_tags()->CopyFrom(birth->tags());
      r.set_gateway_id(birth->gateway_id());
      r.set_keepalive_s(birth->keepalive_s());
      r.set_telemetry_interval_s(birth->telemetry_interval_s());
      r.set_config_applied(birth->config_version());
      if (birth->outbox_dropped() > 0) {
        r.set_outbox_dropped(r.outbox_dropped() + birth->outbox_dropped());
        outcome.events.emplace_back("outbox_dropped");
      }
      copy_inventory_summary(birth->inventory(), r);
      batch.put(Space::inventory, id.str(), codec::encode(birth->inventory()));
      outcome.inventory = std::make_shared<v1::Inventory>(birth->inventory());
      break;
    }
    case topics::Channel::death: {
      auto death = decode_checked<v1::Death>(payload, topic.channel, id, outcome);
      if (!death) return outcome;
      v1::DeviceRecord& r = record_for(id, now_ms);
      switch (apply_death(r, death->header().session_epoch(), now_ms)) {
        case DeathVerdict::offline: break;
        case DeathVerdict::stale: outcome.events.emplace_back("stale_death"); break;
        case DeathVerdict::duplicate: outcome.events.emplace_back("duplicate_death"); break;
      }
      break;
    }
    case topics::Channel::telemetry: {
      auto tel = decode_checked<v1::Telemetry>(payload, topic.channel, id, outcome);
      if (!tel) return outcome;
      v1::DeviceRecord& r = record_for(id, now_ms);
      if (note_reading(r, tel->header(), now_ms, outcome) && tel->header().timestamp_ms() >= r.last_telemetry_ms()) {
        r.set_last_telemetry_ms(tel->header().timestamp_ms());
        if (!tel->config_version().empty()) r.set_config_applied(tel->config_version());
        batch.put(Space::telemetry, id.str(), std::string(payload));
        outcome.telemetry = std::make_shared<v1::Telemetry>(std::move(tel).value());
      }
      break;
    }
    case topics::Channel::inventory: {
      auto inv = decode_checked<v1::Inventory>(payload, topic.channel, id, outcome);
      if (!inv) return outcome;
      v1::DeviceRecord& r = record_for(id, now_ms);
      // Readings arrive in stream order, so a new one is the newest inventory.
      if (note_reading(r, inv->header(), now_ms, outcome)) {
        copy_inventory_summary(*inv, r);
        batch.put(Space::inventory, id.str(), std::string(payload));
        outcome.inventory = std::make_shared<v1::Inventory>(std::move(inv).value());
      }
      break;
    }
    case topics::Channel::result: {
      auto result = decode_checked<v1::CommandResult>(payload, topic.channel, id, outcome);
      if (!result) return outcome;
      v1::DeviceRecord& r = record_for(id, now_ms);
      if (note_reading(r, result->header(), now_ms, outcome)) {
        outcome.events.emplace_back("command_result");
        outcome.result = std::make_shared<v1::CommandResult>(std::move(result).value());
      }
      break;
    }
    case topics::Channel::cmd:
    case topics::Channel::config:
      return dropped("unexpected_channel",
                     fmt::format("devices do not publish on {}", topics::to_string(topic.channel)));
  }

  v1::DeviceRecord& r = devices_.at(id.str());
  if (!known && topic.channel != topics::Channel::birth) {
    outcome.events.emplace_back("unknown_device");
    outcome.request_rebirth = true;
  }
  r.set_last_seen_ms(now_ms);
  r.set_messages(r.messages() + 1);
  dirty_.insert(id.str());
  return outcome;
}

std::vector<std::string> Registry::flush(Batch& batch) {
  std::vector<std::string> changed(dirty_.begin(), dirty_.end());
  for (const auto& id : changed) batch.put(Space::devices, id, codec::encode(devices_.at(id)));
  dirty_.clear();
  return changed;
}

bool Registry::set_config_desired(std::string_view device_id, const std::string& version) {
  auto it = devices_.find(device_id);
  if (it == devices_.end()) return false;
  if (it->second.config_desired() != version) {
    it->second.set_config_desired(version);
    dirty_.insert(it->first);
  }
  return true;
}

std::optional<v1::DeviceRecord> Registry::erase(std::string_view device_id, Batch& batch) {
  auto it = devices_.find(device_id);
  if (it == devices_.end()) return std::nullopt;
  v1::DeviceRecord record = std::move(it->second);
  for (const auto space : {Space::devices, Space::inventory, Space::telemetry}) batch.erase(space, it->first);
  if (auto d = dirty_.find(device_id); d != dirty_.end()) dirty_.erase(d);
  devices_.erase(it);
  return record;
}

const v1::DeviceRecord* Registry::find(std::string_view device_id) const {
  auto it = devices_.find(device_id);
  return it == devices_.end() ? nullptr : &it->second;
}

std::size_t Registry::online_count() const {
  std::size_t n = 0;
  for (const auto& [id, r] : devices_) n += r.online() ? 1 : 0;
  return n;
}

}  // namespace flotilla::manager
