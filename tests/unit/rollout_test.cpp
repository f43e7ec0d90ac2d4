// Rollout pacing, jitter, abort rules, retries, time parsing, time zones and maintenance windows.
// Every test runs on a manual clock: instants are Unix milliseconds chosen by the test.

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "flotilla/manager/rollout.hpp"
#include "flotilla/manager/schedule.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

constexpr std::int64_t kMinute = 60'000;
constexpr std::int64_t kHour = 60 * kMinute;
constexpr std::int64_t kDay = 24 * kHour;

// 2026-06-01T00:00:00Z: an arbitrary start for pacing simulations.
constexpr std::int64_t kT0 = 1'780'272'000'000;

std::int64_t utc_ms(std::int64_t y, unsigned m, unsigned d, int hh = 0, int mm = 0, int ss = 0) {
  return (days_from_civil(y, m, d) * 86'400 + hh * 3600 + mm * 60 + ss) * 1000;
}

std::int64_t local_minute(std::int64_t y, unsigned m, unsigned d, int hh = 0, int mm = 0) {
  return days_from_civil(y, m, d) * 1440 + hh * 60 + mm;
}

bool contains_text(const std::string& haystack, std::string_view needle) {
  return haystack.find(needle) != std::string::npos;
}

std::shared_ptr<const TimeZone> zone(std::string_view name) {
  auto z = ZoneDatabase::system().find(name);
  REQUIRE_MESSAGE(z.ok(), (z.ok() ? "" : z.error().message));
  return *z;
}

MaintenanceWindow window(std::string_view text) {
  auto w = MaintenanceWindow::parse(text);
  REQUIRE_MESSAGE(w.ok(), (w.ok() ? "" : w.error().message));
  return *w;
}

// A TZif file built by hand (RFC 8536 layout).
struct TzifType {
  std::int32_t offset;
  std::uint8_t dst;
  std::uint8_t abbr;
};

void put32(std::string& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}
void put64(std::string& out, std::uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out += static_cast<char>((v >> shift) & 0xff);
}

std::string tzif_header(char version, std::uint32_t leapcnt, std::uint32_t timecnt, std::uint32_t typecnt,
                        std::uint32_t charcnt) {
  std::string out = "TZif";
  out += version;
  out.append(15, '\0');
  put32(out, 0);  // isutcnt
  put32(out, 0);  // isstdcnt
  put32(out, leapcnt);
  put32(out, timecnt);
  put32(out, typecnt);
  put32(out, charcnt);
  return out;
}

std::string tzif_block(bool wide, const std::vector<std::int64_t>& times, const std::vector<std::uint8_t>& index,
                       const std::vector<TzifType>& types, const std::string& chars, std::uint32_t leapcnt) {
  std::string out;
  for (const auto t : times) {
    if (wide) {
      put64(out, static_cast<std::uint64_t>(t));
    } else {
      put32(out, static_cast<std::uint32_t>(static_cast<std::int32_t>(t)));
    }
  }
  for (const auto i : index) out += static_cast<char>(i);
  for (const auto& type : types) {
    put32(out, static_cast<std::uint32_t>(type.offset));
    out += static_cast<char>(type.dst);
    out += static_cast<char>(type.abbr);
  }
  out += chars;
  for (std::uint32_t i = 0; i < leapcnt; ++i) {
    if (wide) {
      put64(out, 78'796'800);
    } else {
      put32(out, 78'796'800);
    }
    put32(out, 1);
  }
  return out;
}

std::string make_tzif(char version, const std::vector<std::int64_t>& times, const std::vector<std::uint8_t>& index,
                      const std::vector<TzifType>& types, const std::string& chars, const std::string& footer,
                      std::uint32_t leapcnt = 0) {
  const auto timecnt = static_cast<std::uint32_t>(times.size());
  const auto typecnt = static_cast<std::uint32_t>(types.size());
  const auto charcnt = static_cast<std::uint32_t>(chars.size());
  std::string out = tzif_header(version, leapcnt, timecnt, typecnt, charcnt);
  out += tzif_block(false, times, index, types, chars, leapcnt);
  if (version == '\0') return out;
  out += tzif_header(version, leapcnt, timecnt, typecnt, charcnt);
  out += tzif_block(true, times, index, types, chars, leapcnt);
  out += '\n';
  out += footer;
  out += '\n';
  return out;
}

}  // namespace

// ---- rates and rollout configuration ----

TEST_CASE("rollout: rates parse into devices per minute and format back") {
  CHECK(parse_rate("100/min")->per_minute == doctest::Approx(100));
  CHECK(parse_rate("10/s")->per_minute == doctest::Approx(600));
  CHECK(parse_rate("5000/h")->per_minute == doctest::Approx(5000.0 / 60));
  CHECK(parse_rate(" 1.5/Min ")->per_minute == doctest::Approx(1.5));
  CHECK(parse_rate("1/d")->per_minute == doctest::Approx(1.0 / 1440));
  CHECK(parse_rate("unlimited")->unlimited());
  CHECK(parse_rate("UNLIMITED")->unlimited());

  for (const auto* text : {"10/s", "100/min", "5000/h", "1/d", "0.123/min", "unlimited", "7/h", "90/s"}) {
    auto rate = parse_rate(text);
    REQUIRE(rate.ok());
    CHECK(format_rate(*rate) == text);
    CHECK(parse_rate(format_rate(*rate))->per_minute == doctest::Approx(rate->per_minute));
  }
  CHECK(format_rate(parse_rate("1.5/min").value()) == "90/h");  // the shortest exact form

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"0/min", "positive"}, Bad{"-5/min", "positive"}, Bad{"abc", "COUNT/UNIT"}, Bad{"100", "COUNT/UNIT"},
        Bad{"100/week", "unknown unit"}, Bad{"1e5/s", "not a number"}, Bad{"inf/s", "not a number"},
        Bad{"nan/min", "not a number"}, Bad{"/min", "not a number"}, Bad{"1.2.3/min", "not a number"},
        Bad{"1000001/s", "maximum"}, Bad{"99999999999999999999999999999/s", "maximum"}, Bad{"0.5/d", "minimum"}}) {
    auto rate = parse_rate(bad.text);
    REQUIRE_FALSE(rate.ok());
    CHECK(rate.error().code == Errc::invalid_argument);
    CHECK_MESSAGE(contains_text(rate.error().message, bad.says), bad.text, " -> ", rate.error().message);
    CHECK(contains_text(rate.error().message, bad.text));
  }
}

TEST_CASE("rollout: --rate and --exponential text parse, validate and format back") {
  auto constant = parse_constant_rollout("100/min");
  REQUIRE(constant.ok());
  CHECK(constant->kind == RolloutKind::constant);
  CHECK(format_rollout(*constant) == "100/min");

  auto exp = parse_exponential_rollout("base=10/min,factor=2,after=notified:50,max=1000/min");
  REQUIRE(exp.ok());
  CHECK(exp->kind == RolloutKind::exponential);
  CHECK(exp->rate.per_minute == doctest::Approx(10));
  CHECK(exp->factor == doctest::Approx(2));
  CHECK(exp->increment_after == 50);
  CHECK(exp->basis == StepBasis::notified);
  CHECK(exp->max_rate.per_minute == doctest::Approx(1000));
  CHECK(format_rollout(*exp) == "base=10/min,factor=2,after=notified:50,max=1000/min");
  CHECK(parse_exponential_rollout(format_rollout(*exp)).value() == *exp);

  auto defaults = parse_exponential_rollout(" after = succeeded:20 , base = 1/s ");
  REQUIRE(defaults.ok());
  CHECK(defaults->factor == doctest::Approx(2));
  CHECK(defaults->basis == StepBasis::succeeded);
  CHECK(defaults->max_rate.unlimited());
  CHECK(format_rollout(*defaults) == "base=1/s,factor=2,after=succeeded:20");
  CHECK(parse_exponential_rollout("base=10/min,after=50")->basis == StepBasis::notified);

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"base=10/min", "'after' is missing"}, Bad{"after=5", "'base' is missing"},
        Bad{"base=10/min,after=5,speed=3", "unknown key 'speed'"},
        Bad{"base=10/min,base=20/min,after=5", "given twice"}, Bad{"base=10/min,after=5,factor=1", "more than 1"},
        Bad{"base=10/min,after=5,factor=11", "at most 10"}, Bad{"base=10/min,after=0", "device count"},
        Bad{"base=10/min,after=failed:5", "neither"}, Bad{"base=10/min,after=5,max=5/min", "below the base"},
        Bad{"base=unlimited,after=5", "not unlimited"}, Bad{"base=0/min,after=5", "positive"},
        Bad{"base=10/min,,after=5", "empty item"}, Bad{"base", "KEY=VALUE"}}) {
    auto r = parse_exponential_rollout(bad.text);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(contains_text(r.error().message, bad.says), bad.text, " -> ", r.error().message);
  }
}

TEST_CASE("rollout: configurations round-trip through the persisted protobuf form") {
  auto exp = parse_exponential_rollout("base=10/min,factor=1.5,after=succeeded:7,max=2/s").value();
  exp.jitter = std::chrono::seconds(30);
  const auto spec = to_proto(exp);
  CHECK(spec.jitter_ms() == 30'000);
  CHECK(spec.increment_on_succeeded());
  CHECK(from_proto(spec) == exp);
  CHECK(validate(spec).ok());

  auto constant = parse_constant_rollout("unlimited").value();
  CHECK(from_proto(to_proto(constant)) == constant);
  CHECK(validate(to_proto(constant)).ok());

  v1::RolloutSpec bad;
  bad.set_rate_per_minute(std::nan(""));
  CHECK_FALSE(validate(bad).ok());
  bad.set_rate_per_minute(-1);
  CHECK_FALSE(validate(bad).ok());
  bad.set_rate_per_minute(10);
  bad.set_factor(2);  // exponential without increment_after
  CHECK(contains_text(validate(bad).error().message, "after"));
  bad.set_increment_after(5);
  CHECK(validate(bad).ok());
  bad.set_max_rate_per_minute(5);
  CHECK_FALSE(validate(bad).ok());
  v1::RolloutSpec jitter;
  jitter.set_jitter_ms(25 * 3'600'000);
  CHECK(contains_text(validate(jitter).error().message, "jitter"));
}

// ---- pacing ----

TEST_CASE("rollout: a constant 100/min notifies exactly 100 devices per simulated minute") {
  const auto config = parse_constant_rollout("100/min").value();
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  std::mt19937_64 rng(20260601);
  std::uniform_int_distribution<std::int64_t> step(1, 500);
  std::array<std::uint64_t, 10> per_minute{};
  std::uint64_t notified = 0;
  std::int64_t now = kT0;
  for (; now < kT0 + 10 * kMinute; now += step(rng)) {
    const auto n = pacer.allowance(now, notified, 0);
    pacer.consume(n, now);
    notified += n;
    per_minute[static_cast<std::size_t>((now - kT0) / kMinute)] += n;
    // The first device at once, then floor(R * elapsed) more.
    const auto expected = 1 + static_cast<std::uint64_t>((now - kT0) * 100 / kMinute);
    if (notified != expected) {
      FAIL_CHECK("at +", now - kT0, " ms: ", notified, " notified, expected ", expected);
      break;
    }
  }
  for (std::size_t m = 0; m < per_minute.size(); ++m) CHECK_MESSAGE(per_minute[m] == 100, "minute ", m);
}

TEST_CASE("rollout: an engine that sleeps until next_allowed_ms gets one device per 600 ms at 100/min") {
  const auto config = parse_constant_rollout("100/min").value();
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  std::uint64_t notified = 0;
  std::int64_t now = kT0;
  int wakes = 0;
  while (now <= kT0 + 10 * kMinute) {
    const auto n = pacer.allowance(now, notified, 0);
    REQUIRE(n == 1);  // the timer never fires early or lets tokens pile up
    pacer.consume(n, now);
    ++notified;
    ++wakes;
    const auto next = pacer.next_allowed_ms(now, notified, 0);
    REQUIRE(next > now);
    CHECK(next - kT0 == static_cast<std::int64_t>(notified) * 600);
    now = next;
  }
  CHECK(notified == 1001);
  CHECK(wakes == 1001);
}

TEST_CASE("rollout: exponential steps double the rate every 50 notified devices up to the maximum") {
  const auto config = parse_exponential_rollout("base=10/min,factor=2,after=notified:50,max=1000/min").value();
  const std::array<double, 10> expected_rate{10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000};
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  for (std::size_t k = 0; k < expected_rate.size(); ++k) {
    CHECK(pacer.rate_for(50 * k, 0) == doctest::Approx(expected_rate[k]));
    CHECK(pacer.rate_for(50 * k + 49, 0) == doctest::Approx(expected_rate[k]));
  }
  CHECK(pacer.rate_for(500, 0) == doctest::Approx(1000));
  CHECK(pacer.rate_for(0, 400) == doctest::Approx(10));  // counts notified, not succeeded

  std::mt19937_64 rng(50);
  std::uniform_int_distribution<std::int64_t> step(1, 100);
  std::vector<std::int64_t> at;  // when each device was notified
  std::map<std::uint32_t, double> rate_at_step;
  for (std::int64_t now = kT0; at.size() < 500 && now < kT0 + 2 * kHour; now += step(rng)) {
    const auto n = pacer.allowance(now, at.size(), 0);
    rate_at_step[pacer.state().step] = pacer.state().rate_per_minute;
    pacer.consume(n, now);
    at.insert(at.end(), n, now);
  }
  REQUIRE(at.size() >= 500);
  for (std::size_t k = 0; k < expected_rate.size(); ++k) {
    const auto step_no = static_cast<std::uint32_t>(k);
    REQUIRE(rate_at_step.count(step_no) == 1);
    CHECK(rate_at_step[step_no] == doctest::Approx(expected_rate[k]));
    // 49 intervals between the first and the last device of the step at the step's rate, give
    // or take one token and one clock increment.
    const double span = static_cast<double>(at[50 * k + 49] - at[50 * k]);
    const double token_ms = 60'000.0 / expected_rate[k];
    CHECK_MESSAGE(std::fabs(span - 49 * token_ms) <= token_ms + 100, "step ", k, ": span ", span, " ms");
  }
  // Step 0 started with the first device at once.
  CHECK(at[0] == kT0);
  CHECK(at[1] - kT0 >= 6000);
  CHECK(at[1] - kT0 < 6100);
}

TEST_CASE("rollout: exponential steps on succeeded count only successes") {
  const auto config = parse_exponential_rollout("base=60/min,factor=3,after=succeeded:10").value();
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  CHECK(pacer.allowance(kT0, 1000, 9) == 1);
  CHECK(pacer.state().rate_per_minute == doctest::Approx(60));
  pacer.consume(1, kT0);
  CHECK(pacer.allowance(kT0 + 1000, 1001, 10) == 1);
  CHECK(pacer.state().step == 1);
  CHECK(pacer.state().rate_per_minute == doctest::Approx(180));
  CHECK(pacer.rate_for(0, 1'000'000) == doctest::Approx(kMaxRatePerMinute));  // no max: capped overall
}

TEST_CASE("rollout: a pause outside the window accumulates nothing and idle time no large burst") {
  const auto config = parse_constant_rollout("60/min").value();
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  REQUIRE(pacer.allowance(kT0, 0, 0) == 1);
  pacer.consume(1, kT0);
  Pacer idle = pacer;  // the same job, but nobody tells it about the pause

  // The window closes; the engine skips the job on every tick for an hour.
  for (std::int64_t now = kT0 + 10; now <= kT0 + kHour; now += 10'000) pacer.pause(now);
  const std::int64_t reopen = kT0 + kHour;
  pacer.pause(reopen);  // dispatching resumes at the opening
  CHECK(pacer.allowance(reopen, 1, 0) == 0);
  CHECK(pacer.next_allowed_ms(reopen, 1, 0) == reopen + 1000);
  std::uint64_t notified = 1;
  for (std::int64_t now = reopen; now < reopen + kMinute; now += 250) {
    const auto n = pacer.allowance(now, notified, 0);
    pacer.consume(n, now);
    notified += n;
  }
  CHECK(notified == 1 + 59);  // 1 s, 2 s, ... 59 s after the reopening
  const auto refilled = pacer.state().refilled_at_ms;
  pacer.pause(reopen);  // a late call for an earlier instant does not pay that time again
  CHECK(pacer.state().refilled_at_ms == refilled);

  // Without pause() the hour is not paid out either: at most one second's worth at once.
  CHECK(idle.allowance(reopen, 1, 0) == 1);
  const auto fast = parse_constant_rollout("100/s").value();
  Pacer burst(fast, Pacer::initial_state(fast, kT0));
  CHECK(burst.allowance(kT0 + kHour, 0, 0) == 100);
}

TEST_CASE("rollout: pacing inside a daily window over three simulated days") {
  const auto config = parse_constant_rollout("60/min").value();
  const std::vector<MaintenanceWindow> windows{window("0 2 * * * 1h")};
  const std::int64_t start = utc_ms(2026, 6, 1);
  Pacer pacer(config, Pacer::initial_state(config, start));
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<std::int64_t> step(1, 500);
  std::map<std::int64_t, std::uint64_t> per_day;
  std::uint64_t notified = 0;
  std::int64_t now = start;
  while (now < start + 3 * kDay) {
    if (!in_any_window(windows, now)) {
      pacer.pause(now);
      now = next_open(windows, now);
      pacer.pause(now);  // dispatching resumes at the opening
      continue;
    }
    const auto n = pacer.allowance(now, notified, 0);
    pacer.consume(n, now);
    notified += n;
    per_day[(now - start) / kDay] += n;
    // Nothing is paid out for the closed hours: at most one device in the first second.
    if ((now - start) % kDay < 2 * kHour + 1000) CHECK(per_day[(now - start) / kDay] <= 1);
    now += step(rng);
  }
  REQUIRE(per_day.size() == 3);
  for (const auto& entry : per_day) {
    CHECK_MESSAGE(entry.second >= 3599, "day ", entry.first, ": ", entry.second);
    CHECK_MESSAGE(entry.second <= 3600, "day ", entry.first, ": ", entry.second);
  }
}

TEST_CASE("rollout: unlimited lets everything go, and the protobuf adapters match the Pacer") {
  const auto unlimited = parse_constant_rollout("unlimited").value();
  Pacer pacer(unlimited, Pacer::initial_state(unlimited, kT0));
  CHECK(pacer.allowance(kT0, 0, 0) == std::numeric_limits<std::uint64_t>::max());
  pacer.consume(1'000'000, kT0);
  CHECK(pacer.allowance(kT0, 1'000'000, 0) == std::numeric_limits<std::uint64_t>::max());
  CHECK(pacer.next_allowed_ms(kT0 + 5, 0, 0) == kT0 + 5);

  const auto spec = to_proto(parse_exponential_rollout("base=30/min,after=5").value());
  auto state = initial_pacer(spec, kT0);
  Pacer reference(from_proto(spec), from_proto(state));
  std::uint64_t notified = 0;
  for (std::int64_t now = kT0; now < kT0 + 5 * kMinute; now += 700) {
    const auto a = pacer_allowance(spec, state, now, notified, 0);
    const auto b = reference.allowance(now, notified, 0);
    REQUIRE(a == b);
    pacer_consume(state, a);
    reference.consume(b, now);
    notified += a;
    CHECK(from_proto(state) == reference.state());
    CHECK(pacer_next_ms(spec, state, now, notified, 0) == reference.next_allowed_ms(now, notified, 0));
  }
  CHECK(notified > 5);
  pacer_pause(spec, state, kT0 + kHour);
  CHECK(state.refilled_at_ms() == kT0 + kHour);
}

TEST_CASE("rollout: a clock that jumps backwards neither pays out nor stalls") {
  const auto config = parse_constant_rollout("60/min").value();
  Pacer pacer(config, Pacer::initial_state(config, kT0));
  pacer.consume(pacer.allowance(kT0, 0, 0), kT0);
  CHECK(pacer.allowance(kT0 - kHour, 1, 0) == 0);
  CHECK(pacer.next_allowed_ms(kT0 - kHour, 1, 0) == kT0 - kHour + 1000);
}

// ---- jitter ----

TEST_CASE("rollout: per-device jitter is stable, bounded and spread") {
  const std::int64_t jitter = 30'000;
  // Pinned: a different value would move every queued device of every job after an upgrade.
  CHECK(device_jitter_ms("job-1", "dev-0001", jitter) == device_jitter_ms("job-1", "dev-0001", jitter));
  CHECK(device_jitter_ms("job-1", "dev-0001", jitter) == 29'494);
  CHECK(device_jitter_ms("job-1", "dev-0001", 0) == 0);
  CHECK(device_jitter_ms("job-1", "dev-0001", -5) == 0);
  CHECK(device_jitter_ms("job-1", "dev-0001", 1) == 0);
  // The separator keeps ("ab", "c") and ("a", "bc") apart.
  CHECK(device_jitter_ms("ab", "c", 1'000'000'007) != device_jitter_ms("a", "bc", 1'000'000'007));

  std::array<int, 10> buckets{};
  int moved = 0;
  for (int i = 0; i < 10'000; ++i) {
    const auto device = fmt::format("dev-{:05}", i);
    const auto d = device_jitter_ms("job-1", device, jitter);
    REQUIRE(d >= 0);
    REQUIRE(d < jitter);
    ++buckets[static_cast<std::size_t>(d * 10 / jitter)];
    if (device_jitter_ms("job-2", device, jitter) != d) ++moved;
  }
  for (const auto b : buckets) {
    CHECK(b > 850);
    CHECK(b < 1150);
  }
  CHECK(moved > 9'900);  // another job spreads the same devices differently
}

// ---- abort rules and retries ----

TEST_CASE("rollout: abort rules parse, format back and report errors by column") {
  auto one = parse_abort_rule("FAILED>5%@50");
  REQUIRE(one.ok());
  CHECK(one->state == v1::EXECUTION_FAILED);
  CHECK(one->threshold_percent == doctest::Approx(5));
  CHECK(one->min_executions == 50);
  CHECK(format_abort_rule(*one) == "FAILED>5%@50");

  auto many = parse_abort_rules("failed>5%@50, Timed_Out > 12.5 % @ 20,REJECTED>1%@1");
  REQUIRE(many.ok());
  REQUIRE(many->size() == 3);
  CHECK((*many)[1].state == v1::EXECUTION_TIMED_OUT);
  CHECK((*many)[1].threshold_percent == doctest::Approx(12.5));
  CHECK((*many)[2].state == v1::EXECUTION_REJECTED);
  CHECK(format_abort_rules(*many) == "FAILED>5%@50,TIMED_OUT>12.5%@20,REJECTED>1%@1");
  CHECK(parse_abort_rules(format_abort_rules(*many)).value() == *many);
  CHECK(from_proto(to_proto((*many)[1])) == (*many)[1]);

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"FAILED>5@50", "column 9: expected '%'"}, Bad{"FAILD>5%@50", "column 1: unknown state"},
        Bad{"SUCCEEDED>5%@5", "column 1: unknown state 'SUCCEEDED'"}, Bad{"FAILED 5%@50", "column 8: expected '>'"},
        Bad{"FAILED>=5%@50", "column 8: '>='"}, Bad{"FAILED>%@50", "column 8: expected a threshold"},
        Bad{"FAILED>0%@50", "more than 0%"}, Bad{"FAILED>100.5%@50", "at most 100%"},
        Bad{"FAILED>1.2.3%@50", "not a number"}, Bad{"FAILED>5%", "column 10: expected '@'"},
        Bad{"FAILED>5%@", "column 11: expected the minimum"}, Bad{"FAILED>5%@0", "at least 1"},
        Bad{"FAILED>5%@99999999999", "too large"}, Bad{"FAILED>5%@50x", "column 13: unexpected 'x'"},
        Bad{"FAILED>5%@50,", "column 14: expected a rule"}, Bad{"", "column 1"},
        Bad{"FAILED>5%@50,,REJECTED>1%@1", "column 14"}}) {
    auto r = parse_abort_rules(bad.text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK_MESSAGE(contains_text(r.error().message, bad.says), bad.text, " -> ", r.error().message);
  }

  AbortRule invalid;
  invalid.state = v1::EXECUTION_SUCCEEDED;
  invalid.threshold_percent = 5;
  CHECK_FALSE(validate(invalid).ok());
  invalid.state = v1::EXECUTION_FAILED;
  CHECK(validate(invalid).ok());
  invalid.min_executions = 0;
  CHECK_FALSE(validate(invalid).ok());
}

TEST_CASE("rollout: an abort rule fires on 30% injected failures once the minimum has finished") {
  const auto rules = parse_abort_rules("TIMED_OUT>50%@10,FAILED>5%@50").value();
  std::mt19937_64 rng(30);
  std::bernoulli_distribution fails(0.30);
  AbortCounts counts;
  std::optional<AbortVerdict> fired;
  while (counts.finished < 1000 && !fired) {
    ++counts.finished;
    if (fails(rng)) ++counts.failed;
    fired = first_fired(rules, counts);
    if (counts.finished < 50) REQUIRE_FALSE(fired.has_value());
  }
  REQUIRE(fired.has_value());
  CHECK(counts.finished == 50);  // 30% of 50 is far above 5%: it fires at the minimum
  CHECK(counts.failed * 100 > 5 * counts.finished);
  CHECK(fired->rule == rules[1]);
  CHECK(fired->reason ==
        fmt::format("FAILED {:.1f}% of 50 executions > 5%", static_cast<double>(counts.failed) * 100.0 / 50.0));
  CHECK(evaluate_abort(rules, counts) == fired->reason);

  CHECK(evaluate_abort(rules, AbortCounts{31, 0, 0, 100}) == "FAILED 31.0% of 100 executions > 5%");
  // At the threshold it does not fire; the first rule in order wins.
  CHECK_FALSE(evaluate_abort(rules, AbortCounts{5, 0, 0, 100}).has_value());
  CHECK(evaluate_abort(rules, AbortCounts{90, 6, 0, 10}) == "TIMED_OUT 60.0% of 10 executions > 50%");
  CHECK_FALSE(evaluate_abort(rules, AbortCounts{0, 0, 0, 0}).has_value());
  CHECK_FALSE(evaluate_abort({}, AbortCounts{100, 0, 0, 100}).has_value());
  const auto rejected = parse_abort_rules("REJECTED>10%@20").value();
  CHECK_FALSE(evaluate_abort(rejected, AbortCounts{19, 0, 19, 19}).has_value());  // below the minimum
  CHECK(evaluate_abort(rejected, AbortCounts{0, 0, 3, 20}) == "REJECTED 15.0% of 20 executions > 10%");
}

TEST_CASE("rollout: retries are allowed for FAILED and TIMED_OUT only, up to max retries") {
  CHECK(retry_allowed(v1::EXECUTION_FAILED, 1, 2));
  CHECK(retry_allowed(v1::EXECUTION_FAILED, 2, 2));
  CHECK_FALSE(retry_allowed(v1::EXECUTION_FAILED, 3, 2));
  CHECK(retry_allowed(v1::EXECUTION_TIMED_OUT, 1, 1));
  CHECK_FALSE(retry_allowed(v1::EXECUTION_TIMED_OUT, 2, 1));
  CHECK_FALSE(retry_allowed(v1::EXECUTION_FAILED, 1, 0));
  for (const auto state : {v1::EXECUTION_REJECTED, v1::EXECUTION_CANCELED, v1::EXECUTION_REMOVED,
                           v1::EXECUTION_SUCCEEDED, v1::EXECUTION_IN_PROGRESS}) {
    CHECK_FALSE(retry_allowed(state, 1, 10));
  }
}

// ---- durations, times, calendar ----

TEST_CASE("schedule: civil dates convert both ways") {
  CHECK(days_from_civil(1970, 1, 1) == 0);
  CHECK(days_from_civil(2000, 3, 1) == 11'017);
  CHECK(days_from_civil(2026, 11, 21) == 20'778);
  CHECK(days_from_civil(1969, 12, 31) == -1);
  CHECK(civil_from_days(0).weekday == 4);                            // Thursday
  CHECK(civil_from_days(days_from_civil(2000, 3, 1)).weekday == 3);  // Wednesday
  CHECK(civil_from_days(days_from_civil(2026, 11, 21)).weekday == 6);
  CHECK(civil_from_days(-1).weekday == 3);
  for (std::int64_t d = days_from_civil(1890, 1, 1); d < days_from_civil(2110, 1, 1); d += 13) {
    const auto c = civil_from_days(d);
    REQUIRE(days_from_civil(c.year, c.month, c.day) == d);
  }
}

TEST_CASE("schedule: durations reuse config::parse_duration and allow compound forms") {
  using std::chrono::milliseconds;
  CHECK(parse_compound_duration("10m").value() == milliseconds(10 * kMinute));
  CHECK(parse_compound_duration("1h30m").value() == milliseconds(90 * kMinute));
  CHECK(parse_compound_duration("2d").value() == milliseconds(2 * kDay));
  CHECK(parse_compound_duration("90").value() == milliseconds(90'000));
  CHECK(parse_compound_duration("1d2h3m4s5ms").value() == milliseconds(kDay + 2 * kHour + 3 * kMinute + 4005));
  for (const auto* bad : {"", "1h1h", "30m1h", "5x", "-5m", "h", "1h 30m", "99999999999999999999d"}) {
    CHECK_MESSAGE(!parse_compound_duration(bad).ok(), bad);
  }
  CHECK(format_compound_duration(milliseconds(90 * kMinute)) == "1h30m");
  CHECK(format_compound_duration(milliseconds(2 * kDay)) == "2d");
  CHECK(format_compound_duration(milliseconds(0)) == "0s");
  CHECK(format_compound_duration(milliseconds(1500)) == "1s500ms");
}

TEST_CASE("schedule: --start/--end accept now, +durations and RFC 3339 with offsets") {
  const std::int64_t now = kT0 + 123;
  CHECK(parse_time("now", now).value() == now);
  CHECK(parse_time("+30m", now).value() == now + 30 * kMinute);
  CHECK(parse_time("+2h", now).value() == now + 2 * kHour);
  CHECK(parse_time("+1h30m", now).value() == now + 90 * kMinute);
  CHECK(parse_time("2026-11-21T02:00:00Z", now).value() == 1'795'226'400'000);
  CHECK(parse_time("2026-11-21T03:00:00+01:00", now).value() == 1'795'226'400'000);
  CHECK(parse_time("2026-11-20t21:00:00-05:00", now).value() == 1'795'226'400'000);
  CHECK(parse_time("2026-11-21 02:00:00.25z", now).value() == 1'795'226'400'250);
  CHECK(parse_time("2026-11-21T02:00:00.123456789Z", now).value() == 1'795'226'400'123);
  CHECK(parse_time("2028-02-29T00:00:00Z", now).value() == utc_ms(2028, 2, 29));
  CHECK(format_time(1'795'226'400'000) == "2026-11-21T02:00:00Z");
  CHECK(format_time(1'795'226'400'250) == "2026-11-21T02:00:00.250Z");
  CHECK(parse_time(format_time(now), now).value() == now);

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"2026-02-29T00:00:00Z", "day out of range"}, Bad{"2026-13-01T00:00:00Z", "month"},
        Bad{"2026-11-21T24:00:00Z", "hour"}, Bad{"2026-11-21T02:60:00Z", "minute"}, Bad{"2026-11-21T02:00:60Z", "leap"},
        Bad{"2026-11-21T02:00:00", "missing time zone"}, Bad{"2026-11-21T02:00:00+1:00", "offset"},
        Bad{"2026-11-21", "'T'"}, Bad{"yesterday", "RFC 3339"}, Bad{"+", "duration"}, Bad{"+-5m", "duration"},
        Bad{"1969-12-31T23:59:59Z", "1970"}, Bad{"2026-11-21T02:00:00Zjunk", "unexpected"}}) {
    auto t = parse_time(bad.text, now);
    REQUIRE_FALSE(t.ok());
    CHECK_MESSAGE(contains_text(t.error().message, bad.says), bad.text, " -> ", t.error().message);
  }
}

// ---- time zones ----

TEST_CASE("schedule: TZif files on this host give the known offsets and transition instants") {
  struct Probe {
    const char* zone;
    std::int64_t at_s;
    std::int32_t offset;
    bool dst;
    const char* abbr;
  };
  const std::int64_t berlin_spring = 1'774'746'000;       // 2026-03-29T01:00:00Z
  const std::int64_t berlin_fall = 1'792'890'000;         // 2026-10-25T01:00:00Z
  const std::int64_t ny_spring = 1'772'953'200;           // 2026-03-08T07:00:00Z
  const std::int64_t ny_fall = 1'793'512'800;             // 2026-11-01T06:00:00Z
  const std::int64_t lhi_end = 1'775'314'800;             // 2026-04-04T15:00:00Z
  const std::int64_t lhi_start = 1'791'041'400;           // 2026-10-03T15:30:00Z
  const std::int64_t berlin_2100_spring = 4'109'878'800;  // 2100-03-28T01:00:00Z, from the footer
  const std::int64_t berlin_2100_fall = 4'128'627'600;    // 2100-10-31T01:00:00Z
  const std::int64_t jan = utc_ms(2026, 1, 15, 12) / 1000;
  const std::int64_t jul = utc_ms(2026, 7, 15, 12) / 1000;
  for (const auto& p : {
           Probe{"Europe/Berlin", jan, 3600, false, "CET"},
           Probe{"Europe/Berlin", jul, 7200, true, "CEST"},
           Probe{"Europe/Berlin", berlin_spring - 1, 3600, false, "CET"},
           Probe{"Europe/Berlin", berlin_spring, 7200, true, "CEST"},
           Probe{"Europe/Berlin", berlin_fall - 1, 7200, true, "CEST"},
           Probe{"Europe/Berlin", berlin_fall, 3600, false, "CET"},
           Probe{"Europe/Berlin", berlin_2100_spring - 1, 3600, false, "CET"},
           Probe{"Europe/Berlin", berlin_2100_spring, 7200, true, "CEST"},
           Probe{"Europe/Berlin", berlin_2100_fall - 1, 7200, true, "CEST"},
           Probe{"Europe/Berlin", berlin_2100_fall, 3600, false, "CET"},
           Probe{"Europe/Berlin", utc_ms(1890, 1, 1) / 1000, 3208, false, "LMT"},  // before the first transition
           Probe{"America/New_York", jan, -18'000, false, "EST"},
           Probe{"America/New_York", jul, -14'400, true, "EDT"},
           Probe{"America/New_York", ny_spring - 1, -18'000, false, "EST"},
           Probe{"America/New_York", ny_spring, -14'400, true, "EDT"},
           Probe{"America/New_York", ny_fall - 1, -14'400, true, "EDT"},
           Probe{"America/New_York", ny_fall, -18'000, false, "EST"},
           Probe{"Asia/Kolkata", jul, 19'800, false, "IST"},
           Probe{"Asia/Kathmandu", jan, 20'700, false, "+0545"},
           Probe{"Australia/Lord_Howe", lhi_end - 1, 39'600, true, "+11"},
           Probe{"Australia/Lord_Howe", lhi_end, 37'800, false, "+1030"},
           Probe{"Australia/Lord_Howe", lhi_start - 1, 37'800, false, "+1030"},
           Probe{"Australia/Lord_Howe", lhi_start, 39'600, true, "+11"},
           Probe{"Europe/Dublin", jul, 3600, false, "IST"},  // Irish "negative DST": winter is the DST
           Probe{"Europe/Dublin", jan, 0, true, "GMT"},
           Probe{"America/Nuuk", jan, -7200, false, "-02"},
           Probe{"America/Nuuk", berlin_spring, -3600, true, "-01"},
           Probe{"America/Nuuk", berlin_spring - 1, -7200, false, "-02"},
           Probe{"America/Sao_Paulo", jan, -10'800, false, "-03"},
           Probe{"Pacific/Apia", jan, 46'800, false, "+13"},
           Probe{"UTC", jul, 0, false, "UTC"},
           Probe{"Etc/UTC", jul, 0, false, "UTC"},
       }) {
    const auto z = zone(p.zone);
    const auto got = z->at(p.at_s);
    CHECK_MESSAGE(got.utc_offset_s == p.offset, p.zone, " at ", format_time(p.at_s * 1000));
    CHECK_MESSAGE(got.is_dst == p.dst, p.zone, " at ", format_time(p.at_s * 1000));
    CHECK_MESSAGE(got.abbreviation == p.abbr, p.zone, " at ", format_time(p.at_s * 1000));
    CHECK(z->offset_at(p.at_s) == p.offset);
  }
  CHECK(zone("Europe/Berlin")->posix_rule() == "CET-1CEST,M3.5.0,M10.5.0/3");
  CHECK(zone("America/Nuuk")->posix_rule() == "<-02>2<-01>,M3.5.0/-1,M10.5.0/0");
}

TEST_CASE("schedule: each zone's footer rule agrees with its transition table") {
  // Transition tables run to 2037 in "fat" files; the footer rule covers the years after. Where
  // both exist they must agree: the same offset every day and the same transition instants (the
  // rule is evaluated on its own here).
  auto transition = [](const TimeZone& z, std::int64_t lo, std::int64_t hi) {
    const auto before = z.offset_at(lo);
    while (hi - lo > 1) {
      const std::int64_t mid = lo + (hi - lo) / 2;
      (z.offset_at(mid) == before ? lo : hi) = mid;
    }
    return hi;
  };
  for (const auto* name : {"Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Europe/Dublin", "America/Nuuk",
                           "Australia/Sydney", "America/Santiago", "Pacific/Chatham"}) {
    const auto z = zone(name);
    REQUIRE_FALSE(z->posix_rule().empty());
    auto rule = TimeZone::from_posix(z->posix_rule());
    REQUIRE_MESSAGE(rule.ok(), name, ": ", (rule.ok() ? "" : rule.error().message));
    int transitions = 0;
    int mismatches = 0;
    for (std::int64_t t = utc_ms(2027, 1, 1) / 1000; t < utc_ms(2037, 1, 1) / 1000; t += 86'400) {
      const auto next = t + 86'400;
      bool same = z->offset_at(t) == rule->offset_at(t);
      if (z->offset_at(t) != z->offset_at(next) || rule->offset_at(t) != rule->offset_at(next)) {
        ++transitions;
        same = same && transition(*z, t, next) == transition(*rule, t, next);
      }
      if (!same && ++mismatches < 3) FAIL_CHECK(name, ": table and rule differ on ", format_time(t * 1000));
    }
    CHECK_MESSAGE(mismatches == 0, name);
    CHECK_MESSAGE(transitions == 20, name);  // two a year
  }
}

TEST_CASE("schedule: POSIX TZ rules, including the RFC 8536 extensions") {
  auto berlin = TimeZone::from_posix("CET-1CEST,M3.5.0,M10.5.0/3").value();
  CHECK(berlin.offset_at(1'774'746'000 - 1) == 3600);
  CHECK(berlin.offset_at(1'774'746'000) == 7200);
  CHECK(berlin.at(1'774'746'000).abbreviation == "CEST");
  auto fixed = TimeZone::from_posix("<+0530>-5:30").value();
  CHECK(fixed.offset_at(0) == 19'800);
  CHECK(fixed.at(0).abbreviation == "+0530");
  // Daylight time all year: the start on 1 January 00:00 and the end after 31 December 24:00.
  auto permanent = TimeZone::from_posix("EST5EDT4,0/0,J365/25").value();
  for (const auto t : {utc_ms(2026, 1, 1, 3) / 1000, utc_ms(2026, 7, 1) / 1000, utc_ms(2026, 12, 31, 23) / 1000}) {
    CHECK(permanent.offset_at(t) == -14'400);
  }
  // A DST name without rules: the POSIX default (US rules).
  auto us_default = TimeZone::from_posix("EST5EDT").value();
  CHECK(us_default.offset_at(1'772'953'200) == -14'400);
  CHECK(us_default.offset_at(1'772'953'200 - 1) == -18'000);
  // Julian days: J60 is 1 March in every year.
  auto julian = TimeZone::from_posix("AAA0BBB,J60/0,J300/0").value();
  CHECK(julian.offset_at(utc_ms(2028, 3, 1) / 1000) == 3600);
  CHECK(julian.offset_at(utc_ms(2028, 2, 29, 23) / 1000) == 0);

  for (const auto* bad : {"", "C", "CET", "CET-1CEST,M3.5.0", "CET-1CEST,M13.5.0,M10.5.0", "CET-1CEST,M3.6.0,M10.5.0",
                          "CET-1CEST,M3.5.7,M10.5.0", "<+05", "CET-1CEST,M3.5.0/168,M10.5.0", "CET-25",
                          "CET-1CEST,J0,J100", "CET-1CEST,366,100", "CET-1 junk"}) {
    auto r = TimeZone::from_posix(bad);
    CHECK_MESSAGE(!r.ok(), "'", bad, "'");
    if (!r.ok()) CHECK(r.error().code == Errc::parse_error);
  }
}

TEST_CASE("schedule: hand-made TZif files: versions, slim files, and damage") {
  const std::vector<TzifType> types{{3600, 0, 0}, {7200, 1, 4}};
  const std::string chars("CET\0CEST\0", 9);
  const std::vector<std::int64_t> times{1'000'000, 2'000'000};
  const std::vector<std::uint8_t> index{1, 0};

  auto v1 = TimeZone::from_tzif(make_tzif('\0', times, index, types, chars, ""), "Test/V1");
  REQUIRE_MESSAGE(v1.ok(), (v1.ok() ? "" : v1.error().message));
  CHECK(v1->name() == "Test/V1");
  CHECK(v1->offset_at(999'999) == 3600);  // before the first transition: type 0
  CHECK(v1->offset_at(1'000'000) == 7200);
  CHECK(v1->at(1'500'000).abbreviation == "CEST");
  CHECK(v1->offset_at(5'000'000'000) == 3600);  // after the last, no footer: the last type
  CHECK(v1->posix_rule().empty());

  for (const char version : {'2', '3', '4'}) {
    auto v = TimeZone::from_tzif(make_tzif(version, times, index, types, chars, "CET-1CEST,M3.5.0,M10.5.0/3"), "T");
    REQUIRE(v.ok());
    CHECK(v->transition_count() == 2);
    CHECK(v->offset_at(1'500'000) == 7200);
    CHECK(v->offset_at(1'774'746'000) == 7200);  // from the footer
    CHECK(v->offset_at(1'774'746'000 - 1) == 3600);
  }
  // Slim: no transitions at all, the footer carries everything.
  auto slim = TimeZone::from_tzif(
      make_tzif('2', {}, {}, {{3600, 0, 0}}, std::string("CET\0", 4), "CET-1CEST,M3.5.0,M10.5.0/3"), "Test/Slim");
  REQUIRE(slim.ok());
  CHECK(slim->offset_at(1'792'890'000 - 1) == 7200);
  CHECK(slim->offset_at(1'792'890'000) == 3600);
  // A 64-bit transition beyond 2038 survives.
  auto wide = TimeZone::from_tzif(make_tzif('2', {4'000'000'000}, {1}, types, chars, ""), "Test/Wide");
  REQUIRE(wide.ok());
  CHECK(wide->offset_at(3'999'999'999) == 3600);
  CHECK(wide->offset_at(4'000'000'000) == 7200);

  const auto good = make_tzif('2', times, index, types, chars, "CET-1CEST,M3.5.0,M10.5.0/3");
  struct Bad {
    std::string bytes;
    const char* says;
  };
  std::string bad_magic = good;
  bad_magic[0] = 'X';
  std::string bad_version = good;
  bad_version[4] = '1';
  const std::vector<Bad> bad{
      {"", "truncated header"},
      {bad_magic, "magic"},
      {bad_version, "version"},
      {good.substr(0, 60), "truncated"},
      {good.substr(0, good.size() - 10), "footer"},
      {good.substr(0, good.size() - 1), "not terminated"},
      {make_tzif('2', times, {1, 2}, types, chars, ""), "names type 2"},
      {make_tzif('2', {2'000'000, 1'000'000}, index, types, chars, ""), "ascending"},
      {make_tzif('2', times, index, {{3600, 0, 0}, {7200, 1, 40}}, chars, ""), "abbreviation index"},
      {make_tzif('2', times, index, {{3600, 0, 0}, {7200, 2, 4}}, chars, ""), "DST flag"},
      {make_tzif('2', times, index, {{999'999, 0, 0}, {7200, 1, 4}}, chars, ""), "UTC offset"},
      {make_tzif('2', times, index, types, std::string("CET\0CEST", 8), ""), "not terminated"},
      {make_tzif('2', times, index, types, chars, "CET-1CEST,M3.5.0"), "footer"},
      {make_tzif('2', {}, {}, {}, chars, ""), "local time types"},
      {make_tzif('2', times, index, types, chars, "", 1), "leap seconds"},
  };
  for (const auto& b : bad) {
    auto r = TimeZone::from_tzif(b.bytes, "Test/Bad");
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(contains_text(r.error().message, b.says), b.says, " -> ", r.error().message);
  }
}

TEST_CASE("schedule: zone names are validated, unknown zones reported, parsed zones cached") {
  auto& db = ZoneDatabase::system();
  for (const auto* bad : {"", "/etc/passwd", "../etc/passwd", "Europe/../../etc/passwd", "Europe//Berlin",
                          "Europe/Berlin/", "./UTC", "Europe/Ber lin", "Europe/.hidden", "-x"}) {
    auto r = db.find(bad);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(r.error().code == Errc::invalid_argument, "'", bad, "'");
  }
  auto unknown = db.find("Europe/Atlantis");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().code == Errc::not_found);
  CHECK(contains_text(unknown.error().message, "unknown time zone 'Europe/Atlantis'"));
  CHECK(db.find("Europe").error().code == Errc::not_found);  // a directory
  auto not_tzif = db.find("zone.tab");
  REQUIRE_FALSE(not_tzif.ok());
  CHECK(contains_text(not_tzif.error().message, "not a TZif file"));

  auto a = db.find("Europe/Berlin");
  auto b = db.find("Europe/Berlin");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  CHECK(a->get() == b->get());

  ZoneDatabase empty(std::filesystem::path("/nonexistent-zoneinfo"));
  CHECK(empty.find("Europe/Berlin").error().code == Errc::not_found);
  CHECK(empty.find("UTC").ok());  // built in
}

// ---- cron ----

TEST_CASE("schedule: cron fields: lists, ranges, steps, names, and Sunday as 7") {
  auto every_quarter = CronSpec::parse("*/15 * * * *").value();
  auto from_ten = CronSpec::parse("10/20 * * * *").value();
  auto ranged = CronSpec::parse("1-30/5 * * * *").value();
  for (int m = 0; m < 60; ++m) {
    const auto minute = local_minute(2026, 1, 5, 3, m);
    CHECK(every_quarter.matches(minute) == (m % 15 == 0));
    CHECK(from_ten.matches(minute) == (m == 10 || m == 30 || m == 50));
    CHECK(ranged.matches(minute) == (m >= 1 && m <= 30 && (m - 1) % 5 == 0));
  }
  auto names = CronSpec::parse("0 0 * JAN-mar sat").value();
  CHECK(names.next_match(local_minute(2026, 1, 1)) == local_minute(2026, 1, 3));
  CHECK(names.next_match(local_minute(2026, 3, 29)) == local_minute(2027, 1, 2));  // first Saturday of 2027
  auto weekdays = CronSpec::parse("30 8 * * MON-fri").value();
  CHECK(weekdays.next_match(local_minute(2026, 1, 3)) == local_minute(2026, 1, 5, 8, 30));  // Sat -> Mon
  auto sunday = CronSpec::parse("0 0 * * 7").value();
  CHECK(sunday.next_match(local_minute(2026, 1, 1)) == local_minute(2026, 1, 4));
  CHECK(CronSpec::parse("0 0 * * 5-7").value().matches(local_minute(2026, 1, 4)));
  auto list = CronSpec::parse("0,30 1,13 * * *").value();
  CHECK(list.next_match(local_minute(2026, 1, 1, 1, 1)) == local_minute(2026, 1, 1, 1, 30));
  CHECK(list.next_match(local_minute(2026, 1, 1, 1, 31)) == local_minute(2026, 1, 1, 13, 0));
  CHECK(list.prev_match(local_minute(2026, 1, 1, 12, 59)) == local_minute(2026, 1, 1, 1, 30));
  CHECK(list.prev_match(local_minute(2026, 1, 1, 0, 59)) == local_minute(2025, 12, 31, 13, 30));
  CHECK(CronSpec::parse("@weekly").value().next_match(local_minute(2026, 1, 1)) == local_minute(2026, 1, 4));
  CHECK(CronSpec::parse("@hourly").value().text() == "@hourly");
  CHECK(CronSpec::parse("  0   2 *  * 6 ").value().text() == "0 2 * * 6");
}

TEST_CASE("schedule: cron day-of-month OR day-of-week, and 29 February") {
  // Both restricted: either matches (every 13th and every Friday).
  auto either = CronSpec::parse("0 0 13 * fri").value();
  CHECK(either.matches(local_minute(2026, 1, 13)));  // a Tuesday the 13th
  CHECK(either.matches(local_minute(2026, 1, 16)));  // a Friday
  CHECK(either.matches(local_minute(2026, 2, 13)));  // both
  CHECK_FALSE(either.matches(local_minute(2026, 1, 14)));
  CHECK(either.next_match(local_minute(2026, 1, 1)) == local_minute(2026, 1, 2));  // Friday 2 January
  // A field starting with '*' makes both required (Vixie cron): Fridays on the 1st, 11th, 21st, 31st.
  auto both = CronSpec::parse("0 0 */10 * fri").value();
  CHECK(both.next_match(local_minute(2026, 1, 1)) == local_minute(2026, 5, 1));
  CHECK(both.next_match(local_minute(2026, 5, 1, 0, 1)) == local_minute(2026, 7, 31));
  CHECK(CronSpec::parse("0 0 * * fri").value().next_match(local_minute(2026, 1, 1)) == local_minute(2026, 1, 2));

  auto leap = CronSpec::parse("0 0 29 2 *").value();
  CHECK(leap.next_match(local_minute(2026, 1, 1)) == local_minute(2028, 2, 29));
  CHECK(leap.prev_match(local_minute(2027, 6, 1)) == local_minute(2024, 2, 29));
  CHECK(leap.next_match(local_minute(2096, 3, 1)) == local_minute(2104, 2, 29));  // 2100 is not a leap year
  auto leap_or_monday = CronSpec::parse("0 12 29 2 mon").value();
  // Month 2 only: Mondays in February, or the 29th.
  CHECK(leap_or_monday.next_match(local_minute(2026, 2, 25)) == local_minute(2027, 2, 1, 12));
  CHECK(leap_or_monday.next_match(local_minute(2028, 2, 22)) == local_minute(2028, 2, 28, 12));         // a Monday
  CHECK(leap_or_monday.next_match(local_minute(2028, 2, 28, 12, 1)) == local_minute(2028, 2, 29, 12));  // a Tuesday
  CHECK(leap_or_monday.matches(local_minute(2028, 2, 29, 12)));                                         // a Tuesday

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"60 * * * *", "minute: '60': 60 is out of range 0-59"}, Bad{"* 24 * * *", "hour"},
        Bad{"* * 0 * *", "day-of-month"}, Bad{"* * * 13 *", "month"}, Bad{"* * * * 8", "day-of-week"},
        Bad{"* * * * fri-mon", "ends before it starts"}, Bad{"*/0 * * * *", "step"}, Bad{"*/61 * * * *", "step"},
        Bad{"1,,2 * * * *", "empty"}, Bad{"* * * *", "expected 5 fields"}, Bad{"* * * * * *", "got 6"},
        Bad{"@reboot", "unknown macro"}, Bad{"0 0 30 2 *", "no date ever matches"},
        Bad{"0 0 31 apr,jun,sep,nov *", "no date ever matches"}, Bad{"* * * foo *", "not a value"},
        Bad{"x * * * *", "not a value"}}) {
    auto r = CronSpec::parse(bad.text);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(contains_text(r.error().message, bad.says), bad.text, " -> ", r.error().message);
  }
  // 31 February never matches but 31 January does: allowed.
  CHECK(CronSpec::parse("0 0 31 1,2 *").ok());
}

// ---- maintenance windows ----

TEST_CASE("schedule: a Saturday 02:00 2h Europe/Berlin window over all of 2026") {
  const auto w = window("cron=\"0 2 * * 6\" duration=2h tz=Europe/Berlin");
  CHECK(w.to_string() == "cron=\"0 2 * * 6\" duration=2h tz=Europe/Berlin");
  const auto short_form = window("0 2 * * sat 2h Europe/Berlin");
  // CEST (+2) from 2026-03-29 01:00 UTC to 2026-10-25 01:00 UTC, CET (+1) otherwise.
  const std::int64_t cest_from = utc_ms(2026, 3, 29, 1);
  const std::int64_t cest_to = utc_ms(2026, 10, 25, 1);
  std::int64_t cursor = utc_ms(2026, 1, 1);
  int saturdays = 0;
  for (std::int64_t day = days_from_civil(2026, 1, 3); day < days_from_civil(2027, 1, 1); day += 7) {
    const std::int64_t local_two = (day * 86'400 + 2 * 3600) * 1000;
    const std::int64_t cet = local_two - kHour;
    const std::int64_t expected = (cet >= cest_from && cet < cest_to) ? local_two - 2 * kHour : cet;
    const auto start = w.next_start(cursor);
    REQUIRE(start.has_value());
    CHECK_MESSAGE(*start == expected, format_time(*start), " != ", format_time(expected));
    CHECK(short_form.next_start(cursor) == start);
    CHECK_FALSE(w.contains(expected - 1));
    CHECK(w.contains(expected));
    CHECK(w.contains(expected + 2 * kHour - 1));
    CHECK_FALSE(w.contains(expected + 2 * kHour));
    CHECK(w.next_open(expected - 1) == expected);
    CHECK(w.next_open(expected + 30 * kMinute) == expected + 30 * kMinute);
    CHECK(w.current_close(expected + 30 * kMinute) == expected + 2 * kHour);
    CHECK(w.current_close(expected - 1) == expected - 1);
    CHECK(w.last_start(expected + kDay) == expected);
    cursor = expected + 1;
    ++saturdays;
  }
  CHECK(saturdays == 52);
  // The Saturdays around both changes, written out.
  CHECK(w.next_start(utc_ms(2026, 3, 27)) == 1'774'659'600'000);   // 2026-03-28T01:00:00Z (CET)
  CHECK(w.next_start(utc_ms(2026, 3, 29)) == 1'775'260'800'000);   // 2026-04-04T00:00:00Z (CEST)
  CHECK(w.next_start(utc_ms(2026, 10, 23)) == 1'792'800'000'000);  // 2026-10-24T00:00:00Z (CEST)
  CHECK(w.next_start(utc_ms(2026, 10, 25)) == 1'793'408'400'000);  // 2026-10-31T01:00:00Z (CET)
}

TEST_CASE("schedule: Berlin starts in the spring-forward gap and the fall-back overlap") {
  const auto w = window("30 2 * * * 30m Europe/Berlin");
  CHECK(w.next_start(utc_ms(2026, 3, 28)) == utc_ms(2026, 3, 28, 1, 30));  // CET
  // 02:30 does not exist on 29 March: the window opens when the clock jumps to 03:00 CEST.
  CHECK(w.next_start(utc_ms(2026, 3, 28, 2)) == utc_ms(2026, 3, 29, 1));
  CHECK(w.contains(utc_ms(2026, 3, 29, 1)));
  CHECK(w.contains(utc_ms(2026, 3, 29, 1, 29)));
  CHECK_FALSE(w.contains(utc_ms(2026, 3, 29, 1, 30)));                        // the full 30 minutes from the jump
  CHECK(w.next_start(utc_ms(2026, 3, 29, 2)) == utc_ms(2026, 3, 30, 0, 30));  // CEST
  // 02:30 happens twice on 25 October: only the first (CEST) opens the window.
  CHECK(w.next_start(utc_ms(2026, 10, 24, 23)) == utc_ms(2026, 10, 25, 0, 30));
  CHECK(w.contains(utc_ms(2026, 10, 25, 0, 45)));
  CHECK_FALSE(w.contains(utc_ms(2026, 10, 25, 1, 45)));  // 02:45 CET, the second pass
  CHECK(w.next_start(utc_ms(2026, 10, 25, 0, 31)) == utc_ms(2026, 10, 26, 1, 30));
  // A window across the fall-back change lasts its duration in real time.
  const auto across = window("0 1 * * * 3h Europe/Berlin");
  const auto opened = across.next_start(utc_ms(2026, 10, 24, 12)).value();
  CHECK(opened == utc_ms(2026, 10, 24, 23));                       // 01:00 CEST
  CHECK(across.current_close(opened) == utc_ms(2026, 10, 25, 2));  // 03:00 CET, three hours later
  // Every 15 minutes in the gap: all four starts open at the jump, once.
  const auto quarter = window("*/15 2 29 3 * 10m Europe/Berlin");
  CHECK(quarter.next_start(utc_ms(2026, 3, 29)) == utc_ms(2026, 3, 29, 1));
  CHECK(quarter.next_start(utc_ms(2026, 3, 29, 1) + 1) == utc_ms(2027, 3, 29, 0));  // 02:00 CEST in 2027
}

TEST_CASE("schedule: America/New_York windows across its DST changes") {
  const auto w = window("cron=\"0 1 * * *\" duration=1h tz=America/New_York");
  CHECK(w.next_start(utc_ms(2026, 1, 15)) == utc_ms(2026, 1, 15, 6));  // EST
  CHECK(w.next_start(utc_ms(2026, 7, 15)) == utc_ms(2026, 7, 15, 5));  // EDT
  // 1 November: 01:00 occurs at 05:00 UTC (EDT) and again at 06:00 UTC (EST); it opens once.
  CHECK(w.next_start(utc_ms(2026, 11, 1)) == utc_ms(2026, 11, 1, 5));
  CHECK(w.contains(utc_ms(2026, 11, 1, 5, 59)));
  CHECK_FALSE(w.contains(utc_ms(2026, 11, 1, 6, 30)));
  CHECK(w.next_open(utc_ms(2026, 11, 1, 6, 30)) == utc_ms(2026, 11, 2, 6));
  // 8 March: 02:30 does not exist; it opens at the jump, 07:00 UTC.
  const auto gap = window("30 2 * * * 1h America/New_York");
  CHECK(gap.next_start(utc_ms(2026, 3, 8)) == utc_ms(2026, 3, 8, 7));
  CHECK(gap.next_start(utc_ms(2026, 3, 7)) == utc_ms(2026, 3, 7, 7, 30));
  CHECK(gap.next_start(utc_ms(2026, 3, 8, 8)) == utc_ms(2026, 3, 9, 6, 30));
}

TEST_CASE("schedule: UTC windows, window text forms and errors") {
  const auto w = window("0 2 * * 6 2h");
  CHECK(w.zone().name() == "UTC");
  CHECK(w.to_string() == "cron=\"0 2 * * 6\" duration=2h tz=UTC");
  CHECK(w.next_start(utc_ms(2026, 11, 16)) == utc_ms(2026, 11, 21, 2));
  CHECK(w.next_open(utc_ms(2026, 11, 21, 3)) == utc_ms(2026, 11, 21, 3));
  CHECK(w.current_close(utc_ms(2026, 11, 21, 3)) == utc_ms(2026, 11, 21, 4));
  CHECK(window(w.to_string()).to_string() == w.to_string());
  CHECK(window("@daily 1h30m").next_start(utc_ms(2026, 1, 1, 0, 1)) == utc_ms(2026, 1, 2));
  CHECK(window("duration=90m cron=\"@daily\"").duration() == std::chrono::minutes(90));
  CHECK(window("0 2 * * 6 7d UTC").contains(utc_ms(2026, 11, 27)));  // 7 days are allowed
  // Instants far outside the calendar neither overflow nor match.
  CHECK_FALSE(w.contains(kNeverMs));
  CHECK(w.next_open(kNeverMs) == kNeverMs);
  CHECK_FALSE(w.contains(std::numeric_limits<std::int64_t>::min()));
  CHECK(w.current_close(kNeverMs) == kNeverMs);

  struct Bad {
    const char* text;
    const char* says;
  };
  for (const auto& bad :
       {Bad{"0 2 * * 6", "expected 'MINUTE HOUR"}, Bad{"0 2 * * 6 0s", "more than 0"},
        Bad{"0 2 * * 6 8d", "at most 7d"}, Bad{"0 2 * * 6 2x", "unknown unit"},
        Bad{"0 2 * * 6 2h Europe/Atlantis", "unknown time zone"}, Bad{"0 2 * * 6 2h ../../etc/passwd", "not a zone"},
        Bad{"0 2 * * 6 2h UTC extra", "unexpected 'extra'"}, Bad{"0 25 * * 6 2h", "hour"},
        Bad{"@daily", "duration is missing"}, Bad{"cron=\"0 2 * * 6 duration=2h", "unterminated quote"},
        Bad{"cron=\"0 2 * * 6\" duration=2h color=red", "unknown key 'color'"},
        Bad{"cron=\"0 2 * * 6\"", "duration= is missing"}, Bad{"duration=2h", "cron= is missing"},
        Bad{"cron=\"0 2 * * 6\" duration=2h duration=3h", "given twice"},
        Bad{"cron=\"0 2 * * 6\"x duration=2h", "space after the quoted value"}, Bad{"=2h", "expected KEY=VALUE"}}) {
    auto r = MaintenanceWindow::parse(bad.text);
    REQUIRE_FALSE(r.ok());
    CHECK_MESSAGE(contains_text(r.error().message, bad.says), bad.text, " -> ", r.error().message);
  }
}

TEST_CASE("schedule: several windows: any one open is enough, unions close once") {
  const std::vector<MaintenanceWindow> none;
  CHECK(in_any_window(none, kT0));
  CHECK(next_open(none, kT0) == kT0);
  CHECK(current_close(none, kT0) == kNeverMs);

  const std::vector<MaintenanceWindow> nights{window("0 1 * * * 1h"), window("0 2 * * * 1h"),
                                              window("0 12 * * sun 30m Europe/Berlin")};
  CHECK_FALSE(in_any_window(nights, utc_ms(2026, 6, 1, 0, 59)));
  CHECK(in_any_window(nights, utc_ms(2026, 6, 1, 1)));
  CHECK(in_any_window(nights, utc_ms(2026, 6, 1, 2, 30)));
  CHECK_FALSE(in_any_window(nights, utc_ms(2026, 6, 1, 3)));
  CHECK(next_open(nights, utc_ms(2026, 6, 1, 0, 10)) == utc_ms(2026, 6, 1, 1));
  CHECK(current_close(nights, utc_ms(2026, 6, 1, 1, 10)) == utc_ms(2026, 6, 1, 3));  // adjacent windows join
  CHECK(current_close(nights, utc_ms(2026, 6, 1, 4)) == utc_ms(2026, 6, 1, 4));
  // 2026-06-07 is a Sunday: 12:00 CEST is 10:00 UTC.
  CHECK(next_open(nights, utc_ms(2026, 6, 7, 3)) == utc_ms(2026, 6, 7, 10));
  CHECK(current_close(nights, utc_ms(2026, 6, 7, 10, 5)) == utc_ms(2026, 6, 7, 10, 30));

  // Openings every hour lasting 90 minutes never close.
  const auto always = window("0 * * * * 90m");
  CHECK(always.contains(kT0 + 12'345));
  CHECK(always.current_close(kT0) == kNeverMs);
  const auto overlapping = window("0 0,1 * * * 90m");  // 00:00-01:30 and 01:00-02:30 merge
  CHECK(overlapping.current_close(utc_ms(2026, 6, 1, 0, 10)) == utc_ms(2026, 6, 1, 2, 30));
  // A window that can only open on 29 February.
  const auto leap = window("0 0 29 2 * 1d");
  CHECK(leap.next_open(utc_ms(2026, 1, 1)) == utc_ms(2028, 2, 29));
  CHECK(leap.contains(utc_ms(2028, 2, 29, 23, 59)));
  CHECK_FALSE(leap.contains(utc_ms(2028, 3, 1)));
}
