#include "flotilla/manager/presence.hpp"

#include <algorithm>

namespace flotilla::manager {

BirthCheck apply_birth(v1::DeviceRecord& r, std::uint64_t epoch, std::uint64_t stream_id,
                       std::uint64_t stream_acked_seq, std::int64_t now_ms) {
  BirthCheck check;
  if (epoch < r.session_epoch()) {
    check.verdict = BirthVerdict::stale;
    return check;
  }
  if (epoch > r.session_epoch() || !r.online()) r.set_connected_since_ms(now_ms);
  r.set_online(true);
  r.set_session_epoch(epoch);
  // Only a new stream takes its starting point from the birth. Within a known stream the
  // acknowledged position is not evidence of loss: after a broker restart the broker may still
  // be redelivering earlier readings to this manager's session when the device's new birth
  // arrives. A real loss shows as a jump in the readings themselves.
  if (stream_id != r.stream_id()) {
    check.stream_reset = r.stream_id() != 0;
    // Readings of a device first seen without its birth already belong to this stream: keep
    // the position they reached (the acknowledged position can lag it by the readings in flight).
    const std::uint64_t start = check.stream_reset ? stream_acked_seq : std::max(stream_acked_seq, r.last_seq());
    r.set_stream_id(stream_id);
    r.set_last_seq(start);
  }
  return check;
}

DeathVerdict apply_death(v1::DeviceRecord& r, std::uint64_t epoch, std::int64_t now_ms) {
  if (epoch < r.session_epoch()) return DeathVerdict::stale;
  if (epoch == r.session_epoch() && !r.online()) return DeathVerdict::duplicate;
  r.set_session_epoch(epoch);
  r.set_online(false);
  r.set_disconnected_at_ms(now_ms);
  return DeathVerdict::offline;
}

ReadingCheck apply_reading(v1::DeviceRecord& r, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms) {
  ReadingCheck check;
  if (epoch > r.session_epoch()) {
    check.newer_session = true;
    r.set_session_epoch(epoch);
    r.set_online(true);
    r.set_connected_since_ms(now_ms);
  } else if (epoch < r.session_epoch()) {
    check.late = true;
  }
  if (seq <= r.last_seq()) {
    check.duplicate = true;
    return check;
  }
  if (seq > r.last_seq() + 1) {
    check.missing = seq - r.last_seq() - 1;
    r.set_seq_gaps(r.seq_gaps() + check.missing);
  }
  r.set_last_seq(seq);
  r.set_readings(r.readings() + 1);
  return check;
}

}  // namespace flotilla::manager
