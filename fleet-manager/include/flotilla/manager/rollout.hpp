#pragma once
// Rollout pacing, per-device jitter, abort rules and the retry policy of jobs. Pure logic: time
// is always passed in as Unix milliseconds, nothing here reads a clock, sleeps or keeps global
// state, so every function may be called from any thread. The job engine keeps the pacer state
// in its JobRecord (v1::PacerState) and drives it from the reactor thread; the CLI uses the
// parsers to validate what an operator types.
//
// Pacing (constant rate R devices per minute):
// - The first device may be notified at once; after that floor(R * elapsed) more by `elapsed`,
//   provided the engine asks at least once per token (it should wake at next_allowed_ms()).
// - No large bursts: whole tokens never exceed max(1, floor(R / 60)), i.e. one second's worth, so
//   a job that had nothing to send for an hour sends at most that many at once.
// - Paused time (outside every maintenance window) earns nothing once the engine calls pause().
// - Exponential: the rate is base * factor^step, capped at max, where step is the number of
//   multiples of N the notified (or succeeded) count has reached: with N = 50, devices 1..50 go
//   at the base rate, 51..100 at base * factor, and so on.
// - Unlimited: every queued device at once.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/v1/job.pb.h"

namespace flotilla::manager {

inline constexpr double kMinRatePerMinute = 1.0 / 1440.0;  // one device a day
inline constexpr double kMaxRatePerMinute = 60'000'000.0;  // a million devices a second
inline constexpr double kMaxRolloutFactor = 10.0;
inline constexpr std::chrono::milliseconds kMaxJitter = std::chrono::hours(24);

// A notification rate in devices per minute; 0 means unlimited (as in v1::RolloutSpec).
struct Rate {
  double per_minute = 0.0;

  [[nodiscard]] bool unlimited() const noexcept { return per_minute == 0.0; }
  bool operator==(const Rate&) const = default;
};

// "100/min", "10/s", "5000/h", "1.5/min" (units s, sec, m, min, h, hour, d, day) or "unlimited".
// Errors: invalid_argument naming what is wrong (zero, negative, not a number, unknown unit,
// outside [kMinRatePerMinute, kMaxRatePerMinute]).
Result<Rate> parse_rate(std::string_view text);
// The shortest exact text parse_rate() reads back: "10/s", "100/min", "5000/h", "unlimited".
std::string format_rate(Rate rate);

enum class RolloutKind { constant, exponential };
enum class StepBasis { notified, succeeded };

// How fast a job notifies its devices. Plain data; v1::RolloutSpec is its persisted form.
struct RolloutConfig {
  RolloutKind kind = RolloutKind::constant;
  // Constant: the rate (unlimited by default). Exponential: the base rate (never unlimited).
  Rate rate;
  // Exponential only: multiply the rate by `factor` (1 < factor <= 10) each time the `basis`
  // count reaches the next multiple of `increment_after` (>= 1), up to `max_rate` (unlimited:
  // no cap below kMaxRatePerMinute).
  double factor = 2.0;
  std::uint64_t increment_after = 0;
  StepBasis basis = StepBasis::notified;
  Rate max_rate;
  // Each device waits a further [0, jitter) derived from the job and device ids.
  std::chrono::milliseconds jitter{0};

  bool operator==(const RolloutConfig&) const = default;
};

// Errors: invalid_argument naming the offending field.
Status validate(const RolloutConfig& config);
// `--rate TEXT`: a constant rollout. Errors: parse_rate's.
Result<RolloutConfig> parse_constant_rollout(std::string_view rate_text);
// `--exponential 'base=10/min,factor=2,after=notified:50,max=1000/min'`. Keys: base (required),
// factor (default 2), after (required: N, notified:N or succeeded:N), max (optional). Errors:
// invalid_argument naming the key (unknown, repeated, missing, bad value).
Result<RolloutConfig> parse_exponential_rollout(std::string_view text);
// "100/min", "unlimited", or the exponential key list above (jitter is not part of the text).
std::string format_rollout(const RolloutConfig& config);

RolloutConfig from_proto(const v1::RolloutSpec& spec);
v1::RolloutSpec to_proto(const RolloutConfig& config);
// Errors: invalid_argument (NaN or negative rates, a factor without increment_after, ...).
Status validate(const v1::RolloutSpec& spec);

// The pacer's persisted state. Plain data; v1::PacerState is its persisted form.
struct PacerState {
  double tokens = 0.0;              // devices that may be notified now, fractional; < 0: owed
  std::int64_t refilled_at_ms = 0;  // tokens are earned from here on
  double rate_per_minute = 0.0;     // in effect since refilled_at_ms; 0 = unlimited
  std::uint32_t step = 0;           // exponential: increments applied so far

  bool operator==(const PacerState&) const = default;
};

PacerState from_proto(const v1::PacerState& state);
v1::PacerState to_proto(const PacerState& state);

// A token bucket over a RolloutConfig and a PacerState. A value type: build one from the
// persisted state, call it, store state() back. Not thread-safe (plain data).
class Pacer {
 public:
  Pacer(RolloutConfig config, PacerState state);

  // The state of a rollout that starts at `now_ms`: one token, the base rate.
  static PacerState initial_state(const RolloutConfig& config, std::int64_t now_ms);

  // Earns the tokens since the last refill, applies the exponential step for the counts, and
  // returns how many devices may be notified now (UINT64_MAX when unlimited).
  std::uint64_t allowance(std::int64_t now_ms, std::uint64_t notified, std::uint64_t succeeded);
  // When the next device may be notified (now_ms if one may go now), for the engine's timer.
  // Does not change the state.
  [[nodiscard]] std::int64_t next_allowed_ms(std::int64_t now_ms, std::uint64_t notified,
                                             std::uint64_t succeeded) const;
  // `n` devices were notified at `now_ms`. Consuming more than allowance() returned is recorded
  // as a debt that later tokens pay off.
  void consume(std::uint64_t n, std::int64_t now_ms);
  // Dispatching is suspended (outside every maintenance window, before the start): the time from
  // the last refill up to now_ms earns nothing. Call it on every tick that skips the job for that
  // reason and once more, with the opening instant, when dispatching resumes. A missed call costs
  // at most the burst cap.
  void pause(std::int64_t now_ms);

  // The rate for the given counts (what allowance() would switch to).
  [[nodiscard]] double rate_for(std::uint64_t notified, std::uint64_t succeeded) const;
  [[nodiscard]] const PacerState& state() const noexcept { return state_; }
  [[nodiscard]] const RolloutConfig& config() const noexcept { return config_; }

 private:
  void refill(std::int64_t now_ms);
  void apply_step(std::uint64_t notified, std::uint64_t succeeded);

  RolloutConfig config_;
  PacerState state_;
};

// The same operations on the engine's persisted protobuf forms.
v1::PacerState initial_pacer(const v1::RolloutSpec& spec, std::int64_t now_ms);
std::uint64_t pacer_allowance(const v1::RolloutSpec& spec, v1::PacerState& state, std::int64_t now_ms,
                              std::uint64_t notified, std::uint64_t succeeded);
std::int64_t pacer_next_ms(const v1::RolloutSpec& spec, const v1::PacerState& state, std::int64_t now_ms,
                           std::uint64_t notified, std::uint64_t succeeded);
// Takes `n` tokens earned by the last pacer_allowance() call.
void pacer_consume(v1::PacerState& state, std::uint64_t n);
void pacer_pause(const v1::RolloutSpec& spec, v1::PacerState& state, std::int64_t now_ms);

// A delay in [0, jitter_ms) from a 64-bit FNV-1a hash of (job id, device id): the same on every
// manager, build and restart. 0 when jitter_ms <= 0.
std::int64_t device_jitter_ms(std::string_view job_id, std::string_view device_id, std::int64_t jitter_ms);

// "FAILED>5%@50": abort when at least `min_executions` executions have finished and more than
// `threshold_percent` of them finished in `state` (FAILED, TIMED_OUT or REJECTED).
struct AbortRule {
  v1::ExecutionState state = v1::EXECUTION_FAILED;
  double threshold_percent = 0.0;  // 0 < p <= 100
  std::uint32_t min_executions = 1;

  bool operator==(const AbortRule&) const = default;
};

// Finished executions of a job by final state; `finished` counts every finished execution
// (succeeded included) and is the denominator.
struct AbortCounts {
  std::uint64_t failed = 0;
  std::uint64_t timed_out = 0;
  std::uint64_t rejected = 0;
  std::uint64_t finished = 0;
};

struct AbortVerdict {
  AbortRule rule;
  std::string reason;  // "FAILED 31.0% of 100 executions > 5%"
};

// One rule. Errors: invalid_argument "abort rule 'X': column N: what was expected".
Result<AbortRule> parse_abort_rule(std::string_view text);
// Comma-separated rules (at least one); columns count from the start of `text`.
Result<std::vector<AbortRule>> parse_abort_rules(std::string_view text);
std::string format_abort_rule(const AbortRule& rule);
std::string format_abort_rules(const std::vector<AbortRule>& rules);
// Errors: invalid_argument (state, threshold or minimum out of range).
Status validate(const AbortRule& rule);
AbortRule from_proto(const v1::AbortRule& rule);
v1::AbortRule to_proto(const AbortRule& rule);

// The first rule that fires, in order: finished >= min and count(state) / finished * 100 > p.
std::optional<AbortVerdict> first_fired(const std::vector<AbortRule>& rules, const AbortCounts& counts);
// first_fired()'s reason only.
std::optional<std::string> evaluate_abort(const std::vector<AbortRule>& rules, const AbortCounts& counts);

// Whether an attempt that ended in `state` may be tried again: FAILED and TIMED_OUT while the
// attempts made so far (1-based, the one that just ended included) do not exceed max_retries;
// REJECTED, CANCELED, REMOVED (and non-final states) never.
bool retry_allowed(v1::ExecutionState state, std::uint32_t attempts, std::uint32_t max_retries);

}  // namespace flotilla::manager
