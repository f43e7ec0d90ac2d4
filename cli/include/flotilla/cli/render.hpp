#pragma once
// Pure renderers of manager replies for the `flotilla` CLI: tables for people, protobuf JSON for
// scripts. No I/O and no clock reads (the caller passes `now_ms`), so tests check them directly.
// Any thread may call them.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <google/protobuf/message.h>

#include "flotilla/core/names.hpp"
#include "flotilla/core/result.hpp"
#include "flotilla/v1/manager.pb.h"
#include "flotilla/v1/record.pb.h"

namespace flotilla::cli {

// Binary units with one decimal above 1 KiB: "512 B", "1.5 KiB", "15.6 GiB".
std::string format_bytes(std::uint64_t bytes);

// Age of a Unix-ms timestamp relative to `now_ms`, in its largest whole unit: "4s ago", "3m ago",
// "2h ago", "5d ago". "never" when `then_ms` <= 0; a timestamp ahead of `now_ms` (clock skew)
// reads "0s ago".
std::string format_age(std::int64_t then_ms, std::int64_t now_ms);

// A span of seconds in its two largest units: "3d 4h", "2h 5m", "7m 12s", "45s".
std::string format_uptime(std::uint64_t seconds);

// Columns ID, KIND, STATUS, OS, FIRMWARE, MODEL, LAST SEEN, left-aligned and padded to the widest
// cell; empty cells read "-". The header is printed even for an empty list.
std::string render_devices_table(const std::vector<v1::DeviceRecord>& devices, std::int64_t now_ms);

// Columns VALUE, COUNT, then a TOTAL line. An empty value reads "(empty)".
std::string render_count_table(const v1::CountDevicesResponse& counts);

// Record, inventory summary (package count, not the packages) and latest telemetry.
std::string render_device_detail(const v1::DeviceDetail& detail, std::int64_t now_ms);

// Instance, version, uptime, device counts, ingest counters, dropped and event counters (sorted).
std::string render_manager_stats(const v1::ManagerStats& stats, std::int64_t now_ms);

// One compact JSON document (protobuf's JSON mapping with proto field names and every primitive
// field printed), without a trailing newline.
// Errors: internal when protobuf refuses to print the message (e.g. invalid UTF-8 in a string).
Result<std::string> to_json(const google::protobuf::Message& message);

// Aligns rows of cells into columns separated by two spaces; trailing padding is trimmed.
// Cells of columns listed in `right_aligned` are right-aligned. Every line ends with '\n' and
// starts with `indent`.
std::string render_columns(const std::vector<std::vector<std::string>>& rows, std::string_view indent = {},
                           const std::vector<std::size_t>& right_aligned = {});

// Query results: ID then one column per projected field (times rendered as ages), then the
// total and, when there is one, how to fetch the next page; the plan follows when requested.
std::string render_query_table(const v1::QueryDevicesResponse& page, std::int64_t now_ms);
std::string render_stats(const v1::DeviceStats& stats);
std::string render_group(const v1::GroupInfo& info, std::int64_t now_ms);
std::string render_groups(const v1::GroupList& list);
std::string render_explanation(const v1::MembershipExplanation& explanation);
// What devices delete removed: columns ID, KIND, WAS, LAST SEEN, GROUPS LEFT, then a count line,
// and for each device deleted while online a line saying it registers again when it next sends.
std::string render_deleted_devices(const v1::DeletedDevices& deleted, std::int64_t now_ms);
// Membership events as received (newest first): columns SEQ, TIME (UTC), GROUP, DEVICE, CHANGE
// (joined or left), REASON; then "next page: --cursor SEQ" when older events may follow.
std::string render_group_events(const v1::GroupEvents& events);

}  // namespace flotilla::cli
