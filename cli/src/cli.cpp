#include "flotilla/cli/cli.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "flotilla/cli/render.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/core/version.hpp"
#include "flotilla/manager/schedule.hpp"
#include "session.hpp"

namespace flotilla::cli {
namespace {

constexpr std::string_view kDefaultUsername = "flotilla-operator";
constexpr std::string_view kClientIdPrefix = "flotilla-cli";
// Devices per ListDevices page: about 300 KiB of reply at ~300 B a record.
constexpr std::uint32_t kPageSize = 1000;
// Events per group_events page (the manager's maximum) and devices per delete_device request.
constexpr std::uint32_t kEventPageSize = 1000;
constexpr std::size_t kMaxDeleteIds = 500;
constexpr std::uint64_t kMaxEventLimit = 100'000;

enum class Command {
  none,
  devices_list,
  devices_show,
  devices_count,
  devices_query,
  devices_stats,
  devices_rebirth,
  devices_tag,
  devices_delete,
  groups_create,
  groups_list,
  groups_show,
  groups_members,
  groups_add,
  groups_remove,
  groups_explain,
  groups_delete,
  groups_events,
  manager_status
};

// Everything the command line said, before any file or environment is consulted.
struct Invocation {
  GlobalOptions global;
  Command command = Command::none;
  std::uint64_t limit = 0;  // devices list: 0 = no limit
  std::string device_id;
  std::string by;
  std::string where;  // count --where, stats --where
  std::string query;  // devices query
  std::string sort;
  bool descending = false;
  std::uint32_t page_limit = 0;  // devices query --limit: 0 = the manager's default
  std::string cursor;
  std::vector<std::string> fields;
  bool explain = false;
  std::string field;  // devices stats
  std::string group;  // groups *
  std::string parent;
  std::string description;
  std::vector<std::string> device_ids;  // groups create --members, add, remove; devices delete
  bool force = false;                   // devices delete
  bool yes = false;                     // devices delete
  std::string since;                    // groups events
  std::uint64_t event_limit = 100;      // groups events
  std::uint64_t event_cursor = 0;       // groups events --cursor
  std::vector<std::string> add_tags, remove_tags, set_attributes, unset_attributes;  // devices tag
};

int devices_list(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::ListDevicesResponse all;
  std::string cursor;
  for (;;) {
    std::uint32_t page = kPageSize;
    if (inv.limit > 0) {
      const auto remaining = inv.limit - static_cast<std::uint64_t>(all.devices_size());
      if (remaining < page) page = static_cast<std::uint32_t>(remaining);
    }
    v1::RpcRequest request;
    request.mutable_list_devices()->set_limit(page);
    request.mutable_list_devices()->set_start_after(cursor);
    auto reply = session.call(request, v1::RpcResponse::kListDevices, "devices list");
    if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
    auto& response = *std::get<v1::RpcResponse>(reply).mutable_list_devices();
    all.set_total(response.total());
    for (auto& d : *response.mutable_devices()) {
      if (inv.limit > 0 && static_cast<std::uint64_t>(all.devices_size()) >= inv.limit) break;
      *all.add_devices() = std::move(d);
    }
    const bool limit_reached = inv.limit > 0 && static_cast<std::uint64_t>(all.devices_size()) >= inv.limit;
    // A page that made no progress would loop forever on a misbehaving manager.
    if (response.next_cursor().empty() || response.next_cursor() == cursor) {
      all.clear_next_cursor();
      break;
    }
    if (limit_reached) {
      // Where a script continues: the last id listed, unless the page ended exactly here.
      all.set_next_cursor(all.devices().empty() ? std::string() : all.devices().rbegin()->device_id());
      break;
    }
    cursor = response.next_cursor();
  }
  return emit(
      s, all,
      [&] {
        const std::vector<v1::DeviceRecord> devices(all.devices().begin(), all.devices().end());
        return render_devices_table(devices, unix_now_ms());
      },
      out, err);
}

int devices_show(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_get_device()->set_device_id(inv.device_id);
  auto reply = session.call(request, v1::RpcResponse::kDevice, fmt::format("device {}", inv.device_id));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& detail = std::get<v1::RpcResponse>(reply).device();
  return emit(
      s, detail, [&] { return render_device_detail(detail, unix_now_ms()); }, out, err);
}

int devices_count(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_count_devices()->set_by(inv.by);
  request.mutable_count_devices()->set_where(inv.where);
  auto reply = session.call(request, v1::RpcResponse::kCountDevices, fmt::format("count by {}", inv.by));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& counts = std::get<v1::RpcResponse>(reply).count_devices();
  return emit(
      s, counts, [&] { return render_count_table(counts); }, out, err);
}

int devices_query(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  auto* q = request.mutable_query_devices();
  q->set_query(inv.query);
  q->set_sort(inv.sort);
  q->set_descending(inv.descending);
  q->set_limit(inv.page_limit);
  q->set_cursor(inv.cursor);
  for (const auto& f : inv.fields) q->add_fields(f);
  q->set_explain(inv.explain);
  auto reply = session.call(request, v1::RpcResponse::kQueryDevices, "query");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& page = std::get<v1::RpcResponse>(reply).query_devices();
  return emit(
      s, page, [&] { return render_query_table(page, unix_now_ms()); }, out, err);
}

int devices_stats(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_device_stats()->set_field(inv.field);
  request.mutable_device_stats()->set_where(inv.where);
  auto reply = session.call(request, v1::RpcResponse::kDeviceStats, fmt::format("stats of {}", inv.field));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& stats = std::get<v1::RpcResponse>(reply).device_stats();
  return emit(
      s, stats, [&] { return render_stats(stats); }, out, err);
}

// One group request; prints the reply with `render`.
template <typename Render>
int group_call(Session& session, const v1::RpcRequest& request, v1::RpcResponse::ResultCase expected,
               std::string_view what, const Settings& s, Render render, std::ostream& out, std::ostream& err) {
  auto reply = session.call(request, expected, what);
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& response = std::get<v1::RpcResponse>(reply);
  return render(response, s, out, err);
}

int groups_command(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  const auto now = unix_now_ms();
  auto show_group = [&](const v1::RpcResponse& r, const Settings& st, std::ostream& o, std::ostream& e) {
    return emit(
        st, r.group(), [&] { return render_group(r.group(), now); }, o, e);
  };
  switch (inv.command) {
    case Command::groups_create: {
      auto* g = request.mutable_create_group()->mutable_group();
      g->set_name(inv.group);
      g->set_parent(inv.parent);
      g->set_description(inv.description);
      if (!inv.query.empty()) {
        g->set_type(v1::Group::TYPE_DYNAMIC);
        g->set_query(inv.query);
      }
      for (const auto& id : inv.device_ids) g->add_members(id);
      return group_call(session, request, v1::RpcResponse::kGroup, "groups create", s, show_group, out, err);
    }
    case Command::groups_list:
      request.mutable_list_groups();
      return group_call(
          session, request, v1::RpcResponse::kGroups, "groups list", s,
          [&](const v1::RpcResponse& r, const Settings& st, std::ostream& o, std::ostream& e) {
            return emit(
                st, r.groups(), [&] { return render_groups(r.groups()); }, o, e);
          },
          out, err);
    case Command::groups_show:
      request.mutable_show_group()->set_name(inv.group);
      return group_call(session, request, v1::RpcResponse::kGroup, "groups show", s, show_group, out, err);
    case Command::groups_delete:
      request.mutable_delete_group()->set_name(inv.group);
      return group_call(session, request, v1::RpcResponse::kGroup, "groups delete", s, show_group, out, err);
    case Command::groups_add:
    case Command::groups_remove: {
      auto* q = request.mutable_change_members();
      q->set_name(inv.group);
      q->set_remove(inv.command == Command::groups_remove);
      for (const auto& id : inv.device_ids) q->add_device_ids(id);
      return group_call(session, request, v1::RpcResponse::kGroup, "groups members change", s, show_group, out, err);
    }
    case Command::groups_members: {
      v1::GroupMembers all;
      std::string cursor;
      for (int page = 0; page < 100000; ++page) {
        v1::RpcRequest req;
        req.mutable_group_members()->set_name(inv.group);
        req.mutable_group_members()->set_cursor(cursor);
        auto reply = session.call(req, v1::RpcResponse::kGroupMembers, "groups members");
        if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
        const auto& m = std::get<v1::RpcResponse>(reply).group_members();
        for (const auto& id : m.device_ids()) all.add_device_ids(id);
        all.set_total(m.total());
        if (m.next_cursor().empty() || m.next_cursor() == cursor) break;
        cursor = m.next_cursor();
      }
      return emit(
          s, all,
          [&] {
            std::string text;
            for (const auto& id : all.device_ids()) text += id + "\n";
            return text;
          },
          out, err);
    }
    case Command::groups_explain:
      request.mutable_explain_membership()->set_name(inv.group);
      request.mutable_explain_membership()->set_device_id(inv.device_id);
      return group_call(
          session, request, v1::RpcResponse::kExplanation, "groups explain", s,
          [&](const v1::RpcResponse& r, const Settings& st, std::ostream& o, std::ostream& e) {
            return emit(
                st, r.explanation(), [&] { return render_explanation(r.explanation()); }, o, e);
          },
          out, err);
    default: break;
  }
  return fail(Failure{exit_internal, "not a groups command"}, err);
}

int devices_tag(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  auto* q = request.mutable_label_device();
  q->set_device_id(inv.device_id);
  for (const auto& t : inv.add_tags) q->add_add_tags(t);
  for (const auto& t : inv.remove_tags) q->add_remove_tags(t);
  for (const auto& kv : inv.set_attributes) {
    const auto eq = kv.find('=');  // checked before connecting, in execute()
    (*q->mutable_set_attributes())[kv.substr(0, eq)] = kv.substr(eq + 1);
  }
  for (const auto& k : inv.unset_attributes) q->add_unset_attributes(k);
  auto reply = session.call(request, v1::RpcResponse::kLabels, fmt::format("tag {}", inv.device_id));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& labels = std::get<v1::RpcResponse>(reply).labels();
  return emit(
      s, labels,
      [&] {
        std::string text = fmt::format("tags: {}\n",
                                       labels.tags().empty() ? "-" : fmt::format("{}", fmt::join(labels.tags(), ", ")));
        std::map<std::string, std::string> attrs(labels.attributes().begin(), labels.attributes().end());
        for (const auto& [k, v] : attrs) text += fmt::format("attr.{}: {}\n", k, v);
        return text;
      },
      out, err);
}

int devices_rebirth(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_rebirth()->set_device_id(inv.device_id);
  auto reply = session.call(request, v1::RpcResponse::kRebirth, fmt::format("rebirth of {}", inv.device_id));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& rebirth = std::get<v1::RpcResponse>(reply).rebirth();
  return emit(
      s, rebirth, [&] { return rebirth.command_id() + "\n"; }, out, err);
}

int devices_delete(Session& session, const Invocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  auto* q = request.mutable_delete_device();
  for (const auto& id : inv.device_ids) q->add_device_ids(id);
  q->set_force(inv.force);
  auto reply = session.call(request, v1::RpcResponse::kDeletedDevices, "devices delete");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& deleted = std::get<v1::RpcResponse>(reply).deleted_devices();
  return emit(
      s, deleted, [&] { return render_deleted_devices(deleted, unix_now_ms()); }, out, err);
}

int groups_events(Session& session, const Invocation& inv, std::int64_t since_ms, const Settings& s, std::ostream& out,
                  std::ostream& err) {
  v1::GroupEvents all;
  std::uint64_t cursor = inv.event_cursor;
  // Pages until --limit events or the oldest is reached. A page may come back short (the manager
  // examines a bounded number of stored events per request) but always moves the cursor down.
  while (static_cast<std::uint64_t>(all.events_size()) < inv.event_limit) {
    const auto remaining = inv.event_limit - static_cast<std::uint64_t>(all.events_size());
    v1::RpcRequest request;
    auto* q = request.mutable_group_events();
    q->set_group(inv.group);
    q->set_device_id(inv.device_id);
    q->set_since_ms(since_ms);
    q->set_limit(static_cast<std::uint32_t>(std::min<std::uint64_t>(remaining, kEventPageSize)));
    q->set_before_seq(cursor);
    auto reply = session.call(request, v1::RpcResponse::kGroupEvents, "groups events");
    if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
    auto& page = *std::get<v1::RpcResponse>(reply).mutable_group_events();
    for (auto& e : *page.mutable_events()) {
      if (static_cast<std::uint64_t>(all.events_size()) >= inv.event_limit) break;
      *all.add_events() = std::move(e);
    }
    all.set_first_seq(page.first_seq());
    all.set_last_seq(page.last_seq());
    // A cursor that does not move down would loop forever on a misbehaving manager.
    const bool moved = page.next_cursor() != 0 && (cursor == 0 || page.next_cursor() < cursor);
    all.set_next_cursor(moved ? page.next_cursor() : 0);
    if (!moved) break;
    cursor = page.next_cursor();
  }
  return emit(
      s, all, [&] { return render_group_events(all); }, out, err);
}

// `devices delete` asks before deleting, on a terminal; elsewhere it needs --yes.
std::optional<Failure> confirm_delete(const Invocation& inv, std::ostream& err) {
  if (inv.yes) return std::nullopt;
  const bool terminal = &err == &std::cerr && ::isatty(STDIN_FILENO) == 1 && ::isatty(STDERR_FILENO) == 1;
  if (!terminal) {
    return usage("devices delete: no terminal to confirm on; add --yes to confirm the deletion (nothing was deleted)");
  }
  err << fmt::format("Delete {} {} ({}) with their inventory, telemetry, labels and group memberships? [y/N] ",
                     inv.device_ids.size(), inv.device_ids.size() == 1 ? "device" : "devices",
                     fmt::join(inv.device_ids, ", "));
  err.flush();
  std::string answer;
  if (!std::getline(std::cin, answer) || (answer != "y" && answer != "Y" && answer != "yes" && answer != "YES")) {
    return usage("devices delete: not confirmed; nothing was deleted");
  }
  return std::nullopt;
}

// --since: a duration ago (2h or -2h), or a time (RFC 3339 or now).
Outcome<std::int64_t> parse_since(const std::string& text, std::int64_t now_ms) {
  if (text.empty()) return std::int64_t{0};
  std::string_view ago(text);
  if (ago.starts_with('-')) ago.remove_prefix(1);
  if (auto d = config::parse_duration(ago)) return std::max<std::int64_t>(1, now_ms - d->count());
  auto t = manager::parse_time(text, now_ms);
  if (!t) return usage(fmt::format("--since: {} (or a duration ago, e.g. 2h)", t.error().message));
  return std::max<std::int64_t>(1, *t);
}

int manager_status(Session& session, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_manager_stats();
  auto reply = session.call(request, v1::RpcResponse::kManagerStats, "manager status");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& stats = std::get<v1::RpcResponse>(reply).manager_stats();
  return emit(
      s, stats, [&] { return render_manager_stats(stats, unix_now_ms()); }, out, err);
}

int execute(const Invocation& inv, std::ostream& out, std::ostream& err) {
  if (inv.command == Command::devices_show || inv.command == Command::devices_rebirth ||
      inv.command == Command::devices_tag || inv.command == Command::groups_explain ||
      (inv.command == Command::groups_events && !inv.device_id.empty())) {
    if (auto id = DeviceId::parse(inv.device_id); !id) {
      return fail(usage(fmt::format("invalid device id '{}': {}", inv.device_id, id.error().message)), err);
    }
  }
  if (inv.command == Command::devices_delete) {
    // Exact ids only: a pattern is not a device id, so nothing like "*" can delete a fleet.
    for (const auto& raw : inv.device_ids) {
      if (auto id = DeviceId::parse(raw); !id) {
        return fail(usage(fmt::format("invalid device id '{}': {}", raw, id.error().message)), err);
      }
    }
    if (inv.device_ids.size() > kMaxDeleteIds) {
      return fail(usage(fmt::format("devices delete: at most {} devices at once", kMaxDeleteIds)), err);
    }
  }
  std::int64_t since_ms = 0;
  if (inv.command == Command::groups_events) {
    auto since = parse_since(inv.since, unix_now_ms());
    if (auto* f = std::get_if<Failure>(&since)) return fail(*f, err);
    since_ms = std::get<std::int64_t>(since);
  }
  for (const auto& kv : inv.set_attributes) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) return fail(usage(fmt::format("--set '{}': expected KEY=VALUE", kv)), err);
  }
  auto resolved = resolve_settings(inv.global);
  if (auto* f = std::get_if<Failure>(&resolved)) return fail(*f, err);
  const Settings& settings = std::get<Settings>(resolved);
  if (inv.command == Command::devices_delete) {
    if (auto f = confirm_delete(inv, err)) return fail(*f, err);
  }
  Session session(settings);

  switch (inv.command) {
    case Command::devices_list: return devices_list(session, inv, settings, out, err);
    case Command::devices_show: return devices_show(session, inv, settings, out, err);
    case Command::devices_count: return devices_count(session, inv, settings, out, err);
    case Command::devices_query: return devices_query(session, inv, settings, out, err);
    case Command::devices_stats: return devices_stats(session, inv, settings, out, err);
    case Command::devices_rebirth: return devices_rebirth(session, inv, settings, out, err);
    case Command::devices_tag: return devices_tag(session, inv, settings, out, err);
    case Command::devices_delete: return devices_delete(session, inv, settings, out, err);
    case Command::groups_events: return groups_events(session, inv, since_ms, settings, out, err);
    case Command::groups_create:
    case Command::groups_list:
    case Command::groups_show:
    case Command::groups_members:
    case Command::groups_add:
    case Command::groups_remove:
    case Command::groups_explain:
    case Command::groups_delete: return groups_command(session, inv, settings, out, err);
    case Command::manager_status: return manager_status(session, settings, out, err);
    case Command::none: break;
  }
  return fail(Failure{exit_internal, "no command selected"}, err);
}

constexpr const char* kFooter =
    "Exit codes: 0 success, 1 internal error, 2 usage error, 3 broker or manager unreachable,\n"
    "            4 not found, 5 request rejected by the manager, 6 job did not fully succeed\n"
    "            (jobs watch), 7 job still running at --timeout-total (jobs watch).\n"
    "Environment: FLOTILLA_CONFIG, FLOTILLA_BROKER, FLOTILLA_MQTT_USERNAME, FLOTILLA_MQTT_PASSWORD,\n"
    "             FLOTILLA_ACTOR, FLOTILLA_SIGNING_KEY.\n"
    "See docs/cli.md.";

// CLI11 validator of --limit: its own integer conversion accepts out-of-range values.
std::string positive_integer(const std::string& text) {
  std::uint64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || ptr != text.data() + text.size() || value == 0) {
    return "must be an integer from 1 to 18446744073709551615";
  }
  return {};
}

}  // namespace

namespace {

// An operator name for the audit log: 1 to 64 bytes without control characters.
bool valid_actor(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::none_of(name.begin(), name.end(),
                      [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; });
}

}  // namespace

Outcome<Settings> resolve_settings(const GlobalOptions& options) {
  Settings s;
  auto timeout = config::parse_duration(options.timeout);
  if (!timeout) return usage(fmt::format("--timeout: {}", timeout.error().message));
  if (timeout->count() <= 0) return usage("--timeout: must be greater than 0");
  s.timeout = *timeout;

  config::MqttConfig mqtt;
  std::string file_output;
  if (!options.config_file.empty()) {
    auto reader = config::TomlReader::load_file(options.config_file);
    if (!reader) return usage(reader.error().message);
    if (auto st = config::read_mqtt(*reader, mqtt); !st) return usage(st.error().message);
    if (auto st = reader->read("output", file_output); !st) return usage(st.error().message);
    if (auto st = reader->read("signing_key", s.signing_key); !st) return usage(st.error().message);
    if (auto st = reader->reject_unknown_keys(); !st) return usage(st.error().message);
    if (!file_output.empty() && file_output != "table" && file_output != "json") {
      return usage(fmt::format("{}: output: must be \"table\" or \"json\", not \"{}\"", reader->source(), file_output));
    }
  }

  // Environment over file: a password from the environment replaces a password file from the file.
  config::apply_mqtt_env(mqtt);
  if (const char* env = std::getenv("FLOTILLA_MQTT_PASSWORD"); env != nullptr && *env != '\0') {
    mqtt.password_file.clear();
  }

  // Command line over environment.
  if (!options.broker.empty()) {
    if (auto uri = parse_broker_uri(options.broker); !uri) {
      return usage(fmt::format("--broker: {}", uri.error().message));
    }
    mqtt.broker = options.broker;
  }
  if (!options.username.empty()) mqtt.username = options.username;
  if (!options.password_file.empty()) {
    mqtt.password_file = options.password_file;
    mqtt.password.clear();
  }
  if (mqtt.username.empty()) mqtt.username = kDefaultUsername;
  if (auto st = validate_topic_level_name(mqtt.username, "username"); !st) return usage(st.error().message);
  if (auto st = config::validate_mqtt(mqtt); !st) return usage(st.error().message);

  auto transport = config::transport_options(mqtt);
  if (!transport) return usage(transport.error().message);
  s.transport = std::move(*transport);
  // Unique per invocation: two concurrent runs must never take over each other's session.
  const std::string_view prefix = mqtt.client_id.empty() ? kClientIdPrefix : std::string_view(mqtt.client_id);
  s.transport.client_id = fmt::format("{}-{}", prefix, random_hex(8));
  s.username = mqtt.username;

  s.actor = s.username;
  if (const char* env = std::getenv("FLOTILLA_ACTOR"); env != nullptr && *env != '\0') {
    if (!valid_actor(env)) return usage("FLOTILLA_ACTOR: must have 1 to 64 bytes without control characters");
    s.actor = env;
  } else if (const char* user = std::getenv("USER"); user != nullptr && valid_actor(user)) {
    s.actor = user;
  }

  const std::string& output = !options.output.empty() ? options.output : file_output;
  s.json = output == "json";
  return s;
}

int fail(const Failure& f, std::ostream& err) {
  std::string line = f.message;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  err << "flotilla: " << line << '\n';
  err.flush();
  return f.code;
}

Outcome<v1::RpcResponse> Session::call(v1::RpcRequest request, v1::RpcResponse::ResultCase expected,
                                       std::string_view what) {
  if (!client_) {
    auto client = RpcClient::connect(settings_.transport, settings_.username, settings_.timeout);
    if (!client) return Failure{exit_code_for(client.error()), client.error().message};
    client_.emplace(std::move(*client));
  }
  if (request.actor().empty()) request.set_actor(settings_.actor);
  auto reply = client_->call(request, settings_.timeout);
  if (!reply) return Failure{exit_code_for(reply.error()), reply.error().message};
  if (reply->code() != v1::RpcResponse::CODE_OK) {
    std::string text = reply->error();
    if (text.empty()) text = fmt::format("{}: {}", what, v1::RpcResponse::Code_Name(reply->code()));
    return Failure{exit_code_for(reply->code()), std::move(text)};
  }
  if (reply->result_case() != expected) {
    return Failure{exit_internal, fmt::format("{}: the manager's reply carries no result of this kind", what)};
  }
  return std::move(*reply);
}

int exit_code_for(const Error& error) noexcept {
  switch (error.code) {
    case Errc::unavailable:
    case Errc::timeout:
    case Errc::permission_denied:
    case Errc::closed: return exit_unreachable;
    case Errc::invalid_argument: return exit_usage;
    default: return exit_internal;
  }
}

int exit_code_for(v1::RpcResponse::Code code) noexcept {
  switch (code) {
    case v1::RpcResponse::CODE_OK: return exit_ok;
    case v1::RpcResponse::CODE_NOT_FOUND: return exit_not_found;
    case v1::RpcResponse::CODE_INVALID_ARGUMENT: return exit_rejected;
    case v1::RpcResponse::CODE_UNAVAILABLE: return exit_unreachable;
    default: return exit_internal;
  }
}

int run(int argc, char** argv, std::ostream& out, std::ostream& err) {
  Invocation inv;
  CLI::App app{"Operator command line of the Flotilla fleet manager.", "flotilla"};
  app.fallthrough();  // global options are accepted after the subcommand too
  app.footer(kFooter);
  app.set_version_flag("--version", fmt::format("flotilla {}", flotilla::version), "Print the version and exit");
  // At most one subcommand per level. "At least one" is checked after parsing, so that CLI11 first
  // reports unknown arguments, which it checks only after its requirements.
  app.require_subcommand(0, 1);

  app.add_option("--config", inv.global.config_file,
                 "TOML file: an [mqtt] section, optional `output` and `signing_key` keys")
      ->envname("FLOTILLA_CONFIG")
      ->type_name("FILE");
  app.add_option("--broker", inv.global.broker,
                 "Broker URI, mqtt://host:port or mqtts://host:port "
                 "(default mqtt://127.0.0.1:1883)")
      ->type_name("URI");
  app.add_option("--username", inv.global.username,
                 "Broker username, also names the reply topic "
                 "(default flotilla-operator)")
      ->type_name("NAME");
  app.add_option("--password-file", inv.global.password_file,
                 "File holding the broker password (must not be world-readable)")
      ->type_name("FILE");
  app.add_option("-o,--output", inv.global.output, "Output format: table or json (default table)")
      ->check(CLI::IsMember({"table", "json"}))
      ->type_name("FORMAT");
  app.add_option("--timeout", inv.global.timeout,
                 "How long to wait for the broker and for each reply, e.g. 500ms, 5s, 1m")
      ->type_name("DURATION")
      ->capture_default_str();

  auto* devices = app.add_subcommand("devices", "Inspect and act on devices");
  auto* list = devices->add_subcommand("list", "List devices, in id order");
  list->add_option("--limit", inv.limit, "Stop after N devices")->check(positive_integer)->type_name("N");
  auto* show = devices->add_subcommand("show", "Show one device: record, inventory summary, latest telemetry");
  show->add_option("id", inv.device_id, "Device id")->required();
  auto* count = devices->add_subcommand("count", "Count devices grouped by a field");
  count->add_option("--by", inv.by, "Field to group by, e.g. kind, os.version, firmware.version, tag (docs/query.md)")
      ->required()
      ->type_name("FIELD");
  count->add_option("--where", inv.where, "Only devices matching this query")->type_name("QUERY");
  auto* query = devices->add_subcommand("query", "Devices matching a query (docs/query.md), sorted and paged");
  query->add_option("query", inv.query, "The query; empty or omitted: every device");
  query->add_option("--sort", inv.sort, "Sort by this field (default id)")->type_name("FIELD");
  query->add_flag("--desc", inv.descending, "Sort in descending order");
  query->add_option("--limit", inv.page_limit, "Devices per page (default 100, at most 5000)")
      ->check(CLI::Range(1, 5000))
      ->type_name("N");
  query->add_option("--cursor", inv.cursor, "Continue after this device (the next_cursor of a previous page)")
      ->type_name("ID");
  query->add_option("--fields", inv.fields, "Fields to show, comma-separated")->delimiter(',')->type_name("F,...");
  query->add_flag("--explain", inv.explain, "Also print how the manager answered the query");
  auto* stats = devices->add_subcommand("stats", "Min, max, average, sum and percentiles of a field");
  stats->add_option("field", inv.field, "A numeric or time field, e.g. telemetry.cpu; others: count and distinct")
      ->required();
  stats->add_option("--where", inv.where, "Only devices matching this query")->type_name("QUERY");
  auto* rebirth = devices->add_subcommand("rebirth", "Ask a device to republish its birth (identity and inventory)");
  rebirth->add_option("id", inv.device_id, "Device id")->required();

  auto* tag = devices->add_subcommand("tag", "Set operator tags and attributes of a device (kept by the manager)");
  tag->add_option("id", inv.device_id, "Device id")->required();
  tag->add_option("--add", inv.add_tags, "Tags to add, comma-separated")->delimiter(',')->type_name("TAG,...");
  tag->add_option("--remove", inv.remove_tags, "Tags to remove, comma-separated")->delimiter(',')->type_name("TAG,...");
  tag->add_option("--set", inv.set_attributes, "Attributes to set (queried as attr.KEY)")->type_name("KEY=VALUE");
  tag->add_option("--unset", inv.unset_attributes, "Attributes to remove")->delimiter(',')->type_name("KEY,...");

  auto* del = devices->add_subcommand(
      "delete",
      "Delete devices and everything the manager holds about them (record, inventory, telemetry, labels, "
      "group memberships)");
  del->add_option("ids", inv.device_ids, "Device ids (exact ids, at most 500)")->required();
  del->add_flag("--force", inv.force, "Also delete devices that are online (they register again when they next send)");
  del->add_flag("--yes", inv.yes, "Do not ask for confirmation (required when stdin is not a terminal)");

  auto* groups = app.add_subcommand("groups", "Static and query-defined groups of devices");
  auto* g_create = groups->add_subcommand("create", "Create a group: static (--members) or dynamic (--query)");
  g_create->add_option("name", inv.group, "Group name")->required();
  g_create->add_option("--parent", inv.parent, "Parent group (tenant -> site -> group -> subgroup)")
      ->type_name("GROUP");
  auto* g_query =
      g_create->add_option("--query", inv.query, "Dynamic group: devices matching this query")->type_name("QUERY");
  g_create->add_option("--members", inv.device_ids, "Static group: device ids, comma-separated")
      ->delimiter(',')
      ->excludes(g_query)
      ->type_name("ID,...");
  g_create->add_option("--description", inv.description, "Free text");
  auto* g_list = groups->add_subcommand("list", "List groups");
  auto* g_show = groups->add_subcommand("show", "Show a group");
  g_show->add_option("name", inv.group, "Group name")->required();
  auto* g_members = groups->add_subcommand("members", "List the members of a group and its subgroups");
  g_members->add_option("name", inv.group, "Group name")->required();
  auto* g_add = groups->add_subcommand("add", "Add devices to a static group");
  g_add->add_option("name", inv.group, "Group name")->required();
  g_add->add_option("ids", inv.device_ids, "Device ids")->required();
  auto* g_remove = groups->add_subcommand("remove", "Remove devices from a static group");
  g_remove->add_option("name", inv.group, "Group name")->required();
  g_remove->add_option("ids", inv.device_ids, "Device ids")->required();
  auto* g_explain = groups->add_subcommand("explain", "Why a device is or is not a member");
  g_explain->add_option("name", inv.group, "Group name")->required();
  g_explain->add_option("id", inv.device_id, "Device id")->required();
  auto* g_delete = groups->add_subcommand("delete", "Delete a group (it must have no subgroups)");
  g_delete->add_option("name", inv.group, "Group name")->required();
  auto* g_events = groups->add_subcommand("events", "Membership events recorded by the manager, newest first");
  g_events->add_option("group", inv.group, "Only this group's events (default: every group)");
  g_events->add_option("--device", inv.device_id, "Only this device's events")->type_name("ID");
  g_events->add_option("--since", inv.since, "Stop at events older than this: RFC 3339, or a duration ago such as 2h")
      ->type_name("TIME");
  g_events->add_option("--limit", inv.event_limit, "At most N events (default 100, at most 100000)")
      ->check(CLI::Range(std::uint64_t{1}, kMaxEventLimit))
      ->type_name("N");
  g_events->add_option("--cursor", inv.event_cursor, "Continue below this sequence number (a previous next page)")
      ->check(positive_integer)
      ->type_name("SEQ");

  auto* manager = app.add_subcommand("manager", "Inspect the fleet manager");
  auto* status = manager->add_subcommand("status", "Show the manager's instance, uptime and counters");

  JobCommands job_commands(app);
  PolicyCommands policy_commands(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      (void)app.exit(e, out, err);
      out.flush();
      return exit_ok;
    }
    return fail(usage(fmt::format("{} (see flotilla --help)", e.what())), err);
  }

  if (!devices->parsed() && !manager->parsed() && !groups->parsed() && !job_commands.chosen() &&
      !policy_commands.chosen()) {
    return fail(usage("a command is required: devices, groups, jobs, scripts, policies, keys, audit or manager "
                      "(see flotilla --help)"),
                err);
  }
  if (auto f = job_commands.check_subcommand()) return fail(*f, err);
  if (auto f = policy_commands.check_subcommand()) return fail(*f, err);
  if (groups->parsed() && groups->get_subcommands().empty()) {
    return fail(usage("groups: a subcommand is required: create, list, show, members, add, remove, explain, "
                      "delete or events (see flotilla groups --help)"),
                err);
  }
  if (devices->parsed() && devices->get_subcommands().empty()) {
    return fail(usage("devices: a subcommand is required: list, show, count, query, stats, tag, rebirth or "
                      "delete (see flotilla devices --help)"),
                err);
  }
  if (manager->parsed() && manager->get_subcommands().empty()) {
    return fail(usage("manager: a subcommand is required: status (see flotilla manager --help)"), err);
  }
  if (list->parsed()) inv.command = Command::devices_list;
  else if (show->parsed()) inv.command = Command::devices_show;
  else if (count->parsed()) inv.command = Command::devices_count;
  else if (query->parsed()) inv.command = Command::devices_query;
  else if (stats->parsed()) inv.command = Command::devices_stats;
  else if (rebirth->parsed()) inv.command = Command::devices_rebirth;
  else if (status->parsed()) inv.command = Command::manager_status;
  else if (tag->parsed()) inv.command = Command::devices_tag;
  else if (g_create->parsed()) inv.command = Command::groups_create;
  else if (g_list->parsed()) inv.command = Command::groups_list;
  else if (g_show->parsed()) inv.command = Command::groups_show;
  else if (g_members->parsed()) inv.command = Command::groups_members;
  else if (g_add->parsed()) inv.command = Command::groups_add;
  else if (g_remove->parsed()) inv.command = Command::groups_remove;
  else if (g_explain->parsed()) inv.command = Command::groups_explain;
  else if (g_delete->parsed()) inv.command = Command::groups_delete;
  else if (del->parsed()) inv.command = Command::devices_delete;
  else if (g_events->parsed()) inv.command = Command::groups_events;

  try {
    if (job_commands.chosen()) return job_commands.execute(inv.global, out, err);
    if (policy_commands.chosen()) return policy_commands.execute(inv.global, out, err);
    return execute(inv, out, err);
  } catch (const std::exception& e) {
    return fail(Failure{exit_internal, fmt::format("internal error: {}", e.what())}, err);
  }
}

}  // namespace flotilla::cli
