#include <doctest/doctest.h>

#include "flotilla/manager/presence.hpp"

using namespace flotilla;
using namespace flotilla::manager;

TEST_CASE("epoch rule: a stale Will after a session takeover is ignored") {
  v1::DeviceRecord r;
  CHECK(apply_birth(r, 100, 1, 0, 1000).verdict == BirthVerdict::accepted);
  CHECK(r.online());
  CHECK(r.connected_since_ms() == 1000);
  // The device reconnects (takeover): new session 101 is born before the old Will arrives.
  CHECK(apply_birth(r, 101, 1, 0, 2000).verdict == BirthVerdict::accepted);
  CHECK(apply_death(r, 100, 2001) == DeathVerdict::stale);
  CHECK(r.online());
  CHECK(r.session_epoch() == 101);
  // The current session's death takes the device offline; a repeat is a duplicate.
  CHECK(apply_death(r, 101, 3000) == DeathVerdict::offline);
  CHECK_FALSE(r.online());
  CHECK(r.disconnected_at_ms() == 3000);
  CHECK(apply_death(r, 101, 3001) == DeathVerdict::duplicate);
  // A birth older than the newest session is stale and changes nothing.
  CHECK(apply_birth(r, 100, 1, 0, 4000).verdict == BirthVerdict::stale);
  CHECK_FALSE(r.online());
  // Rebirth within the same session keeps it online.
  CHECK(apply_birth(r, 102, 1, 0, 5000).verdict == BirthVerdict::accepted);
  CHECK(apply_birth(r, 102, 1, 0, 5001).verdict == BirthVerdict::accepted);
  CHECK(r.connected_since_ms() == 5000);
}

TEST_CASE("death for a session whose birth was never seen still marks offline") {
  v1::DeviceRecord r;
  CHECK(apply_birth(r, 5, 1, 0, 10).verdict == BirthVerdict::accepted);
  CHECK(apply_death(r, 9, 20) == DeathVerdict::offline);
  CHECK_FALSE(r.online());
  CHECK(r.session_epoch() == 9);
}

TEST_CASE("reading stream: in order, gaps, duplicates, late and newer sessions") {
  v1::DeviceRecord r;
  REQUIRE(apply_birth(r, 10, 77, 0, 0).verdict == BirthVerdict::accepted);
  CHECK(r.stream_id() == 77);
  auto c = apply_reading(r, 10, 1, 0);
  CHECK_FALSE(c.duplicate);
  CHECK(c.missing == 0);
  CHECK(apply_reading(r, 10, 2, 0).missing == 0);
  c = apply_reading(r, 10, 6, 0);
  CHECK(c.missing == 3);
  CHECK(r.seq_gaps() == 3);
  CHECK(apply_reading(r, 10, 6, 0).duplicate);
  CHECK(apply_reading(r, 10, 4, 0).duplicate);
  CHECK(r.readings() == 3);
  // Readings produced in an earlier session arrive from the outbox after a reconnect.
  c = apply_reading(r, 9, 7, 0);
  CHECK(c.late);
  CHECK_FALSE(c.duplicate);
  CHECK(r.last_seq() == 7);
  c = apply_reading(r, 11, 8, 55);
  CHECK(c.newer_session);
  CHECK(r.session_epoch() == 11);
  CHECK(r.online());
  CHECK(r.connected_since_ms() == 55);
  CHECK(r.seq_gaps() == 3);
  CHECK(r.readings() == 5);
}

TEST_CASE("birth: a new stream sets the starting point; a rebirth in a known stream never claims a loss") {
  v1::DeviceRecord r;
  apply_birth(r, 1, 500, 10, 0);
  CHECK(r.last_seq() == 10);  // a device new to the manager: its history before the birth is not owed
  CHECK(r.seq_gaps() == 0);
  apply_reading(r, 1, 11, 0);
  // Reconnect after a broker restart: the broker acknowledged up to 14, but 12..14 are still
  // being redelivered to the manager's session and arrive after the birth.
  auto b = apply_birth(r, 2, 500, 14, 0);
  CHECK_FALSE(b.stream_reset);
  CHECK(r.last_seq() == 11);
  for (std::uint64_t seq = 12; seq <= 16; ++seq) {
    auto c = apply_reading(r, seq <= 14 ? 1 : 2, seq, 0);
    CHECK_FALSE(c.duplicate);
    CHECK(c.missing == 0);
  }
  CHECK(r.seq_gaps() == 0);
  // A reinstalled device starts a new stream at 1: not duplicates, not gaps.
  b = apply_birth(r, 3, 900, 0, 0);
  CHECK(b.stream_reset);
  auto c = apply_reading(r, 3, 1, 0);
  CHECK_FALSE(c.duplicate);
  CHECK(c.missing == 0);
  CHECK(r.seq_gaps() == 0);
  CHECK(r.readings() == 7);
}

TEST_CASE("a device first seen through its readings keeps its position when the rebirth arrives") {
  v1::DeviceRecord r;
  // The first birth was missed: readings 1..3 arrive, the manager asks for a rebirth.
  for (std::uint64_t seq = 1; seq <= 3; ++seq) apply_reading(r, 7, seq, 0);
  // The rebirth's acknowledged position lags: reading 3 is still awaiting its PUBACK.
  auto b = apply_birth(r, 7, 321, 2, 0);
  CHECK_FALSE(b.stream_reset);
  CHECK(r.last_seq() == 3);
  auto c = apply_reading(r, 7, 4, 0);
  CHECK(c.missing == 0);
  CHECK(r.seq_gaps() == 0);
}
