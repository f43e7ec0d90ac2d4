#pragma once
// Presence (the session-epoch rule, Sparkplug's bdSeq idea) and reading-stream accounting, as
// pure functions over a DeviceRecord. No I/O; time comes in as an argument.
//
// Presence:
// - A birth opens session `epoch`. A birth older than the newest session seen is stale.
// - A death (graceful, or the Will the broker publishes) closes only the session it names: the
//   Will of a connection that was taken over names an older epoch and is ignored.
// - A reading from an epoch newer than any birth seen means the birth was missed: the device is
//   online, and the manager asks it for a rebirth.
//
// Readings (telemetry, inventory, results) carry a stream sequence number that only grows per
// device across sessions and restarts. A reading at or below the highest seen is a duplicate and
// is not applied; a jump counts the readings in between as missing. A birth states the stream it
// belongs to and how far the broker has acknowledged it: a new stream id restarts the count from
// that position (history before it is not owed to this manager).

#include <cstdint>

#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

enum class BirthVerdict { accepted, stale };
enum class DeathVerdict { offline, stale, duplicate };

struct BirthCheck {
  BirthVerdict verdict = BirthVerdict::accepted;
  bool stream_reset = false;  // a different stream id than before: counting restarts
};

struct ReadingCheck {
  bool duplicate = false;      // already applied: skip
  std::uint64_t missing = 0;   // readings skipped over by this one
  bool late = false;           // produced in an earlier session (delivered from the outbox)
  bool newer_session = false;  // from a session whose birth was not seen
};

BirthCheck apply_birth(v1::DeviceRecord& record, std::uint64_t epoch, std::uint64_t stream_id,
                       std::uint64_t stream_acked_seq, std::int64_t now_ms);
DeathVerdict apply_death(v1::DeviceRecord& record, std::uint64_t epoch, std::int64_t now_ms);
ReadingCheck apply_reading(v1::DeviceRecord& record, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms);

}  // namespace flotilla::manager
