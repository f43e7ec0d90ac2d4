#include "flotilla/manager/presence.hpp"

namespace flotilla::manager {

BirthVerdict apply_birth(v1::DeviceRecord& r, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms) {
  if (epoch < r.session_epoch()) return BirthVerdict::stale;
  if (epoch > r.session_epoch() || !r.online()) r.set_connected_since_ms(now_ms);
  r.set_online(true);
  r.set_session_epoch(epoch);
  r.set_last_seq(seq);
  return BirthVerdict::accepted;
}

DeathVerdict apply_death(v1::DeviceRecord& r, std::uint64_t epoch, std::int64_t now_ms) {
  if (epoch < r.session_epoch()) return DeathVerdict::stale;
  if (epoch == r.session_epoch() && !r.online()) return DeathVerdict::duplicate;
  r.set_session_epoch(epoch);
  r.set_online(false);
  r.set_disconnected_at_ms(now_ms);
  return DeathVerdict::offline;
}

SeqVerdict apply_seq(v1::DeviceRecord& r, std::uint64_t epoch, std::uint64_t seq, std::int64_t now_ms,
                     std::uint64_t& missing) {
  missing = 0;
  if (epoch < r.session_epoch()) return SeqVerdict::late;
  if (epoch > r.session_epoch()) {
    r.set_session_epoch(epoch);
    r.set_last_seq(seq);
    r.set_online(true);
    r.set_connected_since_ms(now_ms);
    return SeqVerdict::newer_session;
  }
  if (seq <= r.last_seq()) return SeqVerdict::duplicate;
  if (seq > r.last_seq() + 1) {
    missing = seq - r.last_seq() - 1;
    r.set_seq_gaps(r.seq_gaps() + missing);
    r.set_last_seq(seq);
    return SeqVerdict::gap;
  }
  r.set_last_seq(seq);
  return SeqVerdict::in_order;
}

}  // namespace flotilla::manager
