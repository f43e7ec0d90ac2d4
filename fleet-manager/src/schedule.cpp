#include "flotilla/manager/schedule.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <fstream>
#include <iterator>
#include <system_error>

#include "flotilla/core/config.hpp"

namespace flotilla::manager {
namespace {

constexpr std::int64_t kSecondsPerDay = 86'400;
constexpr std::int64_t kMinutesPerDay = 1'440;
// How far cron searches look: covers the 8 years between two 29 Februaries around 2100.
constexpr std::int64_t kSearchDays = 3'700;
// How far current_close() follows overlapping or adjacent openings.
constexpr std::int64_t kCloseHorizonMs = 32 * kSecondsPerDay * 1000;
constexpr std::uintmax_t kMaxZoneFileBytes = 256 * 1024;
constexpr std::int32_t kMaxUtcOffset = 26 * 3600;
// Window arithmetic stays within years 1..9999, far from int64 overflow.
constexpr std::int64_t kMaxInstantMs = 253'402'300'800'000;  // 10000-01-01T00:00:00Z
constexpr std::int64_t kMinInstantMs = -62'135'596'800'000;  // 0001-01-01T00:00:00Z

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
char to_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (to_lower(a[i]) != to_lower(b[i])) return false;
  }
  return true;
}

std::vector<std::string_view> split_spaces(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    const std::size_t start = i;
    while (i < s.size() && !is_space(s[i])) ++i;
    if (i > start) out.push_back(s.substr(start, i - start));
  }
  return out;
}

bool is_leap(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

unsigned days_in_month(std::int64_t y, unsigned m) {
  static constexpr std::array<unsigned, 12> kDays{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : kDays[m - 1];
}

std::optional<int> parse_int(std::string_view s) {
  if (s.empty() || s.size() > 9) return std::nullopt;
  int value = 0;
  const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc{} || ptr != s.data() + s.size()) return std::nullopt;
  return value;
}

// ---- POSIX TZ rules (TZif footers) ----

struct RuleDate {
  enum class Kind { julian, zero_based, month_week_day };
  Kind kind = Kind::month_week_day;
  int day = 0;  // J: 1..365, n: 0..365
  int month = 0;
  int week = 0;
  int weekday = 0;
};

struct PosixRule {
  std::string std_abbr;
  std::int32_t std_offset = 0;  // seconds east of UTC
  bool has_dst = false;
  std::string dst_abbr;
  std::int32_t dst_offset = 0;
  RuleDate start;
  RuleDate end;
  std::int32_t start_time = 7200;  // local standard time
  std::int32_t end_time = 7200;    // local daylight time
};

class PosixParser {
 public:
  explicit PosixParser(std::string_view text) : text_(text) {}

  Result<PosixRule> parse() {
    PosixRule rule;
    if (auto st = name(rule.std_abbr); !st) return std::move(st).error();
    auto std_off = offset(24);
    if (!std_off) return std::move(std_off).error();
    rule.std_offset = -*std_off;
    if (at_end()) return rule;
    rule.has_dst = true;
    if (auto st = name(rule.dst_abbr); !st) return std::move(st).error();
    rule.dst_offset = rule.std_offset + 3600;
    if (!at_end() && peek() != ',') {
      auto dst_off = offset(24);
      if (!dst_off) return std::move(dst_off).error();
      rule.dst_offset = -*dst_off;
    }
    if (at_end()) {
      // No rule: the POSIX default, the US rules of 2007.
      rule.start = RuleDate{RuleDate::Kind::month_week_day, 0, 3, 2, 0};
      rule.end = RuleDate{RuleDate::Kind::month_week_day, 0, 11, 1, 0};
      return rule;
    }
    if (!eat(',')) return fail("expected ',' before the DST start rule");
    if (auto st = date_and_time(rule.start, rule.start_time); !st) return std::move(st).error();
    if (!eat(',')) return fail("expected ',' before the DST end rule");
    if (auto st = date_and_time(rule.end, rule.end_time); !st) return std::move(st).error();
    if (!at_end()) return fail("unexpected text after the rule");
    return rule;
  }

 private:
  [[nodiscard]] bool at_end() const { return pos_ >= text_.size(); }
  [[nodiscard]] char peek() const { return at_end() ? '\0' : text_[pos_]; }
  bool eat(char c) {
    if (peek() != c) return false;
    ++pos_;
    return true;
  }
  Error fail(std::string_view what) const {
    return make_error(Errc::parse_error, "TZ rule '{}': column {}: {}", text_, pos_ + 1, what);
  }

  Status name(std::string& out) {
    const std::size_t start = pos_;
    if (eat('<')) {
      while (!at_end() && (is_alpha(peek()) || is_digit(peek()) || peek() == '+' || peek() == '-')) ++pos_;
      const std::size_t len = pos_ - start - 1;
      if (!eat('>')) return fail("unterminated '<' zone abbreviation");
      if (len < 3) return fail("zone abbreviation shorter than 3 characters");
      out = std::string(text_.substr(start + 1, len));
      return {};
    }
    while (!at_end() && is_alpha(peek())) ++pos_;
    if (pos_ - start < 3) return fail("expected a zone abbreviation of 3 or more letters");
    out = std::string(text_.substr(start, pos_ - start));
    return {};
  }

  // [+-]hh[:mm[:ss]] in seconds, hours at most max_hours.
  Result<std::int32_t> offset(int max_hours) {
    int sign = 1;
    if (eat('-')) {
      sign = -1;
    } else {
      eat('+');
    }
    auto number = [&](std::size_t max_digits) -> std::optional<int> {
      const std::size_t start = pos_;
      while (!at_end() && is_digit(peek()) && pos_ - start < max_digits) ++pos_;
      return parse_int(text_.substr(start, pos_ - start));
    };
    const auto hours = number(3);
    if (!hours || *hours > max_hours) return fail("expected hours");
    int minutes = 0;
    int seconds = 0;
    if (eat(':')) {
      const auto m = number(2);
      if (!m || *m > 59) return fail("expected minutes");
      minutes = *m;
      if (eat(':')) {
        const auto s = number(2);
        if (!s || *s > 59) return fail("expected seconds");
        seconds = *s;
      }
    }
    return sign * (*hours * 3600 + minutes * 60 + seconds);
  }

  Status date_and_time(RuleDate& date, std::int32_t& time) {
    auto number = [&]() -> std::optional<int> {
      const std::size_t start = pos_;
      while (!at_end() && is_digit(peek()) && pos_ - start < 3) ++pos_;
      return parse_int(text_.substr(start, pos_ - start));
    };
    if (eat('J')) {
      const auto n = number();
      if (!n || *n < 1 || *n > 365) return fail("expected a Julian day 1..365");
      date = RuleDate{RuleDate::Kind::julian, *n, 0, 0, 0};
    } else if (eat('M')) {
      const auto m = number();
      if (!m || *m < 1 || *m > 12 || !eat('.')) return fail("expected Mm.w.d");
      const auto w = number();
      if (!w || *w < 1 || *w > 5 || !eat('.')) return fail("expected Mm.w.d");
      const auto d = number();
      if (!d || *d > 6) return fail("expected Mm.w.d");
      date = RuleDate{RuleDate::Kind::month_week_day, 0, *m, *w, *d};
    } else {
      const auto n = number();
      if (!n || *n > 365) return fail("expected a day 0..365");
      date = RuleDate{RuleDate::Kind::zero_based, *n, 0, 0, 0};
    }
    time = 7200;
    if (eat('/')) {
      // RFC 8536 allows -167..167 hours here.
      auto t = offset(167);
      if (!t) return std::move(t).error();
      time = *t;
    }
    return {};
  }

  std::string_view text_;
  std::size_t pos_ = 0;
};

std::int64_t rule_day(const RuleDate& date, std::int64_t year) {
  const std::int64_t jan1 = days_from_civil(year, 1, 1);
  switch (date.kind) {
    case RuleDate::Kind::julian: return jan1 + date.day - 1 + (is_leap(year) && date.day >= 60 ? 1 : 0);
    case RuleDate::Kind::zero_based: return jan1 + date.day;
    case RuleDate::Kind::month_week_day: break;
  }
  const auto month = static_cast<unsigned>(date.month);
  const std::int64_t first = days_from_civil(year, month, 1);
  const auto first_weekday = static_cast<int>(civil_from_days(first).weekday);
  std::int64_t day = first + (date.weekday - first_weekday + 7) % 7 + static_cast<std::int64_t>(date.week - 1) * 7;
  while (day >= first + days_in_month(year, month)) day -= 7;
  return day;
}

ZoneOffset rule_at(const PosixRule& rule, std::int64_t t) {
  if (!rule.has_dst) return ZoneOffset{rule.std_offset, false, rule.std_abbr};
  const std::int64_t year = civil_from_days(floor_div(t + rule.std_offset, kSecondsPerDay)).year;
  struct Event {
    std::int64_t at;
    bool dst;
  };
  std::array<Event, 6> events{};
  std::size_t n = 0;
  for (std::int64_t y = year - 1; y <= year + 1; ++y) {
    events[n++] = Event{rule_day(rule.start, y) * kSecondsPerDay + rule.start_time - rule.std_offset, true};
    events[n++] = Event{rule_day(rule.end, y) * kSecondsPerDay + rule.end_time - rule.dst_offset, false};
  }
  // On a tie (DST all year, "EST5EDT4,0/0,J365/25") the start wins.
  std::sort(events.begin(), events.end(),
            [](const Event& a, const Event& b) { return a.at != b.at ? a.at < b.at : (!a.dst && b.dst); });
  bool dst = false;
  for (const auto& e : events) {
    if (e.at > t) break;
    dst = e.dst;
  }
  return dst ? ZoneOffset{rule.dst_offset, true, rule.dst_abbr} : ZoneOffset{rule.std_offset, false, rule.std_abbr};
}

// ---- TZif ----

class ByteReader {
 public:
  explicit ByteReader(std::string_view bytes) : bytes_(bytes) {}
  [[nodiscard]] std::size_t remaining() const { return bytes_.size() - pos_; }
  [[nodiscard]] std::size_t position() const { return pos_; }
  std::uint8_t u8() { return static_cast<std::uint8_t>(bytes_[pos_++]); }
  std::uint32_t be32() {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v = (v << 8) | u8();
    return v;
  }
  std::uint64_t be64() {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v = (v << 8) | u8();
    return v;
  }
  std::string_view take(std::size_t n) {
    const auto s = bytes_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  void skip(std::size_t n) { pos_ += n; }

 private:
  std::string_view bytes_;
  std::size_t pos_ = 0;
};

struct TzifHeader {
  char version = 0;
  std::uint32_t isutcnt = 0;
  std::uint32_t isstdcnt = 0;
  std::uint32_t leapcnt = 0;
  std::uint32_t timecnt = 0;
  std::uint32_t typecnt = 0;
  std::uint32_t charcnt = 0;

  [[nodiscard]] std::uint64_t block_size(std::uint64_t time_size) const {
    return std::uint64_t{timecnt} * time_size + timecnt + std::uint64_t{typecnt} * 6 + charcnt +
           std::uint64_t{leapcnt} * (time_size + 4) + isstdcnt + isutcnt;
  }
};

Result<TzifHeader> read_header(ByteReader& in) {
  if (in.remaining() < 44) return make_error(Errc::parse_error, "TZif: truncated header");
  if (in.take(4) != "TZif") return make_error(Errc::parse_error, "TZif: bad magic (not a TZif file)");
  TzifHeader h;
  h.version = static_cast<char>(in.u8());
  if (h.version != 0 && h.version < '2') {
    return make_error(Errc::parse_error, "TZif: unknown version byte {}", static_cast<int>(h.version));
  }
  in.skip(15);
  h.isutcnt = in.be32();
  h.isstdcnt = in.be32();
  h.leapcnt = in.be32();
  h.timecnt = in.be32();
  h.typecnt = in.be32();
  h.charcnt = in.be32();
  return h;
}

}  // namespace

std::int64_t days_from_civil(std::int64_t year, unsigned month, unsigned day) noexcept {
  const std::int64_t y = year - (month <= 2 ? 1 : 0);
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;
  const std::int64_t mp = month > 2 ? month - 3 : month + 9;
  const std::int64_t doy = (153 * mp + 2) / 5 + day - 1;
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146'097 + doe - 719'468;
}

CivilDate civil_from_days(std::int64_t days) noexcept {
  const std::int64_t z = days + 719'468;
  const std::int64_t era = (z >= 0 ? z : z - 146'096) / 146'097;
  const std::int64_t doe = z - era * 146'097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36'524 - doe / 146'096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  CivilDate out;
  out.day = static_cast<unsigned>(doy - (153 * mp + 2) / 5 + 1);
  out.month = static_cast<unsigned>(mp < 10 ? mp + 3 : mp - 9);
  out.year = yoe + era * 400 + (out.month <= 2 ? 1 : 0);
  // 1970-01-01 was a Thursday.
  out.weekday = static_cast<unsigned>(((days % 7) + 7 + 4) % 7);
  return out;
}

// ---- durations and times ----

Result<std::chrono::milliseconds> parse_compound_duration(std::string_view text) {
  const auto t = trim(text);
  auto fail = [&](std::string_view what) {
    return make_error(Errc::invalid_argument, "duration '{}': {} (e.g. 10m, 1h30m, 2d)", text, what);
  };
  if (t.empty()) return fail("empty");
  std::chrono::milliseconds total{0};
  int last_rank = -1;
  std::size_t i = 0;
  while (i < t.size()) {
    const std::size_t start = i;
    while (i < t.size() && is_digit(t[i])) ++i;
    if (i == start) return fail(fmt::format("expected a number at '{}'", t.substr(start)));
    const std::size_t unit_start = i;
    while (i < t.size() && is_alpha(t[i])) ++i;
    const auto unit = t.substr(unit_start, i - unit_start);
    int rank = 0;
    if (unit == "d") {
      rank = 0;
    } else if (unit == "h") {
      rank = 1;
    } else if (unit == "m") {
      rank = 2;
    } else if (unit == "s" || unit.empty()) {
      rank = 3;
    } else if (unit == "ms") {
      rank = 4;
    } else {
      return fail(fmt::format("unknown unit '{}' (d, h, m, s, ms)", unit));
    }
    if (rank <= last_rank) return fail("units must go from larger to smaller, each once");
    last_rank = rank;
    auto part = config::parse_duration(t.substr(start, i - start));
    if (!part) return fail(part.error().message);
    if (part->count() > std::numeric_limits<std::int64_t>::max() - total.count()) return fail("too long");
    total += *part;
  }
  return total;
}

std::string format_compound_duration(std::chrono::milliseconds d) {
  std::int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    if (ms == std::numeric_limits<std::int64_t>::min()) return fmt::format("{}ms", ms);
    out = "-";
    ms = -ms;
  }
  static constexpr std::array<std::pair<std::int64_t, std::string_view>, 5> kUnits{
      {{86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1'000, "s"}, {1, "ms"}}};
  for (const auto& [size, name] : kUnits) {
    if (ms >= size) {
      out += fmt::format("{}{}", ms / size, name);
      ms %= size;
    }
  }
  return out;
}

Result<std::int64_t> parse_time(std::string_view text, std::int64_t now_ms) {
  const auto t = trim(text);
  if (iequals(t, "now")) return now_ms;
  if (!t.empty() && t.front() == '+') {
    auto d = parse_compound_duration(t.substr(1));
    if (!d) return make_error(Errc::invalid_argument, "time '{}': {}", text, d.error().message);
    if (d->count() > std::numeric_limits<std::int64_t>::max() - now_ms) {
      return make_error(Errc::invalid_argument, "time '{}': too far in the future", text);
    }
    return now_ms + d->count();
  }
  auto fail = [&](std::string_view what) {
    return make_error(Errc::invalid_argument,
                      "time '{}': {} (expected now, +DURATION or RFC 3339 such as 2026-11-21T02:00:00Z)", text, what);
  };
  // YYYY-MM-DDTHH:MM:SS[.fff](Z|+HH:MM|-HH:MM)
  auto digits = [&](std::size_t at, std::size_t n) -> std::optional<int> {
    if (at + n > t.size()) return std::nullopt;
    for (std::size_t k = at; k < at + n; ++k) {
      if (!is_digit(t[k])) return std::nullopt;
    }
    return parse_int(t.substr(at, n));
  };
  auto expect = [&](std::size_t at, char c) { return at < t.size() && t[at] == c; };
  const auto year = digits(0, 4);
  const auto month = digits(5, 2);
  const auto day = digits(8, 2);
  if (!year || !expect(4, '-') || !month || !expect(7, '-') || !day) return fail("bad date");
  if (t.size() < 11 || (t[10] != 'T' && t[10] != 't' && t[10] != ' ')) return fail("expected 'T' after the date");
  const auto hour = digits(11, 2);
  const auto minute = digits(14, 2);
  const auto second = digits(17, 2);
  if (!hour || !expect(13, ':') || !minute || !expect(16, ':') || !second) return fail("bad time of day");
  if (*year < 1970) return fail("year before 1970");
  if (*month < 1 || *month > 12) return fail("month out of range");
  if (*day < 1 || static_cast<unsigned>(*day) > days_in_month(*year, static_cast<unsigned>(*month))) {
    return fail("day out of range for the month");
  }
  if (*hour > 23) return fail("hour out of range");
  if (*minute > 59) return fail("minute out of range");
  if (*second > 59) return fail("second out of range (leap seconds are not accepted)");
  std::size_t pos = 19;
  std::int64_t millis = 0;
  if (expect(pos, '.')) {
    ++pos;
    const std::size_t start = pos;
    while (pos < t.size() && is_digit(t[pos])) ++pos;
    const std::size_t n = pos - start;
    if (n == 0 || n > 9) return fail("bad fraction of a second");
    for (std::size_t k = 0; k < 3; ++k) millis = millis * 10 + (k < n ? t[start + k] - '0' : 0);
  }
  std::int64_t offset_s = 0;
  if (expect(pos, 'Z') || expect(pos, 'z')) {
    ++pos;
  } else if (expect(pos, '+') || expect(pos, '-')) {
    const int sign = t[pos] == '-' ? -1 : 1;
    const auto oh = digits(pos + 1, 2);
    const auto om = digits(pos + 4, 2);
    if (!oh || !expect(pos + 3, ':') || !om || *oh > 23 || *om > 59) return fail("bad UTC offset (+HH:MM)");
    offset_s = sign * (*oh * 3600 + *om * 60);
    pos += 6;
  } else {
    return fail("missing time zone (Z or +HH:MM)");
  }
  if (pos != t.size()) return fail(fmt::format("unexpected '{}'", t.substr(pos)));
  const std::int64_t seconds = days_from_civil(*year, static_cast<unsigned>(*month), static_cast<unsigned>(*day)) *
                                   kSecondsPerDay +
                               *hour * 3600 + *minute * 60 + *second - offset_s;
  if (seconds < 0) return fail("before 1970-01-01T00:00:00Z");
  return seconds * 1000 + millis;
}

std::string format_time(std::int64_t unix_ms) {
  const std::int64_t seconds = floor_div(unix_ms, 1000);
  const std::int64_t millis = unix_ms - seconds * 1000;
  const std::int64_t days = floor_div(seconds, kSecondsPerDay);
  const std::int64_t sod = seconds - days * kSecondsPerDay;
  const auto date = civil_from_days(days);
  std::string out = fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", date.year, date.month, date.day, sod / 3600,
                                sod / 60 % 60, sod % 60);
  if (millis != 0) out += fmt::format(".{:03}", millis);
  out += 'Z';
  return out;
}

// ---- TimeZone ----

struct TimeZone::Data {
  std::string name;
  std::string footer;
  std::vector<std::int64_t> transitions;
  std::vector<std::uint8_t> type_of;  // per transition
  std::vector<ZoneOffset> types;
  std::optional<PosixRule> rule;
};

TimeZone::TimeZone(std::shared_ptr<const Data> data) : data_(std::move(data)) {}

TimeZone TimeZone::utc() {
  static const auto data = [] {
    auto d = std::make_shared<Data>();
    d->name = "UTC";
    d->types.push_back(ZoneOffset{0, false, "UTC"});
    return std::shared_ptr<const Data>(std::move(d));
  }();
  return TimeZone(data);
}

Result<TimeZone> TimeZone::from_posix(std::string_view rule, std::string name) {
  auto parsed = PosixParser(rule).parse();
  if (!parsed) return std::move(parsed).error();
  auto d = std::make_shared<Data>();
  d->name = name.empty() ? std::string(rule) : std::move(name);
  d->footer = std::string(rule);
  d->types.push_back(ZoneOffset{parsed->std_offset, false, parsed->std_abbr});
  d->rule = std::move(parsed).value();
  return TimeZone(std::move(d));
}

Result<TimeZone> TimeZone::from_tzif(std::string_view bytes, std::string name) {
  ByteReader in(bytes);
  auto first = read_header(in);
  if (!first) return std::move(first).error();
  TzifHeader h = *first;
  std::uint64_t time_size = 4;
  if (h.version != 0) {
    // Version 2+: skip the 32-bit block; the 64-bit one after the second header is the truth.
    const auto v1_size = h.block_size(4);
    if (v1_size > in.remaining()) return make_error(Errc::parse_error, "TZif: truncated version 1 data");
    in.skip(static_cast<std::size_t>(v1_size));
    auto second = read_header(in);
    if (!second) return std::move(second).error();
    h = *second;
    time_size = 8;
  }
  if (h.typecnt == 0 || h.typecnt > 256) {
    return make_error(Errc::parse_error, "TZif: {} local time types (1..256 allowed)", h.typecnt);
  }
  if (h.charcnt == 0 || h.charcnt > 65'536) {
    return make_error(Errc::parse_error, "TZif: {} abbreviation bytes", h.charcnt);
  }
  if (h.timecnt > 100'000) return make_error(Errc::parse_error, "TZif: {} transitions is too many", h.timecnt);
  if ((h.isutcnt != 0 && h.isutcnt != h.typecnt) || (h.isstdcnt != 0 && h.isstdcnt != h.typecnt)) {
    return make_error(Errc::parse_error, "TZif: standard/UT indicator counts do not match the type count");
  }
  if (h.leapcnt != 0) {
    return make_error(Errc::invalid_argument, "TZif: zones with leap seconds (right/...) are not supported");
  }
  if (h.block_size(time_size) > in.remaining()) return make_error(Errc::parse_error, "TZif: truncated data block");

  auto d = std::make_shared<Data>();
  d->name = std::move(name);
  d->transitions.reserve(h.timecnt);
  for (std::uint32_t i = 0; i < h.timecnt; ++i) {
    const std::int64_t at = time_size == 8 ? static_cast<std::int64_t>(in.be64())
                                           : static_cast<std::int64_t>(static_cast<std::int32_t>(in.be32()));
    if (!d->transitions.empty() && at <= d->transitions.back()) {
      return make_error(Errc::parse_error, "TZif: transition times are not in ascending order");
    }
    d->transitions.push_back(at);
  }
  d->type_of.reserve(h.timecnt);
  for (std::uint32_t i = 0; i < h.timecnt; ++i) {
    const auto index = in.u8();
    if (index >= h.typecnt) return make_error(Errc::parse_error, "TZif: transition {} names type {}", i, index);
    d->type_of.push_back(index);
  }
  struct RawType {
    std::int32_t offset;
    bool dst;
    std::uint8_t abbr;
  };
  std::vector<RawType> raw;
  for (std::uint32_t i = 0; i < h.typecnt; ++i) {
    const auto offset = static_cast<std::int32_t>(in.be32());
    const auto dst = in.u8();
    const auto abbr = in.u8();
    if (offset < -kMaxUtcOffset || offset > kMaxUtcOffset) {
      return make_error(Errc::parse_error, "TZif: type {} has UTC offset {} s", i, offset);
    }
    if (dst > 1) return make_error(Errc::parse_error, "TZif: type {} has DST flag {}", i, dst);
    if (abbr >= h.charcnt) return make_error(Errc::parse_error, "TZif: type {} abbreviation index out of range", i);
    raw.push_back(RawType{offset, dst == 1, abbr});
  }
  const auto chars = in.take(h.charcnt);
  for (const auto& r : raw) {
    const auto end = chars.find('\0', r.abbr);
    if (end == std::string_view::npos) return make_error(Errc::parse_error, "TZif: abbreviation not terminated");
    d->types.push_back(ZoneOffset{r.offset, r.dst, std::string(chars.substr(r.abbr, end - r.abbr))});
  }
  in.skip(h.isstdcnt + h.isutcnt);  // only meaningful for POSIX-style TZ strings without rules

  if (time_size == 8) {
    if (in.remaining() < 2 || in.u8() != '\n') return make_error(Errc::parse_error, "TZif: missing footer");
    const auto rest = bytes.substr(in.position());
    const auto newline = rest.find('\n');
    if (newline == std::string_view::npos) return make_error(Errc::parse_error, "TZif: footer not terminated");
    const auto footer = rest.substr(0, newline);
    if (!footer.empty()) {
      auto rule = PosixParser(footer).parse();
      if (!rule) return make_error(Errc::parse_error, "TZif footer: {}", rule.error().message);
      d->footer = std::string(footer);
      d->rule = std::move(rule).value();
    }
  }
  return TimeZone(std::move(d));
}

const std::string& TimeZone::name() const noexcept { return data_->name; }
const std::string& TimeZone::posix_rule() const noexcept { return data_->footer; }
std::size_t TimeZone::transition_count() const noexcept { return data_->transitions.size(); }

ZoneOffset TimeZone::at(std::int64_t unix_s) const {
  const auto& d = *data_;
  if (d.transitions.empty()) return d.rule ? rule_at(*d.rule, unix_s) : d.types.front();
  if (unix_s < d.transitions.front()) return d.types.front();
  if (unix_s > d.transitions.back() && d.rule) return rule_at(*d.rule, unix_s);
  const auto it = std::upper_bound(d.transitions.begin(), d.transitions.end(), unix_s);
  const auto index = static_cast<std::size_t>(std::distance(d.transitions.begin(), it)) - 1;
  return d.types[d.type_of[index]];
}

std::int32_t TimeZone::offset_at(std::int64_t unix_s) const {
  const auto& d = *data_;
  if (d.transitions.empty() && !d.rule) return d.types.front().utc_offset_s;
  return at(unix_s).utc_offset_s;
}

std::int64_t TimeZone::from_local(std::int64_t local_s) const {
  constexpr std::int64_t kProbe = 2 * kSecondsPerDay;
  std::array<std::int32_t, 6> offsets{
      offset_at(local_s - kProbe), offset_at(local_s), offset_at(local_s + kProbe), 0, 0, 0};
  for (std::size_t i = 0; i < 3; ++i) offsets[3 + i] = offset_at(local_s - offsets[i]);
  std::optional<std::int64_t> best;
  for (const auto o : offsets) {
    const std::int64_t u = local_s - o;
    if (offset_at(u) == o && (!best || u < *best)) best = u;
  }
  if (best) return *best;
  // A gap: the wall clock jumped over local_s. The answer is the instant of the jump.
  const auto [lo_it, hi_it] = std::minmax_element(offsets.begin(), offsets.end());
  if (*lo_it == *hi_it) return local_s - *lo_it;
  std::int64_t lo = local_s - *hi_it;
  std::int64_t hi = local_s - *lo_it;
  const auto before = offset_at(lo);
  if (offset_at(hi) == before) return hi;
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (offset_at(mid) == before) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return hi;
}

// ---- ZoneDatabase ----

Status validate_zone_name(std::string_view name) {
  if (name.empty()) return make_error(Errc::invalid_argument, "time zone: empty name");
  if (name.size() > 255) return make_error(Errc::invalid_argument, "time zone: name too long");
  for (const char c : name) {
    if (!(is_alpha(c) || is_digit(c) || c == '/' || c == '_' || c == '-' || c == '+' || c == '.')) {
      return make_error(Errc::invalid_argument, "time zone '{}': unexpected character '{}'", name, c);
    }
  }
  if (name.front() == '/') return make_error(Errc::invalid_argument, "time zone '{}': must not be a path", name);
  std::size_t start = 0;
  while (start <= name.size()) {
    const auto slash = name.find('/', start);
    const auto part = name.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (part.empty() || part.front() == '.' || part.front() == '-') {
      return make_error(Errc::invalid_argument, "time zone '{}': not a zone name (e.g. Europe/Berlin)", name);
    }
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return {};
}

ZoneDatabase::ZoneDatabase(std::filesystem::path root) : root_(std::move(root)) {}

ZoneDatabase& ZoneDatabase::system() {
  static ZoneDatabase database;
  return database;
}

Result<std::shared_ptr<const TimeZone>> ZoneDatabase::find(std::string_view name) {
  if (auto st = validate_zone_name(name); !st) return std::move(st).error();
  if (name == "UTC") {
    static const auto utc = std::make_shared<const TimeZone>(TimeZone::utc());
    return utc;
  }
  const std::lock_guard lock(mutex_);
  if (auto it = cache_.find(name); it != cache_.end()) return it->second;
  const auto path = root_ / std::string(name);
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) {
    return make_error(Errc::not_found, "unknown time zone '{}' (not in {})", name, root_.string());
  }
  if (!std::filesystem::is_regular_file(status)) {
    return make_error(Errc::not_found, "unknown time zone '{}' (not a zone file in {})", name, root_.string());
  }
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return make_error(Errc::io_error, "time zone '{}': {}: {}", name, path.string(), ec.message());
  if (size > kMaxZoneFileBytes) return make_error(Errc::parse_error, "time zone '{}': file too large", name);
  std::ifstream file(path, std::ios::binary);
  if (!file) return make_error(Errc::io_error, "time zone '{}': cannot open {}", name, path.string());
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) return make_error(Errc::io_error, "time zone '{}': cannot read {}", name, path.string());
  auto zone = TimeZone::from_tzif(bytes, std::string(name));
  if (!zone) return Error{zone.error().code, fmt::format("time zone '{}': {}", name, zone.error().message)};
  auto shared = std::make_shared<const TimeZone>(std::move(zone).value());
  cache_.emplace(std::string(name), shared);
  return shared;
}

// ---- CronSpec ----

namespace {

struct FieldSpec {
  std::string_view name;
  int lo;
  int hi;       // highest value accepted in a list or range
  int star_hi;  // highest value '*' stands for
  const std::array<std::string_view, 12>* names;
  int names_base;
};

constexpr std::array<std::string_view, 12> kMonthNames{"jan", "feb", "mar", "apr", "may", "jun",
                                                       "jul", "aug", "sep", "oct", "nov", "dec"};
constexpr std::array<std::string_view, 12> kDayNames{"sun", "mon", "tue", "wed", "thu", "fri",
                                                     "sat", "",    "",    "",    "",    ""};

Result<int> field_value(const FieldSpec& f, std::string_view cron, std::string_view item, std::string_view text) {
  if (!text.empty() && is_digit(text.front())) {
    const auto v = parse_int(text);
    if (!v) return make_error(Errc::invalid_argument, "cron '{}': {}: '{}': not a number", cron, f.name, item);
    if (*v < f.lo || *v > f.hi) {
      return make_error(Errc::invalid_argument, "cron '{}': {}: '{}': {} is out of range {}-{}", cron, f.name, item, *v,
                        f.lo, f.hi);
    }
    return *v;
  }
  if (f.names != nullptr) {
    for (std::size_t i = 0; i < f.names->size(); ++i) {
      if (!(*f.names)[i].empty() && iequals(text, (*f.names)[i])) return static_cast<int>(i) + f.names_base;
    }
  }
  return make_error(Errc::invalid_argument, "cron '{}': {}: '{}': '{}' is not a value{}", cron, f.name, item, text,
                    f.names == nullptr ? "" : " or a name");
}

// Sets the bits of one field; `star` tells whether it starts with '*'.
template <std::size_t N>
Status parse_field(const FieldSpec& f, std::string_view cron, std::string_view field, std::bitset<N>& bits,
                   bool& star) {
  star = !field.empty() && field.front() == '*';
  std::size_t start = 0;
  while (true) {
    const auto comma = field.find(',', start);
    const auto item = field.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    if (item.empty()) return make_error(Errc::invalid_argument, "cron '{}': {}: empty list item", cron, f.name);
    auto range = item;
    int step = 1;
    bool stepped = false;
    if (const auto slash = item.find('/'); slash != std::string_view::npos) {
      range = item.substr(0, slash);
      const auto s = parse_int(item.substr(slash + 1));
      if (!s || *s < 1 || *s > f.star_hi - f.lo + 1) {
        return make_error(Errc::invalid_argument, "cron '{}': {}: '{}': step must be 1-{}", cron, f.name, item,
                          f.star_hi - f.lo + 1);
      }
      step = *s;
      stepped = true;
    }
    int first = 0;
    int last = 0;
    if (range == "*") {
      first = f.lo;
      last = f.star_hi;
    } else if (const auto dash = range.find('-'); dash != std::string_view::npos) {
      auto a = field_value(f, cron, item, range.substr(0, dash));
      if (!a) return std::move(a).error();
      auto b = field_value(f, cron, item, range.substr(dash + 1));
      if (!b) return std::move(b).error();
      if (*b < *a) {
        return make_error(Errc::invalid_argument, "cron '{}': {}: '{}': the range ends before it starts", cron, f.name,
                          item);
      }
      first = *a;
      last = *b;
    } else {
      auto a = field_value(f, cron, item, range);
      if (!a) return std::move(a).error();
      first = *a;
      last = stepped ? f.star_hi : *a;  // "10/20" is "10-59/20"
    }
    for (int v = first; v <= last; v += step) bits.set(static_cast<std::size_t>(v % static_cast<int>(N)));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  return {};
}

}  // namespace

Result<CronSpec> CronSpec::parse(std::string_view text) {
  auto fields = split_spaces(text);
  std::string expanded;
  if (fields.size() == 1 && fields.front().front() == '@') {
    const auto macro = fields.front();
    if (iequals(macro, "@yearly") || iequals(macro, "@annually")) {
      expanded = "0 0 1 1 *";
    } else if (iequals(macro, "@monthly")) {
      expanded = "0 0 1 * *";
    } else if (iequals(macro, "@weekly")) {
      expanded = "0 0 * * 0";
    } else if (iequals(macro, "@daily") || iequals(macro, "@midnight")) {
      expanded = "0 0 * * *";
    } else if (iequals(macro, "@hourly")) {
      expanded = "0 * * * *";
    } else {
      return make_error(Errc::invalid_argument,
                        "cron '{}': unknown macro (@yearly, @monthly, @weekly, @daily, @hourly)", text);
    }
    auto spec = parse(expanded);
    if (spec) spec->text_ = std::string(macro);
    return spec;
  }
  if (fields.size() != 5) {
    return make_error(Errc::invalid_argument,
                      "cron '{}': expected 5 fields (minute hour day-of-month month day-of-week), got {}", text,
                      fields.size());
  }
  CronSpec spec;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    if (i > 0) spec.text_ += ' ';
    spec.text_ += fields[i];
  }
  const std::string_view cron = spec.text_;
  bool unused = false;
  if (auto st = parse_field(FieldSpec{"minute", 0, 59, 59, nullptr, 0}, cron, fields[0], spec.minutes_, unused); !st) {
    return std::move(st).error();
  }
  if (auto st = parse_field(FieldSpec{"hour", 0, 23, 23, nullptr, 0}, cron, fields[1], spec.hours_, unused); !st) {
    return std::move(st).error();
  }
  if (auto st = parse_field(FieldSpec{"day-of-month", 1, 31, 31, nullptr, 0}, cron, fields[2], spec.days_,
                            spec.days_star_);
      !st) {
    return std::move(st).error();
  }
  if (auto st = parse_field(FieldSpec{"month", 1, 12, 12, &kMonthNames, 1}, cron, fields[3], spec.months_, unused);
      !st) {
    return std::move(st).error();
  }
  if (auto st = parse_field(FieldSpec{"day-of-week", 0, 7, 6, &kDayNames, 0}, cron, fields[4], spec.weekdays_,
                            spec.weekdays_star_);
      !st) {
    return std::move(st).error();
  }
  // When the day of the month must match (either field starts with '*'), some allowed month must
  // have one of the allowed days (29 February counts).
  if (spec.days_star_ || spec.weekdays_star_) {
    bool possible = false;
    for (unsigned m = 1; m <= 12 && !possible; ++m) {
      if (!spec.months_[m]) continue;
      for (unsigned day = 1; day <= days_in_month(2000, m); ++day) {
        if (spec.days_[day]) {
          possible = true;
          break;
        }
      }
    }
    if (!possible) return make_error(Errc::invalid_argument, "cron '{}': no date ever matches", cron);
  }
  return spec;
}

bool CronSpec::day_matches(const CivilDate& date) const {
  const bool day = days_[date.day];
  const bool weekday = weekdays_[date.weekday];
  return days_star_ || weekdays_star_ ? day && weekday : day || weekday;
}

std::optional<int> CronSpec::first_minute_from(int minute_of_day) const {
  for (int h = minute_of_day / 60; h < 24; ++h) {
    if (!hours_[static_cast<std::size_t>(h)]) continue;
    for (int m = h == minute_of_day / 60 ? minute_of_day % 60 : 0; m < 60; ++m) {
      if (minutes_[static_cast<std::size_t>(m)]) return h * 60 + m;
    }
  }
  return std::nullopt;
}

std::optional<int> CronSpec::last_minute_to(int minute_of_day) const {
  for (int h = minute_of_day / 60; h >= 0; --h) {
    if (!hours_[static_cast<std::size_t>(h)]) continue;
    for (int m = h == minute_of_day / 60 ? minute_of_day % 60 : 59; m >= 0; --m) {
      if (minutes_[static_cast<std::size_t>(m)]) return h * 60 + m;
    }
  }
  return std::nullopt;
}

bool CronSpec::matches(std::int64_t local_minute) const {
  const std::int64_t day = floor_div(local_minute, kMinutesPerDay);
  const auto minute_of_day = static_cast<int>(local_minute - day * kMinutesPerDay);
  const auto date = civil_from_days(day);
  return months_[date.month] && day_matches(date) && hours_[static_cast<std::size_t>(minute_of_day / 60)] &&
         minutes_[static_cast<std::size_t>(minute_of_day % 60)];
}

std::optional<std::int64_t> CronSpec::next_match(std::int64_t local_minute) const {
  std::int64_t day = floor_div(local_minute, kMinutesPerDay);
  auto minute_of_day = static_cast<int>(local_minute - day * kMinutesPerDay);
  const std::int64_t last_day = day + kSearchDays;
  while (day <= last_day) {
    const auto date = civil_from_days(day);
    if (!months_[date.month]) {
      day = date.month == 12 ? days_from_civil(date.year + 1, 1, 1) : days_from_civil(date.year, date.month + 1, 1);
      minute_of_day = 0;
      continue;
    }
    if (day_matches(date)) {
      if (const auto m = first_minute_from(minute_of_day)) return day * kMinutesPerDay + *m;
    }
    ++day;
    minute_of_day = 0;
  }
  return std::nullopt;
}

std::optional<std::int64_t> CronSpec::prev_match(std::int64_t local_minute) const {
  std::int64_t day = floor_div(local_minute, kMinutesPerDay);
  auto minute_of_day = static_cast<int>(local_minute - day * kMinutesPerDay);
  const std::int64_t first_day = day - kSearchDays;
  while (day >= first_day) {
    const auto date = civil_from_days(day);
    if (!months_[date.month]) {
      day = days_from_civil(date.year, date.month, 1) - 1;
      minute_of_day = static_cast<int>(kMinutesPerDay) - 1;
      continue;
    }
    if (day_matches(date)) {
      if (const auto m = last_minute_to(minute_of_day)) return day * kMinutesPerDay + *m;
    }
    --day;
    minute_of_day = static_cast<int>(kMinutesPerDay) - 1;
  }
  return std::nullopt;
}

// ---- MaintenanceWindow ----

MaintenanceWindow::MaintenanceWindow(CronSpec cron, std::chrono::milliseconds duration,
                                     std::shared_ptr<const TimeZone> zone)
    : cron_(std::move(cron)), duration_(duration), zone_(std::move(zone)) {}

Result<MaintenanceWindow> MaintenanceWindow::parse(std::string_view text) {
  return parse(text, ZoneDatabase::system());
}

Result<MaintenanceWindow> MaintenanceWindow::parse(std::string_view text, ZoneDatabase& zones) {
  const auto t = trim(text);
  std::string cron_text;
  std::string duration_text;
  std::string zone_text = "UTC";
  if (t.find('=') != std::string_view::npos) {
    // cron="0 2 * * 6" duration=2h tz=Europe/Berlin
    bool have_cron = false;
    bool have_duration = false;
    bool have_zone = false;
    std::size_t i = 0;
    while (true) {
      while (i < t.size() && is_space(t[i])) ++i;
      if (i >= t.size()) break;
      const std::size_t key_start = i;
      while (i < t.size() && (is_alpha(t[i]) || t[i] == '_')) ++i;
      const auto key = t.substr(key_start, i - key_start);
      if (key.empty() || i >= t.size() || t[i] != '=') {
        return make_error(Errc::invalid_argument, "column {}: expected KEY=VALUE (cron=, duration=, tz=)",
                          key_start + 1);
      }
      ++i;
      std::string_view value;
      if (i < t.size() && t[i] == '"') {
        const auto close = t.find('"', i + 1);
        if (close == std::string_view::npos) {
          return make_error(Errc::invalid_argument, "column {}: unterminated quote", i + 1);
        }
        value = t.substr(i + 1, close - i - 1);
        i = close + 1;
        if (i < t.size() && !is_space(t[i])) {
          return make_error(Errc::invalid_argument, "column {}: expected a space after the quoted value", i + 1);
        }
      } else {
        const std::size_t value_start = i;
        while (i < t.size() && !is_space(t[i])) ++i;
        value = t.substr(value_start, i - value_start);
      }
      bool* seen = nullptr;
      std::string* target = nullptr;
      if (key == "cron") {
        seen = &have_cron;
        target = &cron_text;
      } else if (key == "duration") {
        seen = &have_duration;
        target = &duration_text;
      } else if (key == "tz" || key == "zone") {
        seen = &have_zone;
        target = &zone_text;
      } else {
        return make_error(Errc::invalid_argument, "unknown key '{}' (cron, duration, tz)", key);
      }
      if (*seen) return make_error(Errc::invalid_argument, "'{}' is given twice", key);
      *seen = true;
      *target = std::string(value);
    }
    if (!have_cron) return make_error(Errc::invalid_argument, "cron= is missing");
    if (!have_duration) return make_error(Errc::invalid_argument, "duration= is missing");
  } else {
    // 0 2 * * 6 2h Europe/Berlin
    const auto tokens = split_spaces(t);
    std::size_t rest = 0;
    if (!tokens.empty() && tokens.front().front() == '@') {
      cron_text = std::string(tokens.front());
      rest = 1;
    } else {
      if (tokens.size() < 6) {
        return make_error(
            Errc::invalid_argument,
            "expected 'MINUTE HOUR DAY MONTH WEEKDAY DURATION [ZONE]' (e.g. 0 2 * * sat 4h Europe/Berlin)");
      }
      for (std::size_t k = 0; k < 5; ++k) {
        if (k > 0) cron_text += ' ';
        cron_text += tokens[k];
      }
      rest = 5;
    }
    if (tokens.size() <= rest) return make_error(Errc::invalid_argument, "the duration is missing (e.g. 2h)");
    if (tokens.size() > rest + 2) {
      return make_error(Errc::invalid_argument, "unexpected '{}' after the time zone", tokens[rest + 2]);
    }
    duration_text = std::string(tokens[rest]);
    if (tokens.size() == rest + 2) zone_text = std::string(tokens[rest + 1]);
  }
  auto cron = CronSpec::parse(cron_text);
  if (!cron) return std::move(cron).error();
  auto duration = parse_compound_duration(duration_text);
  if (!duration) return std::move(duration).error();
  if (duration->count() <= 0 || *duration > kMaxWindowDuration) {
    return make_error(Errc::invalid_argument, "duration '{}': must be more than 0 and at most 7d", duration_text);
  }
  auto zone = zones.find(zone_text);
  if (!zone) return std::move(zone).error();
  return MaintenanceWindow(std::move(cron).value(), *duration, std::move(zone).value());
}

std::int64_t MaintenanceWindow::start_ms(std::int64_t local_minute) const {
  return zone_->from_local(local_minute * 60) * 1000;
}

std::int64_t MaintenanceWindow::first_minute_at_or_after(std::int64_t at_ms) const {
  // start_ms() never decreases with the local minute, so a binary search around the local time
  // of at_ms finds the first local minute that starts at or after it. 50 hours either side
  // covers any offset change on record (Samoa skipped a whole day).
  const std::int64_t at_s = floor_div(at_ms, 1000);
  const std::int64_t guess = floor_div(at_s + zone_->offset_at(at_s), 60);
  // Away from offset changes the answer is the local minute of at_ms or the one after it.
  for (std::int64_t m = guess; m <= guess + 1; ++m) {
    if (start_ms(m) >= at_ms && start_ms(m - 1) < at_ms) return m;
  }
  std::int64_t lo = guess - 50 * 60;
  std::int64_t hi = guess + 50 * 60;
  if (start_ms(lo) >= at_ms) return lo;
  if (start_ms(hi) < at_ms) return hi + 1;
  while (hi - lo > 1) {
    const std::int64_t mid = lo + (hi - lo) / 2;
    if (start_ms(mid) >= at_ms) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return hi;
}

std::optional<std::int64_t> MaintenanceWindow::next_start(std::int64_t at_ms) const {
  if (at_ms < kMinInstantMs || at_ms > kMaxInstantMs) return std::nullopt;
  const auto minute = cron_.next_match(first_minute_at_or_after(at_ms));
  if (!minute) return std::nullopt;
  return start_ms(*minute);
}

std::optional<std::int64_t> MaintenanceWindow::last_start(std::int64_t at_ms) const {
  if (at_ms < kMinInstantMs || at_ms > kMaxInstantMs) return std::nullopt;
  const auto minute = cron_.prev_match(first_minute_at_or_after(at_ms + 1) - 1);
  if (!minute) return std::nullopt;
  return start_ms(*minute);
}

bool MaintenanceWindow::contains(std::int64_t now_ms) const {
  const auto start = last_start(now_ms);
  return start && now_ms - *start < duration_.count();
}

std::int64_t MaintenanceWindow::next_open(std::int64_t now_ms) const {
  if (contains(now_ms)) return now_ms;
  const auto start = next_start(now_ms);
  return start ? *start : kNeverMs;
}

std::int64_t MaintenanceWindow::current_close(std::int64_t now_ms) const {
  const auto start = last_start(now_ms);
  if (!start || now_ms - *start >= duration_.count()) return now_ms;
  std::int64_t close = *start + duration_.count();
  while (close - now_ms <= kCloseHorizonMs) {
    // An opening at or before `close` whose duration reaches further extends the window.
    const auto later = last_start(close);
    if (!later || *later + duration_.count() <= close) return close;
    close = *later + duration_.count();
  }
  return kNeverMs;
}

std::string MaintenanceWindow::to_string() const {
  return fmt::format("cron=\"{}\" duration={} tz={}", cron_.text(), format_compound_duration(duration_), zone_->name());
}

bool in_any_window(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms) {
  if (windows.empty()) return true;
  return std::any_of(windows.begin(), windows.end(), [&](const auto& w) { return w.contains(now_ms); });
}

std::int64_t next_open(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms) {
  if (windows.empty()) return now_ms;
  std::int64_t next = kNeverMs;
  for (const auto& w : windows) next = std::min(next, w.next_open(now_ms));
  return next;
}

std::int64_t current_close(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms) {
  if (windows.empty()) return kNeverMs;
  if (!in_any_window(windows, now_ms)) return now_ms;
  std::int64_t close = now_ms;
  bool extended = true;
  while (extended) {
    extended = false;
    for (const auto& w : windows) {
      if (!w.contains(close)) continue;
      const auto c = w.current_close(close);
      if (c == kNeverMs) return kNeverMs;
      if (c > close) {
        close = c;
        extended = true;
      }
    }
    if (close - now_ms > kCloseHorizonMs) return kNeverMs;
  }
  return close;
}

}  // namespace flotilla::manager
