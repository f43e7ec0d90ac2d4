#include <doctest/doctest.h>

#include "flotilla/manager/presence.hpp"

using namespace flotilla;
using namespace flotilla::manager;

TEST_CASE("epoch rule: a stale Will after a session takeover is ignored") {
  v1::DeviceRecord r;
  CHECK(apply_birth(r, 100, 0, 1000) == BirthVerdict::accepted);
  CHECK(r.online());
  CHECK(r.connected_since_ms() == 1000);
  // The device reconnects (takeover): new session 101 is born before the old Will arrives.
  CHECK(apply_birth(r, 101, 0, 2000) == BirthVerdict::accepted);
  CHECK(apply_death(r, 100, 2001) == DeathVerdict::stale);
  CHECK(r.online());
  CHECK(r.session_epoch() == 101);
  // The current session's death takes the device offline; a repeat is a duplicate.
  CHECK(apply_death(r, 101, 3000) == DeathVerdict::offline);
  CHECK_FALSE(r.online());
  CHECK(r.disconnected_at_ms() == 3000);
  CHECK(apply_death(r, 101, 3001) == DeathVerdict::duplicate);
  // A birth older than the newest session is stale and changes nothing.
  CHECK(apply_birth(r, 100, 0, 4000) == BirthVerdict::stale);
  CHECK_FALSE(r.online());
  // Rebirth within the same session keeps it online.
  CHECK(apply_birth(r, 102, 0, 5000) == BirthVerdict::accepted);
  CHECK(apply_birth(r, 102, 7, 5001) == BirthVerdict::accepted);
  CHECK(r.connected_since_ms() == 5000);
  CHECK(r.last_seq() == 7);
}

TEST_CASE("death for a session whose birth was never seen still marks offline") {
  v1::DeviceRecord r;
  CHECK(apply_birth(r, 5, 0, 10) == BirthVerdict::accepted);
  CHECK(apply_death(r, 9, 20) == DeathVerdict::offline);
  CHECK_FALSE(r.online());
  CHECK(r.session_epoch() == 9);
}

TEST_CASE("sequence tracking: in order, gaps, duplicates, late and newer sessions") {
  v1::DeviceRecord r;
  std::uint64_t missing = 0;
  REQUIRE(apply_birth(r, 10, 0, 0) == BirthVerdict::accepted);
  CHECK(apply_seq(r, 10, 1, 0, missing) == SeqVerdict::in_order);
  CHECK(apply_seq(r, 10, 2, 0, missing) == SeqVerdict::in_order);
  CHECK(apply_seq(r, 10, 6, 0, missing) == SeqVerdict::gap);
  CHECK(missing == 3);
  CHECK(r.seq_gaps() == 3);
  CHECK(apply_seq(r, 10, 6, 0, missing) == SeqVerdict::duplicate);
  CHECK(apply_seq(r, 10, 4, 0, missing) == SeqVerdict::duplicate);
  CHECK(apply_seq(r, 9, 50, 0, missing) == SeqVerdict::late);
  CHECK(r.last_seq() == 6);
  CHECK(apply_seq(r, 11, 3, 77, missing) == SeqVerdict::newer_session);
  CHECK(r.session_epoch() == 11);
  CHECK(r.online());
  CHECK(r.connected_since_ms() == 77);
  CHECK(apply_seq(r, 11, 4, 0, missing) == SeqVerdict::in_order);
  CHECK(r.seq_gaps() == 3);
}
