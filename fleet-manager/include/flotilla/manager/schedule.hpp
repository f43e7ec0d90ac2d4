#pragma once
// When a job may dispatch: start/end times, durations, IANA time zones read from the system's
// TZif files, and cron-based maintenance windows. Pure logic over Unix milliseconds passed in by
// the caller: nothing here reads the clock or touches the process's TZ / localtime state.
// TimeZone, CronSpec and MaintenanceWindow are immutable values safe to share between threads;
// ZoneDatabase is thread-safe.
//
// Maintenance window semantics (cron evaluated in the window's zone, minute resolution):
// - The window opens at every local minute the cron matches and stays open for `duration` of
//   elapsed time (so a window spanning a DST change is as long as it says, in real time).
// - Day of month and day of week: as in Vixie cron and cronie, when both fields are restricted
//   a day matching either is enough; when either starts with '*' both must match.
// - A start that falls into a spring-forward gap (02:30 on 29 March 2026 in Europe/Berlin does
//   not exist) opens the window when the clock jumps (03:00 CEST, 01:00 UTC), like cron running
//   a skipped job right after the jump; the window still lasts its full duration from there.
// - A start that occurs twice in a fall-back overlap (02:30 on 25 October 2026 in Berlin) opens
//   the window once, at the first occurrence (02:30 CEST, 00:30 UTC), as cron does for jobs at a
//   fixed time.
// - Overlapping openings merge: the window is open while any opening's duration covers now.

#include <bitset>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::manager {

inline constexpr std::int64_t kNeverMs = std::numeric_limits<std::int64_t>::max();
inline constexpr std::chrono::milliseconds kMaxWindowDuration = std::chrono::hours(24 * 7);

// "10m", "1h30m", "2d", "90s", "250ms": one or more number+unit parts, units in decreasing order
// (d, h, m, s, ms; each part read by config::parse_duration; a bare number is seconds).
// Errors: invalid_argument.
Result<std::chrono::milliseconds> parse_compound_duration(std::string_view text);
// "1h30m", "2d", "0s": the shortest text parse_compound_duration() reads back.
std::string format_compound_duration(std::chrono::milliseconds d);

// `--start` / `--end`: "now", "+30m" / "+1h30m" (relative to now_ms), or RFC 3339
// ("2026-11-21T02:00:00Z", "2026-11-21T03:00:00.5+01:00"; 't', 'z' and a space separator are
// accepted). Years 1970..9999. Errors: invalid_argument naming the part that is wrong.
Result<std::int64_t> parse_time(std::string_view text, std::int64_t now_ms);
// RFC 3339 in UTC: "2026-11-21T02:00:00Z", with ".123" when the milliseconds are not zero.
std::string format_time(std::int64_t unix_ms);

// Days since 1970-01-01 of a proleptic Gregorian date, and back.
std::int64_t days_from_civil(std::int64_t year, unsigned month, unsigned day) noexcept;
struct CivilDate {
  std::int64_t year = 1970;
  unsigned month = 1;    // 1..12
  unsigned day = 1;      // 1..31
  unsigned weekday = 4;  // 0 = Sunday
};
CivilDate civil_from_days(std::int64_t days) noexcept;

// One local time type of a zone.
struct ZoneOffset {
  std::int32_t utc_offset_s = 0;  // seconds east of UTC
  bool is_dst = false;
  std::string abbreviation;  // "CET", "+0530"
};

// An IANA time zone: the transitions of a TZif file and the POSIX TZ rule of its footer for
// instants after the last transition (RFC 8536, versions 1 to 4, "fat" or "slim").
class TimeZone {
 public:
  static TimeZone utc();
  // Errors: parse_error ("TZif: ...": bad magic, truncated, counts or indices out of range,
  // unsorted transitions, bad footer), invalid_argument (files with leap seconds, the right/
  // zones, are not supported).
  static Result<TimeZone> from_tzif(std::string_view bytes, std::string name);
  // A POSIX TZ rule as found in TZif footers: "CET-1CEST,M3.5.0,M10.5.0/3", "<+0530>-5:30",
  // "<-02>2<-01>,M3.5.0/-1,M10.5.0/0" (RFC 8536 extensions included). Errors: parse_error.
  static Result<TimeZone> from_posix(std::string_view rule, std::string name = {});

  [[nodiscard]] const std::string& name() const noexcept;
  // The footer rule ("" when the file has none).
  [[nodiscard]] const std::string& posix_rule() const noexcept;
  [[nodiscard]] std::size_t transition_count() const noexcept;

  [[nodiscard]] ZoneOffset at(std::int64_t unix_s) const;
  [[nodiscard]] std::int32_t offset_at(std::int64_t unix_s) const;
  // Local civil seconds (seconds since 1970-01-01T00:00 on the local wall clock) to the instant
  // they denote, with the window rules above: the earlier instant in an overlap, the instant the
  // clock jumps in a gap.
  [[nodiscard]] std::int64_t from_local(std::int64_t local_s) const;

 private:
  struct Data;
  explicit TimeZone(std::shared_ptr<const Data> data);
  std::shared_ptr<const Data> data_;
};

// Zones read from a zoneinfo directory and cached after the first load. Thread-safe.
class ZoneDatabase {
 public:
  explicit ZoneDatabase(std::filesystem::path root = "/usr/share/zoneinfo");
  // The process-wide database over /usr/share/zoneinfo.
  static ZoneDatabase& system();

  // "Europe/Berlin", "America/New_York", "UTC" (built in). Errors: invalid_argument (not a zone
  // name: empty, absolute, "..", unexpected characters), not_found (unknown zone), io_error,
  // parse_error / invalid_argument (a file that is not a usable TZif zone).
  Result<std::shared_ptr<const TimeZone>> find(std::string_view name);

 private:
  std::filesystem::path root_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<const TimeZone>, std::less<>> cache_;
};

// Checks a zone name without reading anything. Errors: invalid_argument.
Status validate_zone_name(std::string_view name);

// A five-field cron expression (minute hour day-of-month month day-of-week) with '*', lists,
// ranges, steps ("*/15", "1-30/5", "10/20" = "10-59/20"), month and day names ("jan", "sat"),
// 7 as Sunday, and the macros @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly.
class CronSpec {
 public:
  // Errors: invalid_argument naming the field and the item ("day-of-week: 'fri-mon': the range
  // ends before it starts"); also when no date can ever match ("0 0 30 2 *").
  static Result<CronSpec> parse(std::string_view text);

  // Whether the local civil minute (minutes since 1970-01-01T00:00 local) matches.
  [[nodiscard]] bool matches(std::int64_t local_minute) const;
  // The first matching local minute at or after `local_minute`, and the last at or before it.
  // nullopt when there is none within 10 years.
  [[nodiscard]] std::optional<std::int64_t> next_match(std::int64_t local_minute) const;
  [[nodiscard]] std::optional<std::int64_t> prev_match(std::int64_t local_minute) const;
  // The expression as given, whitespace normalised.
  [[nodiscard]] const std::string& text() const noexcept { return text_; }

 private:
  [[nodiscard]] bool day_matches(const CivilDate& date) const;
  [[nodiscard]] std::optional<int> first_minute_from(int minute_of_day) const;
  [[nodiscard]] std::optional<int> last_minute_to(int minute_of_day) const;

  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> days_;     // 1..31
  std::bitset<13> months_;   // 1..12
  std::bitset<7> weekdays_;  // 0 = Sunday
  bool days_star_ = false;
  bool weekdays_star_ = false;
  std::string text_;
};

// A recurring maintenance window: `cron="0 2 * * 6" duration=2h tz=Europe/Berlin`, or the short
// form `0 2 * * 6 2h Europe/Berlin` (cron, duration up to 7 days, optional IANA zone, UTC by
// default). Immutable; copies share the zone.
class MaintenanceWindow {
 public:
  // Errors: invalid_argument (syntax, cron, duration), the zone database's (unknown zone, ...).
  static Result<MaintenanceWindow> parse(std::string_view text);
  static Result<MaintenanceWindow> parse(std::string_view text, ZoneDatabase& zones);

  [[nodiscard]] bool contains(std::int64_t now_ms) const;
  // The start of the next window, or now_ms when inside one; kNeverMs when it never opens again.
  [[nodiscard]] std::int64_t next_open(std::int64_t now_ms) const;
  // When the window that contains now_ms closes (later openings that overlap it included);
  // now_ms when outside; kNeverMs when it does not close within 32 days.
  [[nodiscard]] std::int64_t current_close(std::int64_t now_ms) const;

  // The first opening at or after `at_ms` and the last at or before it (nullopt: none within 10
  // years, or at_ms outside years 1..9999).
  [[nodiscard]] std::optional<std::int64_t> next_start(std::int64_t at_ms) const;
  [[nodiscard]] std::optional<std::int64_t> last_start(std::int64_t at_ms) const;

  [[nodiscard]] const CronSpec& cron() const noexcept { return cron_; }
  [[nodiscard]] std::chrono::milliseconds duration() const noexcept { return duration_; }
  [[nodiscard]] const TimeZone& zone() const noexcept { return *zone_; }
  // Canonical text: `cron="0 2 * * 6" duration=2h tz=Europe/Berlin`.
  [[nodiscard]] std::string to_string() const;

 private:
  MaintenanceWindow(CronSpec cron, std::chrono::milliseconds duration, std::shared_ptr<const TimeZone> zone);
  [[nodiscard]] std::int64_t start_ms(std::int64_t local_minute) const;
  [[nodiscard]] std::int64_t first_minute_at_or_after(std::int64_t at_ms) const;

  CronSpec cron_;
  std::chrono::milliseconds duration_{0};
  std::shared_ptr<const TimeZone> zone_;
};

// Several windows: open when any is open; no windows means always open.
bool in_any_window(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms);
// now_ms when open; the earliest next opening otherwise (kNeverMs: none).
std::int64_t next_open(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms);
// When the union of the windows stops covering now_ms (now_ms when closed; kNeverMs with no
// windows or no close within 32 days).
std::int64_t current_close(const std::vector<MaintenanceWindow>& windows, std::int64_t now_ms);

}  // namespace flotilla::manager
