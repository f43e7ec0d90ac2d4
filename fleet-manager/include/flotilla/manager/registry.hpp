#pragma once
// The device registry: every DeviceRecord in memory, loaded from the Store at start-up and kept
// exactly in step with it. Owned by the manager's reactor thread; not thread-safe.
//
// ingest() validates one message from a device topic and turns it into record updates plus
// Store writes appended to a Batch; the caller commits the batch (one per drained queue batch)
// before answering anything that depends on it.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/device.pb.h"
#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

struct IngestOutcome {
  // Empty when accepted; otherwise the reason it was dropped: oversized, parse_error,
  // bad_header, unexpected_channel, stale_birth.
  std::string dropped;
  std::string detail;  // human-readable, for the rate-limited log
  // Noteworthy but accepted: seq_gap, duplicate, late, newer_session, stream_reset,
  // stale_death, duplicate_death, unknown_device, outbox_dropped, command_result.
  std::vector<std::string> events;
  // The manager should ask this device to publish its birth again.
  bool request_rebirth = false;
  // What was applied, for the index: the new latest inventory or telemetry, if any.
  std::shared_ptr<const v1::Inventory> inventory;
  std::shared_ptr<const v1::Telemetry> telemetry;
  // A command result or job progress report, once per reading (duplicates are left out).
  std::shared_ptr<const v1::CommandResult> result;
};

class Registry {
 public:
  // Loads every record. Errors: the store's, or corruption for an undecodable record.
  static Result<Registry> load(const Store& store);

  IngestOutcome ingest(const topics::DeviceTopic& topic, std::string_view payload, std::int64_t now_ms, Batch& batch);

  // Appends the records changed since the last flush to `batch`; returns their ids.
  std::vector<std::string> flush(Batch& batch);

  // Forgets a device: appends the erasure of its record, latest inventory and latest telemetry to
  // `batch` and drops it from memory (a change not yet flushed is dropped with it). Returns the
  // record as it was; nullopt (and nothing appended) when the device is unknown.
  std::optional<v1::DeviceRecord> erase(std::string_view device_id, Batch& batch);

  const v1::DeviceRecord* find(std::string_view device_id) const;
  // Records the desired-configuration version published to a known device (flushed with the
  // next batch). False when the device is unknown.
  bool set_config_desired(std::string_view device_id, const std::string& version);
  const std::map<std::string, v1::DeviceRecord, std::less<>>& devices() const { return devices_; }
  std::size_t online_count() const;

 private:
  v1::DeviceRecord& record_for(const DeviceId& id, std::int64_t now_ms);
  // Applies stream accounting; false when the reading is a duplicate and must not be applied.
  bool note_reading(v1::DeviceRecord& r, const v1::Header& h, std::int64_t now_ms, IngestOutcome& outcome);

  std::map<std::string, v1::DeviceRecord, std::less<>> devices_;
  std::set<std::string, std::less<>> dirty_;
};

}  // namespace flotilla::manager
