#include "flotilla/cli/render.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <map>

#include <fmt/format.h>
#include <google/protobuf/util/json_util.h>

#include "flotilla/cli/render_jobs.hpp"

namespace flotilla::cli {
namespace {

using Rows = std::vector<std::vector<std::string>>;

// Terminal columns taken by UTF-8 text, counting code points (no wide-character handling).
std::size_t display_width(std::string_view text) {
  return static_cast<std::size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0U) != 0x80U; }));
}

std::string or_dash(const std::string& text) { return text.empty() ? std::string("-") : text; }

std::string join_nonempty(std::initializer_list<std::string_view> parts, std::string_view sep = " ") {
  std::string out;
  for (auto part : parts) {
    if (part.empty()) continue;
    if (!out.empty()) out += sep;
    out += part;
  }
  return out;
}

std::string percent(double value) { return fmt::format("{:.1f}%", value); }

std::string used_share(std::uint64_t used, std::uint64_t total) {
  if (total == 0) return "-";
  return percent(100.0 * static_cast<double>(used) / static_cast<double>(total));
}

// Appends "Key:" / value lines aligned on the value column.
void append_fields(std::string& out, const Rows& fields, std::string_view indent = {}) {
  Rows rows;
  rows.reserve(fields.size());
  for (const auto& f : fields) rows.push_back({f.at(0) + ":", f.at(1)});
  out += render_columns(rows, indent);
}

// `package_count` (from the record) stands in when the manager sent the inventory without its
// package list.
void append_inventory(std::string& out, const v1::Inventory& inv, std::uint32_t package_count) {
  const auto& hw = inv.hardware();
  std::string hardware = join_nonempty({hw.vendor(), hw.model()});
  std::vector<std::string> extras;
  if (!hw.serial().empty()) extras.push_back("serial " + hw.serial());
  if (!hw.firmware_version().empty()) extras.push_back("firmware " + hw.firmware_version());
  if (!hw.architecture().empty()) extras.push_back(hw.architecture());
  if (!extras.empty()) hardware = join_nonempty({hardware, fmt::format("({})", fmt::join(extras, ", "))});

  std::string cpu = inv.cpu().model();
  if (inv.cpu().logical_cores() > 0) {
    cpu = join_nonempty({cpu, fmt::format("({} logical cores)", inv.cpu().logical_cores())});
  }
  std::string memory = inv.memory_total_bytes() > 0 ? format_bytes(inv.memory_total_bytes()) : std::string();
  if (inv.swap_total_bytes() > 0) {
    memory = join_nonempty({memory, "(swap " + format_bytes(inv.swap_total_bytes()) + ")"});
  }

  const auto& os = inv.os();
  std::string os_text = !os.pretty_name().empty() ? os.pretty_name() : join_nonempty({os.name(), os.version()});
  if (!os.kernel().empty()) os_text = join_nonempty({os_text, "kernel " + os.kernel()}, ", ");

  const auto packages = inv.packages_size() > 0 ? static_cast<std::uint32_t>(inv.packages_size()) : package_count;

  out += "\nInventory\n";
  append_fields(out,
                {{"Hardware", or_dash(hardware)},
                 {"CPU", or_dash(cpu)},
                 {"Memory", or_dash(memory)},
                 {"OS", or_dash(os_text)},
                 {"Hostname", or_dash(os.hostname())},
                 {"Packages", std::to_string(packages)}},
                "  ");

  if (inv.mounts_size() > 0) {
    out += "  Mounts:\n";
    Rows rows{{"MOUNT", "DEVICE", "FS", "SIZE"}};
    for (const auto& m : inv.mounts()) {
      rows.push_back({m.mount_point(), or_dash(m.device()), or_dash(m.fs_type()), format_bytes(m.total_bytes())});
    }
    out += render_columns(rows, "    ", {3});
  }
  if (inv.interfaces_size() > 0) {
    out += "  Interfaces:\n";
    Rows rows{{"NAME", "MAC", "ADDRESSES"}};
    for (const auto& i : inv.interfaces()) {
      rows.push_back({i.name(), or_dash(i.mac()), or_dash(fmt::format("{}", fmt::join(i.addresses(), ", ")))});
    }
    out += render_columns(rows, "    ");
  }
  if (!inv.attributes().empty()) {
    out += "  Attributes:\n";
    const std::map<std::string, std::string> sorted(inv.attributes().begin(), inv.attributes().end());
    Rows rows;
    for (const auto& [k, v] : sorted) rows.push_back({k, v});
    append_fields(out, rows, "    ");
  }
}

void append_telemetry(std::string& out, const v1::Telemetry& t, std::int64_t now_ms) {
  out += fmt::format("\nTelemetry (sampled {})\n", format_age(t.header().timestamp_ms(), now_ms));
  Rows fields{{"CPU", percent(t.cpu_percent())},
              {"Load", fmt::format("{:.2f} {:.2f} {:.2f}", t.load1(), t.load5(), t.load15())}};
  if (t.memory_total_bytes() > 0) {
    const auto used = t.memory_total_bytes() - std::min(t.memory_available_bytes(), t.memory_total_bytes());
    fields.push_back(
        {"Memory", fmt::format("{} used of {} ({})", format_bytes(used), format_bytes(t.memory_total_bytes()),
                               used_share(used, t.memory_total_bytes()))});
  }
  if (t.swap_total_bytes() > 0) {
    const auto used = t.swap_total_bytes() - std::min(t.swap_free_bytes(), t.swap_total_bytes());
    fields.push_back({"Swap", fmt::format("{} used of {} ({})", format_bytes(used), format_bytes(t.swap_total_bytes()),
                                          used_share(used, t.swap_total_bytes()))});
  }
  fields.push_back({"Uptime", format_uptime(t.uptime_s())});
  append_fields(out, fields, "  ");

  if (t.mounts_size() > 0) {
    out += "  Mounts:\n";
    Rows rows{{"MOUNT", "USED", "SIZE", "AVAIL", "USE%"}};
    for (const auto& m : t.mounts()) {
      rows.push_back({m.mount_point(), format_bytes(m.used_bytes()), format_bytes(m.total_bytes()),
                      format_bytes(m.available_bytes()), used_share(m.used_bytes(), m.total_bytes())});
    }
    out += render_columns(rows, "    ", {1, 2, 3, 4});
  }
  if (t.temperatures_size() > 0) {
    out += "  Temperatures:\n";
    Rows rows{{"SENSOR", "CELSIUS"}};
    for (const auto& temp : t.temperatures()) rows.push_back({temp.sensor(), fmt::format("{:.1f}", temp.celsius())});
    out += render_columns(rows, "    ", {1});
  }
  if (t.batteries_size() > 0) {
    out += "  Batteries:\n";
    Rows rows{{"NAME", "CHARGE", "STATUS"}};
    for (const auto& b : t.batteries()) rows.push_back({b.name(), percent(b.percent()), or_dash(b.status())});
    out += render_columns(rows, "    ", {1});
  }
  if (!t.metrics().empty()) {
    out += "  Metrics:\n";
    const std::map<std::string, double> sorted(t.metrics().begin(), t.metrics().end());
    Rows rows;
    for (const auto& [k, v] : sorted) rows.push_back({k, fmt::format("{:g}", v)});
    append_fields(out, rows, "    ");
  }
}

template <typename Map>
void append_counters(std::string& out, std::string_view title, const Map& counters) {
  if (counters.empty()) {
    out += fmt::format("{}: none\n", title);
    return;
  }
  out += fmt::format("{}:\n", title);
  const std::map<std::string, std::uint64_t> sorted(counters.begin(), counters.end());
  Rows rows;
  for (const auto& [k, v] : sorted) rows.push_back({k, std::to_string(v)});
  out += render_columns(rows, "  ", {1});
}

}  // namespace

std::string format_bytes(std::uint64_t bytes) {
  static constexpr std::array<std::string_view, 6> kUnits{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return fmt::format("{} B", bytes);
  double value = static_cast<double>(bytes) / 1024.0;
  std::size_t unit = 0;
  // Switch units before rounding would print "1024.0".
  while (value >= 1023.95 && unit + 1 < kUnits.size()) {
    value /= 1024.0;
    ++unit;
  }
  return fmt::format("{:.1f} {}", value, kUnits[unit]);
}

std::string format_age(std::int64_t then_ms, std::int64_t now_ms) {
  if (then_ms <= 0) return "never";
  const std::int64_t seconds = std::max<std::int64_t>(0, now_ms - then_ms) / 1000;
  if (seconds < 60) return fmt::format("{}s ago", seconds);
  if (seconds < 3600) return fmt::format("{}m ago", seconds / 60);
  if (seconds < 86400) return fmt::format("{}h ago", seconds / 3600);
  return fmt::format("{}d ago", seconds / 86400);
}

std::string format_uptime(std::uint64_t seconds) {
  const std::uint64_t d = seconds / 86400;
  const std::uint64_t h = seconds % 86400 / 3600;
  const std::uint64_t m = seconds % 3600 / 60;
  const std::uint64_t s = seconds % 60;
  if (d > 0) return fmt::format("{}d {}h", d, h);
  if (h > 0) return fmt::format("{}h {}m", h, m);
  if (m > 0) return fmt::format("{}m {}s", m, s);
  return fmt::format("{}s", s);
}

std::string render_columns(const std::vector<std::vector<std::string>>& rows, std::string_view indent,
                           const std::vector<std::size_t>& right_aligned) {
  std::vector<std::size_t> widths;
  for (const auto& row : rows) {
    if (widths.size() < row.size()) widths.resize(row.size(), 0);
    for (std::size_t c = 0; c < row.size(); ++c) widths[c] = std::max(widths[c], display_width(row[c]));
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line(indent);
    for (std::size_t c = 0; c < row.size(); ++c) {
      if (c > 0) line += "  ";
      const std::string pad(widths[c] - display_width(row[c]), ' ');
      const bool right = std::find(right_aligned.begin(), right_aligned.end(), c) != right_aligned.end();
      line += right ? pad + row[c] : row[c] + pad;
    }
    while (line.size() > indent.size() && line.back() == ' ') line.pop_back();
    out += line;
    out += '\n';
  }
  return out;
}

std::string render_devices_table(const std::vector<v1::DeviceRecord>& devices, std::int64_t now_ms) {
  Rows rows;
  rows.reserve(devices.size() + 1);
  rows.push_back({"ID", "KIND", "STATUS", "OS", "FIRMWARE", "MODEL", "LAST SEEN"});
  for (const auto& d : devices) {
    rows.push_back({d.device_id(), std::string(kind_name(d.kind())), d.online() ? "online" : "offline",
                    or_dash(join_nonempty({d.os_name(), d.os_version()})), or_dash(d.firmware_version()),
                    or_dash(d.hardware_model()), format_age(d.last_seen_ms(), now_ms)});
  }
  return render_columns(rows);
}

std::string render_count_table(const v1::CountDevicesResponse& counts) {
  Rows rows{{"VALUE", "COUNT"}};
  for (const auto& b : counts.buckets()) {
    rows.push_back({b.value().empty() ? "(empty)" : b.value(), std::to_string(b.count())});
  }
  rows.push_back({"TOTAL", std::to_string(counts.total())});
  return render_columns(rows, {}, {1});
}

std::string render_device_detail(const v1::DeviceDetail& detail, std::int64_t now_ms) {
  const auto& r = detail.record();
  std::string status = r.online() ? "online" : "offline";
  if (r.online() && r.connected_since_ms() > 0) {
    status += fmt::format(" (connected {})", format_age(r.connected_since_ms(), now_ms));
  } else if (!r.online() && r.disconnected_at_ms() > 0) {
    status += fmt::format(" (disconnected {})", format_age(r.disconnected_at_ms(), now_ms));
  }
  std::string out;
  append_fields(out, {{"Device", r.device_id()},
                      {"Kind", std::string(kind_name(r.kind()))},
                      {"Status", status},
                      {"Tenant", or_dash(r.tenant())},
                      {"Site", or_dash(r.site())},
                      {"Tags", or_dash(fmt::format("{}", fmt::join(r.tags(), ", ")))},
                      {"Gateway", or_dash(r.gateway_id())},
                      {"Agent", or_dash(r.agent_version())},
                      {"OS", or_dash(join_nonempty({r.os_name(), r.os_version()}))},
                      {"Firmware", or_dash(r.firmware_version())},
                      {"Model", or_dash(join_nonempty({r.hardware_vendor(), r.hardware_model()}))},
                      {"First seen", format_age(r.first_seen_ms(), now_ms)},
                      {"Last seen", format_age(r.last_seen_ms(), now_ms)},
                      {"Session", fmt::format("epoch {}, seq {}", r.session_epoch(), r.last_seq())},
                      {"Messages", fmt::format("{} ({} missing in sequence, {} dropped by the outbox)", r.messages(),
                                               r.seq_gaps(), r.outbox_dropped())}});
  if (detail.has_inventory()) {
    append_inventory(out, detail.inventory(), r.package_count());
  } else {
    out += "\nInventory: none received\n";
  }
  if (detail.has_telemetry()) {
    append_telemetry(out, detail.telemetry(), now_ms);
  } else {
    out += "\nTelemetry: none received\n";
  }
  return out;
}

std::string render_manager_stats(const v1::ManagerStats& s, std::int64_t now_ms) {
  std::string uptime = "-";
  if (s.started_at_ms() > 0) {
    const auto up_s = static_cast<std::uint64_t>(std::max<std::int64_t>(0, now_ms - s.started_at_ms()) / 1000);
    uptime = format_uptime(up_s);
  }
  std::string out;
  append_fields(out, {{"Instance", or_dash(s.instance_id())},
                      {"Version", or_dash(s.version())},
                      {"Uptime", uptime},
                      {"Devices", fmt::format("{} ({} online)", s.devices(), s.devices_online())},
                      {"Messages ingested", std::to_string(s.messages_ingested())},
                      {"Batches written", std::to_string(s.batches_written())}});
  append_counters(out, "Dropped", s.dropped());
  append_counters(out, "Events", s.events());
  return out;
}

std::string render_query_table(const v1::QueryDevicesResponse& page, std::int64_t now_ms) {
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> header{"ID"};
  if (!page.rows().empty()) {
    for (const auto& v : page.rows(0).values()) {
      std::string name = v.name();
      for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      header.push_back(std::move(name));
    }
  }
  rows.push_back(std::move(header));
  for (const auto& r : page.rows()) {
    std::vector<std::string> row{r.device_id()};
    for (const auto& v : r.values()) {
      const bool time = v.name() == "last_seen" || v.name() == "first_seen" || v.name() == "connected_since";
      std::int64_t ms = 0;
      const auto [ptr, ec] = std::from_chars(v.value().data(), v.value().data() + v.value().size(), ms);
      if (time && ec == std::errc{} && ptr == v.value().data() + v.value().size())
        row.push_back(format_age(ms, now_ms));
      else row.push_back(v.value().empty() ? "-" : v.value());
    }
    rows.push_back(std::move(row));
  }
  std::string out = page.rows().empty() ? std::string() : render_columns(rows);
  out += fmt::format("{} of {} matching devices\n", page.rows_size(), page.total());
  if (!page.next_cursor().empty()) out += fmt::format("next page: --cursor {}\n", page.next_cursor());
  if (!page.plan().empty()) out += "\nPlan:\n" + page.plan();
  return out;
}

std::string render_stats(const v1::DeviceStats& s) {
  std::vector<std::vector<std::string>> rows{{"FIELD", s.field()},
                                             {"MATCHED", std::to_string(s.matched())},
                                             {"WITH VALUE", std::to_string(s.count())},
                                             {"DISTINCT", std::to_string(s.distinct())}};
  if (s.count() > 0) {
    for (auto [name, v] : {std::pair{"MIN", s.min()},
                           {"MAX", s.max()},
                           {"AVG", s.avg()},
                           {"SUM", s.sum()},
                           {"P50", s.p50()},
                           {"P90", s.p90()},
                           {"P99", s.p99()}}) {
      rows.push_back({name, fmt::format("{:.6g}", v)});
    }
  }
  return render_columns(rows);
}

std::string render_group(const v1::GroupInfo& info, std::int64_t now_ms) {
  const auto& g = info.group();
  const bool dynamic = g.type() == v1::Group::TYPE_DYNAMIC;
  std::vector<std::vector<std::string>> rows{
      {"Group:", g.name()},
      {"Type:", dynamic ? "dynamic" : "static"},
      {"Parent:", g.parent().empty() ? "-" : g.parent()},
      {"Subgroups:", info.children().empty() ? "-" : fmt::format("{}", fmt::join(info.children(), ", "))},
      {"Members:", fmt::format("{} ({} direct)", info.members(), info.direct_members())},
      {"Created:", g.created_ms() == 0 ? "-" : format_age(g.created_ms(), now_ms)},
      {"Created by:", g.created_by().empty() ? "-" : g.created_by()}};
  if (dynamic) rows.push_back({"Query:", g.query()});
  if (!g.description().empty()) rows.push_back({"Description:", g.description()});
  return render_columns(rows);
}

std::string render_groups(const v1::GroupList& list) {
  std::vector<std::vector<std::string>> rows{{"NAME", "TYPE", "PARENT", "MEMBERS", "QUERY"}};
  for (const auto& info : list.groups()) {
    const auto& g = info.group();
    rows.push_back({g.name(), g.type() == v1::Group::TYPE_DYNAMIC ? "dynamic" : "static",
                    g.parent().empty() ? "-" : g.parent(), std::to_string(info.members()),
                    g.query().empty() ? "-" : g.query()});
  }
  return render_columns(rows, {}, {3});
}

std::string render_explanation(const v1::MembershipExplanation& e) {
  std::string out = e.member() ? "member\n" : "not a member\n";
  for (const auto& l : e.lines()) out += "  " + l + "\n";
  return out;
}

std::string render_deleted_devices(const v1::DeletedDevices& deleted, std::int64_t now_ms) {
  Rows rows{{"ID", "KIND", "WAS", "LAST SEEN", "GROUPS LEFT"}};
  std::vector<std::string> were_online;
  for (const auto& d : deleted.devices()) {
    const auto& r = d.record();
    if (r.online()) were_online.push_back(r.device_id());
    rows.push_back({r.device_id(), std::string(kind_name(r.kind())), r.online() ? "online" : "offline",
                    format_age(r.last_seen_ms(), now_ms),
                    d.groups().empty() ? "-" : fmt::format("{}", fmt::join(d.groups(), ", "))});
  }
  std::string out = render_columns(rows);
  out += fmt::format("{} {} deleted\n", deleted.devices_size(), deleted.devices_size() == 1 ? "device" : "devices");
  for (const auto& id : were_online) {
    out += fmt::format("{} was online: it registers again as a new device when it next sends a message\n", id);
  }
  return out;
}

std::string render_group_events(const v1::GroupEvents& events) {
  Rows rows{{"SEQ", "TIME", "GROUP", "DEVICE", "CHANGE", "REASON"}};
  for (const auto& e : events.events()) {
    rows.push_back({std::to_string(e.seq()), format_utc(e.at_ms()), e.group(), e.device_id(),
                    e.joined() ? "joined" : "left", or_dash(e.reason())});
  }
  std::string out = render_columns(rows, {}, {0});
  if (events.next_cursor() != 0) out += fmt::format("next page: --cursor {}\n", events.next_cursor());
  return out;
}

Result<std::string> to_json(const google::protobuf::Message& message) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string json;
  const auto status = google::protobuf::util::MessageToJsonString(message, &json, options);
  if (!status.ok()) {
    return make_error(Errc::internal, "cannot print {} as JSON: {}", message.GetTypeName(), status.ToString());
  }
  return json;
}

}  // namespace flotilla::cli
