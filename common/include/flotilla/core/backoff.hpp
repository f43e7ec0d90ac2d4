#pragma once
// Full-jitter exponential backoff: delay = uniform(0, min(cap, base * 2^attempt)). Spreads a
// fleet's reconnects after a broker restart instead of synchronising them into a storm.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <random>

namespace flotilla {

class Backoff {
 public:
  using Duration = std::chrono::milliseconds;

  Backoff(Duration base, Duration cap, std::uint64_t seed) : base_(base), cap_(cap), rng_(seed) {}

  // Delay before the next attempt; each call counts one more failed attempt.
  Duration next() {
    const auto ceiling = ceiling_for(attempt_);
    if (attempt_ < 62) ++attempt_;
    std::uniform_int_distribution<std::int64_t> dist(0, ceiling.count());
    return Duration(dist(rng_));
  }

  void reset() { attempt_ = 0; }
  std::uint32_t attempts() const { return attempt_; }

  // The upper bound of the delay for a given attempt number.
  Duration ceiling_for(std::uint32_t attempt) const {
    const auto shift = std::min<std::uint32_t>(attempt, 30);
    const auto grown = base_.count() * (std::int64_t{1} << shift);
    return Duration(std::min<std::int64_t>(grown, cap_.count()));
  }

 private:
  Duration base_;
  Duration cap_;
  std::uint32_t attempt_ = 0;
  std::mt19937_64 rng_;
};

// Uniform jitter of +/- `fraction` around a period, for periodic work across a fleet.
inline std::chrono::milliseconds jittered(std::chrono::milliseconds period, double fraction, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> dist(1.0 - fraction, 1.0 + fraction);
  return std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(period.count()) * dist(rng)));
}

}  // namespace flotilla
