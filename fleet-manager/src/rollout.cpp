#include "flotilla/manager/rollout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

namespace flotilla::manager {
namespace {

// Whole tokens are allowed this close below an integer (floating-point error over many refills).
constexpr double kTokenEpsilon = 1e-9;
// The fraction of the next token kept above the whole-token burst.
constexpr double kFractionCap = 1.0 - 1e-6;
constexpr double kMsPerMinute = 60'000.0;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

// Digits with at most one '.', at least one digit: no sign, exponent, inf or nan.
std::optional<double> parse_decimal(std::string_view s) {
  if (s.empty()) return std::nullopt;
  bool dot = false;
  bool digit = false;
  for (char c : s) {
    if (c == '.') {
      if (dot) return std::nullopt;
      dot = true;
    } else if (c >= '0' && c <= '9') {
      digit = true;
    } else {
      return std::nullopt;
    }
  }
  if (!digit) return std::nullopt;
  double value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value, std::chars_format::fixed);
  if (ec != std::errc{} || ptr != s.data() + s.size() || !std::isfinite(value)) return std::nullopt;
  return value;
}

std::optional<std::uint64_t> parse_unsigned(std::string_view s) {
  if (s.empty() || s.size() > 20) return std::nullopt;
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

bool near_integer(double x) { return std::fabs(x - std::round(x)) <= 1e-9 * std::max(1.0, std::fabs(x)); }

Status check_rate(Rate rate, std::string_view what, bool allow_unlimited) {
  if (!std::isfinite(rate.per_minute) || rate.per_minute < 0) {
    return make_error(Errc::invalid_argument, "{}: not a rate ({} per minute)", what, rate.per_minute);
  }
  if (rate.unlimited()) {
    if (allow_unlimited) return {};
    return make_error(Errc::invalid_argument, "{}: must be a rate, not unlimited", what);
  }
  if (rate.per_minute < kMinRatePerMinute) {
    return make_error(Errc::invalid_argument, "{}: {} per minute is below the minimum of 1/d", what, rate.per_minute);
  }
  if (rate.per_minute > kMaxRatePerMinute) {
    return make_error(Errc::invalid_argument, "{}: {} per minute is above the maximum of 1000000/s (use 'unlimited')",
                      what, rate.per_minute);
  }
  return {};
}

// max(1, floor(R / 60)) whole tokens plus the fraction of the next one.
double token_cap(double rate_per_minute) { return std::max(1.0, std::floor(rate_per_minute / 60.0)) + kFractionCap; }

std::string_view state_name(v1::ExecutionState state) {
  switch (state) {
    case v1::EXECUTION_FAILED: return "FAILED";
    case v1::EXECUTION_TIMED_OUT: return "TIMED_OUT";
    case v1::EXECUTION_REJECTED: return "REJECTED";
    default: return "UNSUPPORTED";
  }
}

std::uint64_t count_in(const AbortCounts& counts, v1::ExecutionState state) {
  switch (state) {
    case v1::EXECUTION_FAILED: return counts.failed;
    case v1::EXECUTION_TIMED_OUT: return counts.timed_out;
    case v1::EXECUTION_REJECTED: return counts.rejected;
    default: return 0;
  }
}

// Parses one abort rule occupying text[begin, end); columns are 1-based positions in `text`.
Result<AbortRule> parse_rule_at(std::string_view text, std::size_t begin, std::size_t end) {
  std::size_t pos = begin;
  auto fail = [&](std::size_t at, std::string_view what) -> Error {
    return make_error(Errc::invalid_argument, "abort rule '{}': column {}: {}", text, at + 1, what);
  };
  auto skip_spaces = [&] {
    while (pos < end && (text[pos] == ' ' || text[pos] == '\t')) ++pos;
  };
  auto take_while = [&](auto pred) {
    const std::size_t start = pos;
    while (pos < end && pred(text[pos])) ++pos;
    return text.substr(start, pos - start);
  };
  auto is_name = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_'; };
  auto is_number = [](char c) { return (c >= '0' && c <= '9') || c == '.'; };

  skip_spaces();
  const std::size_t state_at = pos;
  const auto name = take_while(is_name);
  if (name.empty()) return fail(state_at, "expected a state (FAILED, TIMED_OUT or REJECTED)");
  AbortRule rule;
  if (iequals(name, "FAILED")) {
    rule.state = v1::EXECUTION_FAILED;
  } else if (iequals(name, "TIMED_OUT")) {
    rule.state = v1::EXECUTION_TIMED_OUT;
  } else if (iequals(name, "REJECTED")) {
    rule.state = v1::EXECUTION_REJECTED;
  } else {
    return fail(state_at, fmt::format("unknown state '{}' (FAILED, TIMED_OUT or REJECTED)", name));
  }
  skip_spaces();
  if (pos >= end || text[pos] != '>') return fail(pos, "expected '>' after the state");
  ++pos;
  if (pos < end && text[pos] == '=') return fail(pos, "'>=' is not supported: rules fire above the threshold ('>')");
  skip_spaces();
  const std::size_t number_at = pos;
  const auto number = take_while(is_number);
  if (number.empty()) return fail(number_at, "expected a threshold percentage such as 5%");
  const auto threshold = parse_decimal(number);
  if (!threshold) return fail(number_at, fmt::format("'{}' is not a number", number));
  if (*threshold <= 0 || *threshold > 100) {
    return fail(number_at, fmt::format("threshold {}% must be more than 0% and at most 100%", number));
  }
  rule.threshold_percent = *threshold;
  skip_spaces();
  if (pos >= end || text[pos] != '%') return fail(pos, "expected '%' after the threshold");
  ++pos;
  skip_spaces();
  if (pos >= end || text[pos] != '@') {
    return fail(pos, "expected '@' and the minimum number of finished executions (e.g. @50)");
  }
  ++pos;
  skip_spaces();
  const std::size_t min_at = pos;
  const auto digits = take_while([](char c) { return c >= '0' && c <= '9'; });
  if (digits.empty()) return fail(min_at, "expected the minimum number of finished executions");
  const auto min = parse_unsigned(digits);
  if (!min || *min > std::numeric_limits<std::uint32_t>::max()) return fail(min_at, "minimum is too large");
  if (*min < 1) return fail(min_at, "minimum must be at least 1");
  rule.min_executions = static_cast<std::uint32_t>(*min);
  skip_spaces();
  if (pos < end) return fail(pos, fmt::format("unexpected '{}'", text.substr(pos, end - pos)));
  return rule;
}

}  // namespace

Result<Rate> parse_rate(std::string_view text) {
  const auto t = trim(text);
  if (iequals(t, "unlimited")) return Rate{};
  const auto slash = t.find('/');
  if (slash == std::string_view::npos) {
    return make_error(Errc::invalid_argument,
                      "rate '{}': expected COUNT/UNIT such as 100/min, 10/s, 5000/h or 'unlimited'", text);
  }
  const auto number = trim(t.substr(0, slash));
  const auto unit = trim(t.substr(slash + 1));
  if (!number.empty() && number.front() == '-') {
    return make_error(Errc::invalid_argument, "rate '{}': must be positive", text);
  }
  const auto count = parse_decimal(number);
  if (!count) return make_error(Errc::invalid_argument, "rate '{}': '{}' is not a number", text, number);
  double per_minute_factor = 0;
  if (iequals(unit, "s") || iequals(unit, "sec") || iequals(unit, "second")) {
    per_minute_factor = 60.0;
  } else if (iequals(unit, "m") || iequals(unit, "min") || iequals(unit, "minute")) {
    per_minute_factor = 1.0;
  } else if (iequals(unit, "h") || iequals(unit, "hour")) {
    per_minute_factor = 1.0 / 60.0;
  } else if (iequals(unit, "d") || iequals(unit, "day")) {
    per_minute_factor = 1.0 / 1440.0;
  } else {
    return make_error(Errc::invalid_argument, "rate '{}': unknown unit '{}' (s, min, h, d)", text, unit);
  }
  if (*count == 0) {
    return make_error(Errc::invalid_argument, "rate '{}': must be positive (use 'unlimited' for no limit)", text);
  }
  const Rate rate{*count * per_minute_factor};
  if (!std::isfinite(rate.per_minute) || rate.per_minute > kMaxRatePerMinute) {
    return make_error(Errc::invalid_argument, "rate '{}': above the maximum of 1000000/s (use 'unlimited')", text);
  }
  if (rate.per_minute < kMinRatePerMinute) {
    return make_error(Errc::invalid_argument, "rate '{}': below the minimum of 1/d", text);
  }
  return rate;
}

std::string format_rate(Rate rate) {
  if (rate.unlimited()) return "unlimited";
  const double pm = rate.per_minute;
  if (pm >= 60 && near_integer(pm / 60)) return fmt::format("{}/s", std::llround(pm / 60));
  if (near_integer(pm)) return fmt::format("{}/min", std::llround(pm));
  if (near_integer(pm * 60)) return fmt::format("{}/h", std::llround(pm * 60));
  if (near_integer(pm * 1440)) return fmt::format("{}/d", std::llround(pm * 1440));
  return fmt::format("{}/min", pm);
}

Status validate(const RolloutConfig& config) {
  if (config.jitter.count() < 0 || config.jitter > kMaxJitter) {
    return make_error(Errc::invalid_argument, "jitter: must be between 0 and 24h");
  }
  if (config.kind == RolloutKind::constant) return check_rate(config.rate, "rate", true);
  if (auto st = check_rate(config.rate, "base", false); !st) return st;
  if (!std::isfinite(config.factor) || config.factor <= 1.0 || config.factor > kMaxRolloutFactor) {
    return make_error(Errc::invalid_argument, "factor: {} must be more than 1 and at most 10", config.factor);
  }
  if (config.increment_after < 1 || config.increment_after > std::numeric_limits<std::uint32_t>::max()) {
    return make_error(Errc::invalid_argument, "after: must be between 1 and {} devices",
                      std::numeric_limits<std::uint32_t>::max());
  }
  if (auto st = check_rate(config.max_rate, "max", true); !st) return st;
  if (!config.max_rate.unlimited() && config.max_rate.per_minute < config.rate.per_minute) {
    return make_error(Errc::invalid_argument, "max: {} is below the base rate {}", format_rate(config.max_rate),
                      format_rate(config.rate));
  }
  return {};
}

Result<RolloutConfig> parse_constant_rollout(std::string_view rate_text) {
  auto rate = parse_rate(rate_text);
  if (!rate) return std::move(rate).error();
  RolloutConfig config;
  config.rate = *rate;
  return config;
}

Result<RolloutConfig> parse_exponential_rollout(std::string_view text) {
  RolloutConfig config;
  config.kind = RolloutKind::exponential;
  bool have_base = false;
  bool have_factor = false;
  bool have_after = false;
  bool have_max = false;
  auto fail = [&](std::string_view what) {
    return make_error(Errc::invalid_argument, "exponential rollout '{}': {}", text, what);
  };
  std::string_view rest = text;
  while (true) {
    const auto comma = rest.find(',');
    const auto item = trim(rest.substr(0, comma));
    if (item.empty()) return fail("empty item (expected KEY=VALUE, e.g. base=10/min)");
    const auto eq = item.find('=');
    if (eq == std::string_view::npos) return fail(fmt::format("'{}': expected KEY=VALUE", item));
    const auto key = trim(item.substr(0, eq));
    const auto value = trim(item.substr(eq + 1));
    auto once = [&](bool& seen) -> Status {
      if (seen) return fail(fmt::format("'{}' is given twice", key));
      seen = true;
      return {};
    };
    if (iequals(key, "base")) {
      if (auto st = once(have_base); !st) return std::move(st).error();
      auto rate = parse_rate(value);
      if (!rate) return fail(fmt::format("base: {}", rate.error().message));
      if (rate->unlimited()) return fail("base: must be a rate, not unlimited");
      config.rate = *rate;
    } else if (iequals(key, "factor")) {
      if (auto st = once(have_factor); !st) return std::move(st).error();
      const auto factor = parse_decimal(value);
      if (!factor) return fail(fmt::format("factor: '{}' is not a number", value));
      if (*factor <= 1.0 || *factor > kMaxRolloutFactor) {
        return fail(fmt::format("factor: {} must be more than 1 and at most 10", value));
      }
      config.factor = *factor;
    } else if (iequals(key, "after")) {
      if (auto st = once(have_after); !st) return std::move(st).error();
      std::string_view n = value;
      if (const auto colon = value.find(':'); colon != std::string_view::npos) {
        const auto basis = trim(value.substr(0, colon));
        n = trim(value.substr(colon + 1));
        if (iequals(basis, "notified")) {
          config.basis = StepBasis::notified;
        } else if (iequals(basis, "succeeded")) {
          config.basis = StepBasis::succeeded;
        } else {
          return fail(fmt::format("after: '{}' is neither notified nor succeeded", basis));
        }
      }
      const auto count = parse_unsigned(n);
      if (!count || *count < 1 || *count > std::numeric_limits<std::uint32_t>::max()) {
        return fail(fmt::format("after: '{}' is not a device count (1 or more)", n));
      }
      config.increment_after = *count;
    } else if (iequals(key, "max")) {
      if (auto st = once(have_max); !st) return std::move(st).error();
      auto rate = parse_rate(value);
      if (!rate) return fail(fmt::format("max: {}", rate.error().message));
      config.max_rate = *rate;
    } else {
      return fail(fmt::format("unknown key '{}' (base, factor, after, max)", key));
    }
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  if (!have_base) return fail("'base' is missing (e.g. base=10/min)");
  if (!have_after) return fail("'after' is missing (e.g. after=notified:50)");
  if (auto st = validate(config); !st) return fail(st.error().message);
  return config;
}

std::string format_rollout(const RolloutConfig& config) {
  if (config.kind == RolloutKind::constant) return format_rate(config.rate);
  std::string text = fmt::format("base={},factor={},after={}:{}", format_rate(config.rate), config.factor,
                                 config.basis == StepBasis::notified ? "notified" : "succeeded",
                                 config.increment_after);
  if (!config.max_rate.unlimited()) text += fmt::format(",max={}", format_rate(config.max_rate));
  return text;
}

RolloutConfig from_proto(const v1::RolloutSpec& spec) {
  RolloutConfig config;
  config.rate = Rate{spec.rate_per_minute()};
  config.jitter = std::chrono::milliseconds(spec.jitter_ms());
  if (spec.factor() == 0.0 || spec.factor() == 1.0) return config;
  config.kind = RolloutKind::exponential;
  config.factor = spec.factor();
  config.increment_after = spec.increment_after();
  config.basis = spec.increment_on_succeeded() ? StepBasis::succeeded : StepBasis::notified;
  config.max_rate = Rate{spec.max_rate_per_minute()};
  return config;
}

v1::RolloutSpec to_proto(const RolloutConfig& config) {
  v1::RolloutSpec spec;
  spec.set_rate_per_minute(config.rate.per_minute);
  spec.set_jitter_ms(static_cast<std::uint32_t>(
      std::clamp<std::int64_t>(config.jitter.count(), 0, std::numeric_limits<std::uint32_t>::max())));
  if (config.kind == RolloutKind::exponential) {
    spec.set_factor(config.factor);
    spec.set_increment_after(static_cast<std::uint32_t>(
        std::min<std::uint64_t>(config.increment_after, std::numeric_limits<std::uint32_t>::max())));
    spec.set_increment_on_succeeded(config.basis == StepBasis::succeeded);
    spec.set_max_rate_per_minute(config.max_rate.per_minute);
  }
  return spec;
}

Status validate(const v1::RolloutSpec& spec) {
  if (auto st = validate(from_proto(spec)); !st) {
    return make_error(Errc::invalid_argument, "rollout: {}", st.error().message);
  }
  return {};
}

PacerState from_proto(const v1::PacerState& state) {
  return PacerState{state.tokens(), state.refilled_at_ms(), state.rate_per_minute(), state.step()};
}

v1::PacerState to_proto(const PacerState& state) {
  v1::PacerState out;
  out.set_tokens(state.tokens);
  out.set_refilled_at_ms(state.refilled_at_ms);
  out.set_rate_per_minute(state.rate_per_minute);
  out.set_step(state.step);
  return out;
}

Pacer::Pacer(RolloutConfig config, PacerState state) : config_(config), state_(state) {
  if (!std::isfinite(state_.tokens)) state_.tokens = 0;
  if (!std::isfinite(state_.rate_per_minute) || state_.rate_per_minute < 0) state_.rate_per_minute = 0;
}

PacerState Pacer::initial_state(const RolloutConfig& config, std::int64_t now_ms) {
  Pacer pacer(config, PacerState{0.0, now_ms, 0.0, 0});
  pacer.apply_step(0, 0);
  if (pacer.state_.rate_per_minute > 0) pacer.state_.tokens = 1.0;
  return pacer.state_;
}

double Pacer::rate_for(std::uint64_t notified, std::uint64_t succeeded) const {
  if (config_.kind == RolloutKind::constant) {
    const double r = config_.rate.per_minute;
    return std::isfinite(r) && r > 0 ? std::min(r, kMaxRatePerMinute) : 0.0;
  }
  const double cap = config_.max_rate.unlimited() ? kMaxRatePerMinute
                                                  : std::min(config_.max_rate.per_minute, kMaxRatePerMinute);
  const double base = config_.rate.per_minute;
  if (!std::isfinite(base) || base <= 0) return 0.0;
  const std::uint64_t count = config_.basis == StepBasis::notified ? notified : succeeded;
  const std::uint64_t step = config_.increment_after == 0 ? 0 : count / config_.increment_after;
  const double factor = std::isfinite(config_.factor) && config_.factor > 1.0 ? config_.factor : 1.0;
  const double rate = base * std::pow(factor, static_cast<double>(step));
  if (!std::isfinite(rate) || rate > cap) return cap;
  return rate;
}

void Pacer::refill(std::int64_t now_ms) {
  const double rate = state_.rate_per_minute;
  if (rate <= 0) {
    state_.tokens = 0;
    state_.refilled_at_ms = now_ms;
    return;
  }
  if (now_ms > state_.refilled_at_ms) {
    // The difference of two int64 may overflow; time far apart earns a full bucket anyway.
    const double elapsed = static_cast<double>(now_ms) - static_cast<double>(state_.refilled_at_ms);
    state_.tokens = std::min(state_.tokens + rate * elapsed / kMsPerMinute, token_cap(rate));
  }
  // A clock that went backwards earns nothing and does not stall the pacer.
  state_.refilled_at_ms = now_ms;
}

void Pacer::apply_step(std::uint64_t notified, std::uint64_t succeeded) {
  if (config_.kind == RolloutKind::exponential && config_.increment_after > 0) {
    const std::uint64_t count = config_.basis == StepBasis::notified ? notified : succeeded;
    state_.step = static_cast<std::uint32_t>(
        std::min<std::uint64_t>(count / config_.increment_after, std::numeric_limits<std::uint32_t>::max()));
  } else {
    state_.step = 0;
  }
  state_.rate_per_minute = rate_for(notified, succeeded);
  if (state_.rate_per_minute > 0) state_.tokens = std::min(state_.tokens, token_cap(state_.rate_per_minute));
}

std::uint64_t Pacer::allowance(std::int64_t now_ms, std::uint64_t notified, std::uint64_t succeeded) {
  refill(now_ms);
  apply_step(notified, succeeded);
  if (state_.rate_per_minute <= 0) return std::numeric_limits<std::uint64_t>::max();
  if (state_.tokens + kTokenEpsilon < 1.0) return 0;
  return static_cast<std::uint64_t>(std::floor(state_.tokens + kTokenEpsilon));
}

std::int64_t Pacer::next_allowed_ms(std::int64_t now_ms, std::uint64_t notified, std::uint64_t succeeded) const {
  Pacer probe = *this;
  probe.refill(now_ms);
  probe.apply_step(notified, succeeded);
  const double rate = probe.state_.rate_per_minute;
  if (rate <= 0 || probe.state_.tokens + kTokenEpsilon >= 1.0) return now_ms;
  const double wait = std::ceil((1.0 - probe.state_.tokens) * kMsPerMinute / rate);
  constexpr double kMaxWait = 1e15;  // ~31,000 years: keeps the sum in range
  const auto wait_ms = static_cast<std::int64_t>(std::min(std::max(wait, 1.0), kMaxWait));
  return now_ms > std::numeric_limits<std::int64_t>::max() - wait_ms ? std::numeric_limits<std::int64_t>::max()
                                                                     : now_ms + wait_ms;
}

void Pacer::consume(std::uint64_t n, std::int64_t now_ms) {
  refill(now_ms);
  if (state_.rate_per_minute <= 0) return;
  state_.tokens -= static_cast<double>(n);
}

void Pacer::pause(std::int64_t now_ms) {
  // Never moves back: time already paid for must not be paid again.
  state_.refilled_at_ms = std::max(state_.refilled_at_ms, now_ms);
}

v1::PacerState initial_pacer(const v1::RolloutSpec& spec, std::int64_t now_ms) {
  return to_proto(Pacer::initial_state(from_proto(spec), now_ms));
}

std::uint64_t pacer_allowance(const v1::RolloutSpec& spec, v1::PacerState& state, std::int64_t now_ms,
                              std::uint64_t notified, std::uint64_t succeeded) {
  Pacer pacer(from_proto(spec), from_proto(state));
  const auto allowed = pacer.allowance(now_ms, notified, succeeded);
  state = to_proto(pacer.state());
  return allowed;
}

std::int64_t pacer_next_ms(const v1::RolloutSpec& spec, const v1::PacerState& state, std::int64_t now_ms,
                           std::uint64_t notified, std::uint64_t succeeded) {
  return Pacer(from_proto(spec), from_proto(state)).next_allowed_ms(now_ms, notified, succeeded);
}

void pacer_consume(v1::PacerState& state, std::uint64_t n) {
  if (state.rate_per_minute() <= 0) return;
  state.set_tokens(state.tokens() - static_cast<double>(n));
}

void pacer_pause(const v1::RolloutSpec& spec, v1::PacerState& state, std::int64_t now_ms) {
  Pacer pacer(from_proto(spec), from_proto(state));
  pacer.pause(now_ms);
  state = to_proto(pacer.state());
}

std::int64_t device_jitter_ms(std::string_view job_id, std::string_view device_id, std::int64_t jitter_ms) {
  if (jitter_ms <= 0) return 0;
  constexpr std::uint64_t kOffsetBasis = 14695981039346656037ULL;
  constexpr std::uint64_t kPrime = 1099511628211ULL;
  std::uint64_t h = kOffsetBasis;
  auto mix = [&](std::string_view bytes) {
    for (const char c : bytes) {
      h ^= static_cast<unsigned char>(c);
      h *= kPrime;
    }
  };
  mix(job_id);
  mix(std::string_view("\xff", 1));  // never part of an id: "ab"+"c" and "a"+"bc" differ
  mix(device_id);
  // FNV-1a's high bits mix poorly for short inputs; a final avalanche (MurmurHash3's fmix64)
  // spreads every input bit before the reduction.
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return static_cast<std::int64_t>(h % static_cast<std::uint64_t>(jitter_ms));
}

Result<AbortRule> parse_abort_rule(std::string_view text) { return parse_rule_at(text, 0, text.size()); }

Result<std::vector<AbortRule>> parse_abort_rules(std::string_view text) {
  std::vector<AbortRule> rules;
  std::size_t begin = 0;
  while (true) {
    const auto comma = text.find(',', begin);
    const std::size_t end = comma == std::string_view::npos ? text.size() : comma;
    if (trim(text.substr(begin, end - begin)).empty()) {
      return make_error(Errc::invalid_argument, "abort rule '{}': column {}: expected a rule such as FAILED>5%@50",
                        text, begin + 1);
    }
    auto rule = parse_rule_at(text, begin, end);
    if (!rule) return std::move(rule).error();
    rules.push_back(*rule);
    if (comma == std::string_view::npos) break;
    begin = comma + 1;
  }
  return rules;
}

std::string format_abort_rule(const AbortRule& rule) {
  return fmt::format("{}>{}%@{}", state_name(rule.state), rule.threshold_percent, rule.min_executions);
}

std::string format_abort_rules(const std::vector<AbortRule>& rules) {
  std::string out;
  for (const auto& rule : rules) {
    if (!out.empty()) out += ',';
    out += format_abort_rule(rule);
  }
  return out;
}

Status validate(const AbortRule& rule) {
  if (rule.state != v1::EXECUTION_FAILED && rule.state != v1::EXECUTION_TIMED_OUT &&
      rule.state != v1::EXECUTION_REJECTED) {
    return make_error(Errc::invalid_argument, "abort rule: state {} is not FAILED, TIMED_OUT or REJECTED",
                      static_cast<int>(rule.state));
  }
  if (!std::isfinite(rule.threshold_percent) || rule.threshold_percent <= 0 || rule.threshold_percent > 100) {
    return make_error(Errc::invalid_argument, "abort rule {}: threshold must be more than 0% and at most 100%",
                      format_abort_rule(rule));
  }
  if (rule.min_executions < 1) {
    return make_error(Errc::invalid_argument, "abort rule {}: minimum must be at least 1", format_abort_rule(rule));
  }
  return {};
}

AbortRule from_proto(const v1::AbortRule& rule) {
  return AbortRule{rule.state(), rule.threshold_percent(), rule.min_executions()};
}

v1::AbortRule to_proto(const AbortRule& rule) {
  v1::AbortRule out;
  out.set_state(rule.state);
  out.set_threshold_percent(rule.threshold_percent);
  out.set_min_executions(rule.min_executions);
  return out;
}

std::optional<AbortVerdict> first_fired(const std::vector<AbortRule>& rules, const AbortCounts& counts) {
  if (counts.finished == 0) return std::nullopt;
  const auto finished = static_cast<double>(counts.finished);
  for (const auto& rule : rules) {
    if (counts.finished < rule.min_executions) continue;
    const auto count = static_cast<double>(count_in(counts, rule.state));
    if (count * 100.0 <= rule.threshold_percent * finished) continue;
    return AbortVerdict{rule, fmt::format("{} {:.1f}% of {} executions > {}%", state_name(rule.state),
                                          count * 100.0 / finished, counts.finished, rule.threshold_percent)};
  }
  return std::nullopt;
}

std::optional<std::string> evaluate_abort(const std::vector<AbortRule>& rules, const AbortCounts& counts) {
  auto verdict = first_fired(rules, counts);
  if (!verdict) return std::nullopt;
  return std::move(verdict->reason);
}

bool retry_allowed(v1::ExecutionState state, std::uint32_t attempts, std::uint32_t max_retries) {
  if (state != v1::EXECUTION_FAILED && state != v1::EXECUTION_TIMED_OUT) return false;
  return attempts <= max_retries;
}

}  // namespace flotilla::manager
