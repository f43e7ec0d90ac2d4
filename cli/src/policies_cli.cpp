// flotilla policies: desired configuration attached at tenant, site, group and device level
// (docs/policies.md).
#include <fmt/format.h>

#include <CLI/CLI.hpp>

#include "flotilla/cli/render.hpp"
#include "session.hpp"

namespace flotilla::cli {

Result<std::pair<std::string, v1::PolicyValue>> parse_policy_assignment(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    return make_error(Errc::invalid_argument, "{:?}: expected KEY=VALUE (KEY=VALUE! to enforce it)", text);
  }
  v1::PolicyValue value;
  std::string_view v = text.substr(eq + 1);
  if (v.ends_with('!')) {
    value.set_enforced(true);
    v.remove_suffix(1);
  }
  value.set_value(std::string(v));
  return std::pair{std::string(text.substr(0, eq)), std::move(value)};
}

namespace {

std::string render_policy(const v1::Policy& p) {
  std::vector<std::vector<std::string>> rows{{"KEY", "VALUE", "ENFORCED"}};
  std::map<std::string, v1::PolicyValue> sorted(p.values().begin(), p.values().end());
  for (const auto& [k, v] : sorted) rows.push_back({k, v.value(), v.enforced() ? "yes" : ""});
  return fmt::format("{} {} (revision {}, by {})\n{}", p.level(), p.name(), p.revision(),
                     p.updated_by().empty() ? "?" : p.updated_by(), render_columns(rows));
}

std::string render_effective(const v1::EffectiveConfig& e) {
  std::vector<std::vector<std::string>> rows{{"KEY", "VALUE", "FROM"}};
  std::map<std::string, std::string> sorted(e.desired().values().begin(), e.desired().values().end());
  for (const auto& [k, v] : sorted) {
    auto src = e.desired().sources().find(k);
    rows.push_back({k, v, src == e.desired().sources().end() ? "" : src->second});
  }
  return fmt::format("device {}: desired {}, applied {}{}\n{}", e.desired().device_id(), e.desired().version(),
                     e.applied_version().empty() ? "(nothing reported)" : e.applied_version(),
                     e.drift() ? " (drift)" : "", render_columns(rows));
}

}  // namespace

struct PolicyCommands::Impl {
  CLI::App* policies = nullptr;
  CLI::App* set = nullptr;
  CLI::App* show = nullptr;
  CLI::App* list = nullptr;
  CLI::App* remove = nullptr;
  CLI::App* effective = nullptr;
  std::string level, name, device;
  std::vector<std::string> assignments, unset;
  bool replace = false;
};

PolicyCommands::PolicyCommands(CLI::App& app) : impl_(std::make_unique<Impl>()) {
  auto& s = *impl_;
  const auto levels = CLI::IsMember({"tenant", "site", "group", "device"});
  s.policies = app.add_subcommand("policies", "Desired configuration by tenant, site, group and device");
  s.set = s.policies->add_subcommand("set", "Set keys of the policy at a level (merged into what it holds)");
  s.set->add_option("level", s.level, "tenant, site, group or device")->required()->check(levels);
  s.set->add_option("name", s.name, "The tenant, site, group or device id")->required();
  s.set->add_option("values", s.assignments, "KEY=VALUE, or KEY=VALUE! to enforce it below this level");
  s.set->add_option("--unset", s.unset, "Keys to remove, comma-separated")->delimiter(',')->type_name("KEY,...");
  s.set->add_flag("--replace", s.replace, "Replace every value of the policy instead of merging");
  s.show = s.policies->add_subcommand("show", "Show the policy at a level");
  s.show->add_option("level", s.level, "tenant, site, group or device")->required()->check(levels);
  s.show->add_option("name", s.name, "The tenant, site, group or device id")->required();
  s.list = s.policies->add_subcommand("list", "List policies");
  s.list->add_option("--level", s.level, "Only this level")->check(levels);
  s.remove = s.policies->add_subcommand("delete", "Delete the policy at a level");
  s.remove->add_option("level", s.level, "tenant, site, group or device")->required()->check(levels);
  s.remove->add_option("name", s.name, "The tenant, site, group or device id")->required();
  s.effective = s.policies->add_subcommand("effective",
                                           "A device's effective configuration and where each value comes from");
  s.effective->add_option("device", s.device, "Device id")->required();
}

PolicyCommands::~PolicyCommands() = default;

bool PolicyCommands::chosen() const { return impl_->policies->parsed(); }

std::optional<Failure> PolicyCommands::check_subcommand() const {
  if (impl_->policies->parsed() && impl_->policies->get_subcommands().empty()) {
    return usage(
        "policies: a subcommand is required: set, show, list, delete or effective (see flotilla policies --help)");
  }
  return std::nullopt;
}

int PolicyCommands::execute(const GlobalOptions& options, std::ostream& out, std::ostream& err) {
  auto& s = *impl_;
  auto settings = resolve_settings(options);
  if (auto* f = std::get_if<Failure>(&settings)) return fail(*f, err);
  const auto& st = std::get<Settings>(settings);
  Session session(st);
  v1::RpcRequest request;
  v1::RpcResponse::ResultCase expected = v1::RpcResponse::kPolicy;
  std::string what = fmt::format("policy {} {}", s.level, s.name);
  if (s.set->parsed()) {
    if (s.assignments.empty() && s.unset.empty())
      return fail(usage("policies set: give KEY=VALUE or --unset KEY"), err);
    auto* q = request.mutable_set_policy();
    q->mutable_policy()->set_level(s.level);
    q->mutable_policy()->set_name(s.name);
    for (const auto& a : s.assignments) {
      auto kv = parse_policy_assignment(a);
      if (!kv) return fail(usage(fmt::format("policies set: {}", kv.error().message)), err);
      (*q->mutable_policy()->mutable_values())[kv->first] = kv->second;
    }
    for (const auto& k : s.unset) q->add_unset(k);
    q->set_replace(s.replace);
  } else if (s.show->parsed()) {
    request.mutable_show_policy()->set_level(s.level);
    request.mutable_show_policy()->set_name(s.name);
  } else if (s.remove->parsed()) {
    request.mutable_delete_policy()->set_level(s.level);
    request.mutable_delete_policy()->set_name(s.name);
  } else if (s.list->parsed()) {
    request.mutable_list_policies()->set_level(s.level);
    expected = v1::RpcResponse::kPolicies;
    what = "policies";
  } else {
    request.mutable_effective_config()->set_device_id(s.device);
    expected = v1::RpcResponse::kEffectiveConfig;
    what = fmt::format("effective configuration of {}", s.device);
  }
  auto reply = session.call(request, expected, what);
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& r = std::get<v1::RpcResponse>(reply);
  switch (expected) {
    case v1::RpcResponse::kPolicies:
      return emit(
          st, r.policies(),
          [&] {
            std::vector<std::vector<std::string>> rows{{"LEVEL", "NAME", "KEYS", "REVISION", "BY"}};
            for (const auto& p : r.policies().policies()) {
              rows.push_back(
                  {p.level(), p.name(), std::to_string(p.values_size()), std::to_string(p.revision()), p.updated_by()});
            }
            return render_columns(rows);
          },
          out, err);
    case v1::RpcResponse::kEffectiveConfig:
      return emit(
          st, r.effective_config(), [&] { return render_effective(r.effective_config()); }, out, err);
    default:
      return emit(
          st, r.policy(), [&] { return render_policy(r.policy()); }, out, err);
  }
}

}  // namespace flotilla::cli
