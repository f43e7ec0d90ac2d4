#pragma once
// The session-epoch rule (Sparkplug's bdSeq idea) and per-session sequence tracking, as pure
// functions over a DeviceRecord. No I/O; time comes in as an argument.
//
// - A birth opens session `epoch`. A birth older than the newest seen is stale and ignored.
// - A death (graceful or the broker-published Will) closes only the session it names: a death
//   for an older epoch, e.g. the Will of a connection that was taken over, is stale and ignored.
// - Data messages carry (epoch, seq). In the current session seq must grow by one; a jump is a
//   gap (messages lost), a repeat is a duplicate. Older epochs are late deliveries from the
//   device's outbox; a newer epoch means the birth was missed, so the manager asks for a rebirth.

#include <cstdint>

#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

enum class BirthVerdict { accepted, stale };
enum class DeathVerdict { offline, stale, duplicate };
enum class SeqVerdict { in_order, gap, duplicate, late, newer_session };

BirthVerdict apply_birth(v1::DeviceRecord& record, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms);
DeathVerdict apply_death(v1::DeviceRecord& record, std::uint64_t epoch, std::int64_t now_ms);
// `missing` receives the number of messages skipped when the verdict is gap.
SeqVerdict apply_seq(v1::DeviceRecord& record, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms,
                     std::uint64_t& missing);

}  // namespace flotilla::manager
