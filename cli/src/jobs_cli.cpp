// The jobs, scripts, keys and audit commands of `flotilla` (docs/cli.md, docs/jobs.md): the pure
// builders of render_jobs.hpp and the commands that talk to the manager.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <google/protobuf/struct.pb.h>

#include "flotilla/cli/render_jobs.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/manager/rollout.hpp"
#include "flotilla/manager/schedule.hpp"
#include "session.hpp"

namespace flotilla::cli {
namespace {

namespace fs = std::filesystem;

constexpr std::int64_t kDayMs = 24LL * 60 * 60 * 1000;
// Documents expire within this (the manager refuses longer lifetimes).
constexpr std::int64_t kMaxLifetimeMs = 30 * kDayMs;
// The manager refuses larger job documents.
constexpr std::size_t kMaxDocumentBytes = 256 * 1024;
constexpr std::size_t kMaxTypeBytes = 64;
constexpr std::size_t kMaxParamKeyBytes = 64;
constexpr std::size_t kMaxDescriptionBytes = 1024;
constexpr std::uint32_t kMaxRetries = 100;
// Least bytes one per-device signature adds to a request: 64-byte signature, a device id of at
// least one byte and the map entry's framing. Stops resolving a target early when the request
// cannot fit anyway.
constexpr std::size_t kMinSignatureEntryBytes = 64 + 1 + 6;
// Devices per query page while resolving a target (the manager's maximum).
constexpr std::uint32_t kResolvePage = 5000;
// Executions per job_executions page: an execution carries up to 64 KiB of output.
constexpr std::uint32_t kExecutionPage = 100;
constexpr std::size_t kProgressBarWidth = 30;

Error invalid(std::string message) { return Error{Errc::invalid_argument, std::move(message)}; }

// Splits "KEY=VALUE" at the first '='.
Result<std::pair<std::string, std::string>> split_param(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos || eq == 0) return invalid(fmt::format("--param {:?}: expected KEY=VALUE", text));
  return std::pair{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1))};
}

// Writes `data` to a new file `path` with `mode`; never replaces an existing file or follows a
// symbolic link. The file is synced before it is closed.
Status write_new_file(const fs::path& path, std::string_view data, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) {
    const int e = errno;
    if (e == EEXIST) return make_error(Errc::already_exists, "{} already exists; not overwritten", path.string());
    return make_error(Errc::io_error, "{}: {}", path.string(), std::strerror(e));
  }
  Status st;
  // The umask may have narrowed `mode`: the public key is meant to be readable by everyone.
  if (::fchmod(fd, mode) != 0) st = make_error(Errc::io_error, "{}: chmod: {}", path.string(), std::strerror(errno));
  std::size_t written = 0;
  while (st && written < data.size()) {
    const auto n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      st = make_error(Errc::io_error, "{}: write: {}", path.string(), std::strerror(errno));
      break;
    }
    written += static_cast<std::size_t>(n);
  }
  if (st && ::fsync(fd) != 0) st = make_error(Errc::io_error, "{}: fsync: {}", path.string(), std::strerror(errno));
  if (::close(fd) != 0 && st) st = make_error(Errc::io_error, "{}: close: {}", path.string(), std::strerror(errno));
  if (!st) {
    std::error_code ec;
    fs::remove(path, ec);
  }
  return st;
}

// The last path component of a shebang word: "/usr/bin/env" -> "env".
std::string_view base_name(std::string_view path) {
  const auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// Tokens of a shebang line, split at spaces and tabs.
std::vector<std::string_view> words(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    const auto start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

std::optional<std::string> known_interpreter(std::string_view program) {
  if (program == "sh" || program == "bash" || program == "python3") return std::string(program);
  // python3.11 and the like.
  if (program.starts_with("python3.") && program.size() > 8 &&
      std::all_of(program.begin() + 8, program.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return std::string("python3");
  }
  return std::nullopt;
}

// A duration of a job flag: "30s", "1h30m", "7d".
Result<std::chrono::milliseconds> parse_job_duration(std::string_view flag, std::string_view text) {
  auto d = manager::parse_compound_duration(text);
  if (!d) return invalid(fmt::format("{}: {}", flag, d.error().message));
  return *d;
}

Result<std::vector<v1::AbortRule>> parse_abort_flags(const std::vector<std::string>& texts) {
  std::vector<v1::AbortRule> out;
  for (const auto& text : texts) {
    auto rules = manager::parse_abort_rules(text);
    if (!rules) return invalid(fmt::format("--abort: {}", rules.error().message));
    for (const auto& rule : *rules) out.push_back(manager::to_proto(rule));
  }
  return out;
}

Result<v1::RolloutSpec> parse_rollout_flags(const JobFlags& flags) {
  if (!flags.rate.empty() && !flags.exponential.empty()) return invalid("--rate and --exponential exclude each other");
  manager::RolloutConfig config;
  if (!flags.exponential.empty()) {
    auto rollout = manager::parse_exponential_rollout(flags.exponential);
    if (!rollout) return invalid(fmt::format("--exponential: {}", rollout.error().message));
    config = *rollout;
  } else if (!flags.rate.empty()) {
    auto rollout = manager::parse_constant_rollout(flags.rate);
    if (!rollout) return invalid(fmt::format("--rate: {}", rollout.error().message));
    config = *rollout;
  }
  if (!flags.jitter.empty()) {
    auto jitter = parse_job_duration("--jitter", flags.jitter);
    if (!jitter) return std::move(jitter).error();
    if (jitter->count() < 0 || *jitter > manager::kMaxJitter) {
      return invalid(
          fmt::format("--jitter: must be between 0s and {}", manager::format_compound_duration(manager::kMaxJitter)));
    }
    config.jitter = *jitter;
  }
  if (auto st = manager::validate(config); !st) return invalid(fmt::format("rollout: {}", st.error().message));
  v1::RolloutSpec spec = manager::to_proto(config);
  // What the manager checks on arrival.
  if (auto st = manager::validate(spec); !st) return invalid(fmt::format("rollout: {}", st.error().message));
  return spec;
}

Result<std::int64_t> parse_time_flag(std::string_view flag, std::string_view text, std::int64_t now_ms) {
  auto t = manager::parse_time(text, now_ms);
  if (!t) return invalid(fmt::format("{}: {}", flag, t.error().message));
  return *t;
}

Status check_window(std::string_view text) {
  auto window = manager::MaintenanceWindow::parse(text);
  if (!window) return invalid(fmt::format("--window {:?}: {}", text, window.error().message));
  return {};
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Pure builders (render_jobs.hpp)

bool is_utf8(std::string_view text) {
  std::size_t i = 0;
  const auto n = text.size();
  while (i < n) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    std::size_t len = 0;
    std::uint32_t cp = 0;
    if ((c & 0xE0U) == 0xC0U) {
      len = 2;
      cp = c & 0x1FU;
    } else if ((c & 0xF0U) == 0xE0U) {
      len = 3;
      cp = c & 0x0FU;
    } else if ((c & 0xF8U) == 0xF0U) {
      len = 4;
      cp = c & 0x07U;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0U) != 0x80U) return false;
      cp = (cp << 6U) | (cc & 0x3FU);
    }
    // Overlong forms, UTF-16 surrogates and code points beyond U+10FFFF are not UTF-8.
    static constexpr std::uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

Result<KeyFiles> generate_key_files(const fs::path& dir, std::string_view name) {
  if (auto st = validate_topic_level_name(name, "key name"); !st) return std::move(st).error();
  KeyFiles files;
  files.private_key = dir / (std::string(name) + ".key");
  files.public_key = dir / (std::string(name) + ".pub");
  std::error_code ec;
  const auto status = fs::status(dir, ec);
  if (fs::exists(status)) {
    if (!fs::is_directory(status)) return make_error(Errc::io_error, "{}: not a directory", dir.string());
  } else {
    if (!fs::create_directories(dir, ec) && ec) {
      return make_error(Errc::io_error, "{}: cannot create: {}", dir.string(), ec.message());
    }
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
    if (ec) return make_error(Errc::io_error, "{}: chmod: {}", dir.string(), ec.message());
  }
  for (const auto& path : {files.private_key, files.public_key}) {
    if (fs::exists(fs::symlink_status(path, ec))) {
      return make_error(Errc::already_exists, "{} already exists; not overwritten", path.string());
    }
  }
  auto pair = signing::generate_key();
  if (!pair) return std::move(pair).error();
  auto signer = signing::Signer::from_pem(pair->private_pem);
  if (!signer) return make_error(Errc::internal, "the generated key does not load: {}", signer.error().message);
  files.key_id = signer->key_id();
  if (auto st = write_new_file(files.private_key, pair->private_pem, 0600); !st) return std::move(st).error();
  if (auto st = write_new_file(files.public_key, pair->public_pem, 0644); !st) {
    fs::remove(files.private_key, ec);  // a private key without its public half is of no use
    return std::move(st).error();
  }
  return files;
}

Result<std::string> interpreter_from_shebang(std::string_view body) {
  constexpr std::string_view kHint = "pass --interpreter sh, bash or python3";
  if (!body.starts_with("#!")) return invalid(fmt::format("the script has no #! line; {}", kHint));
  auto line = body.substr(2, body.find('\n') == std::string_view::npos ? body.size() - 2 : body.find('\n') - 2);
  if (line.ends_with('\r')) line.remove_suffix(1);
  const auto parts = words(line);
  if (parts.empty()) return invalid(fmt::format("the #! line names no interpreter; {}", kHint));
  std::string_view program = base_name(parts[0]);
  if (program == "env") {
    // "#!/usr/bin/env [-S] [-i] [NAME=VALUE]... PROGRAM [ARGS]".
    program = {};
    for (std::size_t i = 1; i < parts.size(); ++i) {
      if (parts[i].starts_with('-') || parts[i].find('=') != std::string_view::npos) continue;
      program = base_name(parts[i]);
      break;
    }
    if (program.empty()) return invalid(fmt::format("the #! line's env names no program; {}", kHint));
  }
  auto known = known_interpreter(program);
  if (!known) {
    return invalid(fmt::format("the #! line names {:?}, which is not sh, bash or python3; {}",
                               std::string(program.substr(0, 64)), kHint));
  }
  return *known;
}

Status validate_script_body(std::string_view body) {
  if (body.empty()) return invalid("the script is empty");
  if (body.size() > max_script_bytes) {
    return make_error(Errc::too_large, "the script has {} bytes; at most {}", body.size(), max_script_bytes);
  }
  if (body.find('\0') != std::string_view::npos) return invalid("the script contains NUL bytes (a binary file?)");
  if (!is_utf8(body)) return invalid("the script is not UTF-8 text");
  return {};
}

std::string default_job_id(std::int64_t now_ms) {
  // format_utc gives "2026-11-21T02:00:00Z"; the id keeps its digits: "j-20261121-020000-a1b2c3".
  const std::string utc = format_utc(now_ms);
  std::string date;
  std::string time;
  for (std::size_t i = 0; i < utc.size(); ++i) {
    if (utc[i] < '0' || utc[i] > '9') continue;
    (i < 10 ? date : time) += utc[i];
  }
  return fmt::format("j-{}-{}-{}", date, time, random_hex(3));
}

Result<v1::ExecutionState> parse_execution_state(std::string_view text) {
  std::string name;
  for (char c : text) name += c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (auto state : {v1::EXECUTION_QUEUED, v1::EXECUTION_IN_PROGRESS, v1::EXECUTION_SUCCEEDED, v1::EXECUTION_FAILED,
                     v1::EXECUTION_TIMED_OUT, v1::EXECUTION_REJECTED, v1::EXECUTION_REMOVED, v1::EXECUTION_CANCELED}) {
    if (name == execution_state_label(state)) return state;
  }
  return invalid(
      fmt::format("unknown execution state {:?}: use queued, in_progress, succeeded, failed, timed_out, "
                  "rejected, removed or canceled",
                  std::string(text.substr(0, 64))));
}

Result<JobPlan> plan_job(const JobFlags& flags, std::int64_t now_ms) {
  JobPlan plan;
  auto& doc = plan.document;
  auto& spec = plan.spec;

  // Target.
  const int kinds = (flags.devices.empty() ? 0 : 1) + (flags.group.empty() ? 0 : 1) + (flags.query.empty() ? 0 : 1);
  if (kinds != 1) return invalid("name exactly one target: --devices, --group or --query");
  auto* target = spec.mutable_target();
  if (!flags.devices.empty()) {
    std::set<std::string> seen;
    for (const auto& raw : flags.devices) {
      auto id = DeviceId::parse(raw);
      if (!id)
        return invalid(fmt::format("--devices: invalid device id {:?}: {}", raw.substr(0, 80), id.error().message));
      if (seen.insert(id->str()).second) target->add_device_ids(id->str());
    }
  } else if (!flags.group.empty()) {
    if (auto st = validate_topic_level_name(flags.group, "--group"); !st) return std::move(st).error();
    target->set_group(flags.group);
  } else {
    if (!is_utf8(flags.query)) return invalid("--query: not UTF-8 text");
    target->set_query(flags.query);
  }

  // Scope: one "*" signature good for the devices of a tenant (and site).
  if (!flags.scope.empty()) {
    const auto slash = flags.scope.find('/');
    const std::string tenant = flags.scope.substr(0, slash);
    const std::string site = slash == std::string::npos ? std::string() : flags.scope.substr(slash + 1);
    if (auto st = validate_topic_level_name(tenant, "--scope tenant"); !st) return std::move(st).error();
    if (slash != std::string::npos) {
      if (auto st = validate_topic_level_name(site, "--scope site"); !st) return std::move(st).error();
    }
    doc.set_scope_tenant(tenant);
    doc.set_scope_site(site);
  }
  if (flags.continuous) {
    if (!flags.devices.empty()) return invalid("--continuous needs --group or --query, not --devices");
    if (flags.scope.empty()) {
      return invalid("--continuous needs --scope TENANT[/SITE]: devices that match later have no per-device signature");
    }
    target->set_continuous(true);
  }

  // What runs.
  std::string type = flags.type;
  if (!flags.script.empty()) {
    if (auto st = validate_topic_level_name(flags.script, "--script"); !st) return std::move(st).error();
    if (!type.empty() && type != "script.run") {
      return invalid(fmt::format("--script runs a script.run job, not {:?}", type.substr(0, kMaxTypeBytes)));
    }
    type = "script.run";
    plan.script_name = flags.script;
  }
  if (type.empty()) return invalid("--type is required (or --script NAME for script.run)");
  if (auto st = validate_topic_level_name(type, "--type"); !st) return std::move(st).error();
  if (type == "script.run" && flags.script.empty()) return invalid("a script.run job needs --script NAME");
  if (!flags.args.empty() && type != "script.run") return invalid("--arg is for script.run jobs (--script)");
  doc.set_type(type);
  for (const auto& text : flags.params) {
    auto kv = split_param(text);
    if (!kv) return std::move(kv).error();
    auto& [key, value] = *kv;
    if (key.size() > kMaxParamKeyBytes || !is_utf8(key)) {
      return invalid(fmt::format("--param {:?}: the key must be UTF-8 of at most {} bytes", text.substr(0, 80),
                                 kMaxParamKeyBytes));
    }
    if (!is_utf8(value)) return invalid(fmt::format("--param {}: the value is not UTF-8 text", key));
    if (doc.params().contains(key)) return invalid(fmt::format("--param {}: given twice", key));
    (*doc.mutable_params())[key] = value;
  }
  for (const auto& arg : flags.args) {
    if (!is_utf8(arg)) return invalid("--arg: not UTF-8 text");
    doc.add_args(arg);
  }

  // Pace, abort rules, timeout, retries, windows.
  auto rollout = parse_rollout_flags(flags);
  if (!rollout) return std::move(rollout).error();
  *spec.mutable_rollout() = std::move(*rollout);
  auto rules = parse_abort_flags(flags.abort_rules);
  if (!rules) return std::move(rules).error();
  for (auto& r : *rules) *spec.add_abort_rules() = std::move(r);
  if (!flags.timeout.empty()) {
    auto timeout = parse_job_duration("--timeout", flags.timeout);
    if (!timeout) return std::move(timeout).error();
    if (*timeout < std::chrono::seconds(1) || timeout->count() > kMaxLifetimeMs) {
      return invalid("--timeout: must be between 1s and 30d");
    }
    spec.set_timeout_s(static_cast<std::uint32_t>((timeout->count() + 999) / 1000));
  }
  if (flags.retries > kMaxRetries) return invalid(fmt::format("--retries: at most {}", kMaxRetries));
  spec.set_retries(flags.retries);
  for (const auto& w : flags.windows) {
    if (auto st = check_window(w); !st) return std::move(st).error();
    spec.add_windows(w);
  }

  // Time: issue, expiry, start, end.
  auto lifetime = parse_job_duration("--expires", flags.expires);
  if (!lifetime) return std::move(lifetime).error();
  if (lifetime->count() <= 0 || lifetime->count() > kMaxLifetimeMs)
    return invalid("--expires: must be between 1s and 30d");
  doc.set_issued_at_ms(now_ms);
  doc.set_expires_at_ms(now_ms + lifetime->count());
  if (!flags.start.empty()) {
    auto start = parse_time_flag("--start", flags.start, now_ms);
    if (!start) return std::move(start).error();
    if (*start >= doc.expires_at_ms()) {
      return invalid(fmt::format("--start {} is not before the document expires ({}); raise --expires",
                                 format_utc(*start), format_utc(doc.expires_at_ms())));
    }
    spec.set_start_at_ms(*start);
  }
  if (!flags.end.empty()) {
    auto end = parse_time_flag("--end", flags.end, now_ms);
    if (!end) return std::move(end).error();
    if (*end <= std::max(now_ms, spec.start_at_ms())) return invalid("--end: the job would end before it starts");
    if (*end > doc.expires_at_ms()) {
      return invalid(fmt::format("--end {} is after the document expires ({}); raise --expires", format_utc(*end),
                                 format_utc(doc.expires_at_ms())));
    }
    spec.set_end_at_ms(*end);
  }
  doc.set_max_attempts(flags.retries + 1);

  // Identity.
  const std::string id = flags.id.empty() ? default_job_id(now_ms) : flags.id;
  if (auto st = validate_topic_level_name(id, "--id"); !st) return std::move(st).error();
  doc.set_job_id(id);
  doc.set_schema_version(codec::schema_version);
  if (flags.description.size() > kMaxDescriptionBytes || !is_utf8(flags.description)) {
    return invalid(fmt::format("--description: UTF-8 text of at most {} bytes", kMaxDescriptionBytes));
  }
  spec.set_description(flags.description);
  spec.set_require_approval(flags.require_approval);
  return plan;
}

Status attach_script(JobPlan& plan, const v1::Script& script, const signing::Signer& signer) {
  if (script.name() != plan.script_name) {
    return make_error(Errc::corruption, "asked for script {}, the manager sent {:?}", plan.script_name,
                      script.name().substr(0, 80));
  }
  if (script.body().empty() || script.interpreter().empty()) {
    return invalid(fmt::format("script {} has no body or interpreter", script.name()));
  }
  const std::string digest = signing::sha256_hex(script.body());
  if (digest != script.sha256()) {
    return make_error(Errc::corruption, "script {}: its body hashes to {}, not to the library's {:?}", script.name(),
                      digest, script.sha256().substr(0, 80));
  }
  if (script.key_id() == signer.key_id()) {
    signing::TrustStore own;
    if (auto st = own.add_pem(signer.public_pem()); !st) return std::move(st).error();
    if (auto st = own.verify(script.key_id(),
                             jobs::script_signing_message(script.name(), script.interpreter(), script.body()),
                             script.signature());
        !st) {
      return make_error(Errc::corruption, "script {} version {}: its signature by this key does not hold: {}",
                        script.name(), script.version(), st.error().message);
    }
  }
  auto* s = plan.document.mutable_script();
  s->Clear();
  s->set_name(script.name());
  s->set_interpreter(script.interpreter());
  s->set_body(script.body());
  return {};
}

Result<v1::JobSpec> sign_plan(const JobPlan& plan, const signing::Signer& signer,
                              const std::vector<std::string>& devices) {
  std::string document = codec::encode(plan.document);
  if (document.size() > kMaxDocumentBytes) {
    return invalid(fmt::format("the job document has {} bytes; at most {}", document.size(), kMaxDocumentBytes));
  }
  v1::JobSpec spec = plan.spec;
  if (plan.scoped()) {
    *spec.mutable_signed_() = jobs::sign_job(signer, std::move(document), "*");
    if (spec.signed_().signature().empty()) return make_error(Errc::internal, "signing failed");
    return spec;
  }
  if (devices.empty()) return invalid("no devices to sign the job for");
  // The message is a fixed prefix (with the document's digest) and the target; hashing a large
  // document once instead of once per device. Checked against the definition on the first device.
  const std::string prefix = jobs::job_signing_message(document, "");
  const bool prefix_holds = prefix + devices.front() == jobs::job_signing_message(document, devices.front());
  auto& signatures = *spec.mutable_device_signatures();
  for (const auto& id : devices) {
    std::string signature = signer.sign(prefix_holds ? prefix + id : jobs::job_signing_message(document, id));
    if (signature.empty()) return make_error(Errc::internal, "signing for device {} failed", id);
    signatures[id] = std::move(signature);
  }
  auto* s = spec.mutable_signed_();
  s->set_key_id(signer.key_id());
  s->set_target(devices.front());
  s->set_signature(signatures.at(devices.front()));
  s->set_document(std::move(document));
  return spec;
}

// ---------------------------------------------------------------------------------------------
// Commands

namespace {

enum class JobCommand {
  none,
  keys_generate,
  scripts_add,
  scripts_list,
  scripts_show,
  jobs_create,
  jobs_list,
  jobs_show,
  jobs_cancel,
  jobs_approve,
  jobs_watch,
  audit
};

// Everything these commands' flags said.
struct JobInvocation {
  JobCommand command = JobCommand::none;
  std::string out_dir;  // keys generate
  std::string key_name = "operator";
  std::string name;  // scripts add/show
  std::string file;
  std::string interpreter;
  std::string key;  // --key
  JobFlags job;
  bool dry_run = false;
  std::string job_id;  // show, cancel, approve, watch
  bool active_only = false;
  std::uint32_t list_limit = 0;  // jobs list, audit: 0 = the manager's default
  bool executions = false;
  std::string state;
  std::uint64_t execution_limit = 0;  // 0 = every execution
  std::string reason;
  std::string interval = "1s";
  std::string timeout_total;
};

// CLI11 validator of an integer in [lo, hi]: CLI11's own conversion accepts out-of-range values.
CLI::Validator integer_in(std::uint64_t lo, std::uint64_t hi) {
  return CLI::Validator(
      [lo, hi](const std::string& text) -> std::string {
        std::uint64_t value = 0;
        const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc{} || ptr != text.data() + text.size() || value < lo || value > hi) {
          return fmt::format("must be an integer from {} to {}", lo, hi);
        }
        return {};
      },
      fmt::format("INT in [{} - {}]", lo, hi));
}

// The private key: --key, else $FLOTILLA_SIGNING_KEY, else the configuration file's signing_key.
Outcome<signing::Signer> load_signer(const std::string& flag, const Settings& settings) {
  std::string path = flag;
  std::string source = "--key";
  if (path.empty()) {
    if (const char* env = std::getenv("FLOTILLA_SIGNING_KEY"); env != nullptr && *env != '\0') {
      path = env;
      source = "FLOTILLA_SIGNING_KEY";
    } else {
      path = settings.signing_key;
      source = "signing_key";
    }
  }
  if (path.empty()) {
    return usage("no signing key: pass --key FILE, set FLOTILLA_SIGNING_KEY or signing_key in the configuration file");
  }
  auto signer = signing::Signer::from_file(path);
  if (!signer) return usage(fmt::format("{}: {}", source, signer.error().message));
  return std::move(*signer);
}

// Reads a script file: at most max_script_bytes.
Outcome<std::string> read_script_file(const std::string& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return usage(fmt::format("{}: {}", path, ec.message()));
  if (size > max_script_bytes) {
    return usage(fmt::format("{}: {} bytes; a script has at most {}", path, size, max_script_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return usage(fmt::format("{}: cannot open", path));
  std::ostringstream body;
  body << in.rdbuf();
  if (!in && !in.eof()) return usage(fmt::format("{}: read failed", path));
  return body.str();
}

// A JSON object of named documents, in the order given: {"a":...,"b":...}.
Outcome<std::string> json_object(
    std::initializer_list<std::pair<std::string_view, const google::protobuf::Message*>> parts) {
  std::string text = "{";
  for (const auto& [name, message] : parts) {
    auto json = to_json(*message);
    if (!json) return Failure{exit_internal, json.error().message};
    if (text.size() > 1) text += ',';
    text += fmt::format("\"{}\":{}", name, *json);
  }
  return text + "}";
}

int print_json(const Outcome<std::string>& json, std::ostream& out, std::ostream& err) {
  if (const auto* f = std::get_if<Failure>(&json)) return fail(*f, err);
  out << std::get<std::string>(json) << '\n';
  out.flush();
  return exit_ok;
}

int keys_generate(const JobInvocation& inv, bool json, std::ostream& out, std::ostream& err) {
  auto files = generate_key_files(inv.out_dir, inv.key_name);
  if (!files) {
    const int code = files.error().code == Errc::internal ? exit_internal : exit_usage;
    return fail(Failure{code, files.error().message}, err);
  }
  if (json) {
    google::protobuf::Struct s;
    (*s.mutable_fields())["key_id"].set_string_value(files->key_id);
    (*s.mutable_fields())["private_key"].set_string_value(files->private_key.string());
    (*s.mutable_fields())["public_key"].set_string_value(files->public_key.string());
    auto text = to_json(s);
    if (!text) return fail(Failure{exit_internal, text.error().message}, err);
    out << *text << '\n';
    out.flush();
    return exit_ok;
  }
  out << render_columns({{"Key id:", files->key_id},
                         {"Private key:", files->private_key.string() + " (mode 0600; keep it secret)"},
                         {"Public key:", files->public_key.string() + " (install in the agents' jobs.trusted_keys)"}});
  out.flush();
  return exit_ok;
}

int scripts_add(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  if (auto st = validate_topic_level_name(inv.name, "script name"); !st) return fail(usage(st.error().message), err);
  auto body = read_script_file(inv.file);
  if (auto* f = std::get_if<Failure>(&body)) return fail(*f, err);
  const auto& text = std::get<std::string>(body);
  if (auto st = validate_script_body(text); !st)
    return fail(usage(fmt::format("{}: {}", inv.file, st.error().message)), err);
  std::string interpreter = inv.interpreter;
  if (interpreter.empty()) {
    auto detected = interpreter_from_shebang(text);
    if (!detected) return fail(usage(fmt::format("{}: {}", inv.file, detected.error().message)), err);
    interpreter = *detected;
  }
  auto signer = load_signer(inv.key, s);
  if (auto* f = std::get_if<Failure>(&signer)) return fail(*f, err);
  const auto& key = std::get<signing::Signer>(signer);

  v1::RpcRequest request;
  auto* script = request.mutable_add_script()->mutable_script();
  script->set_name(inv.name);
  script->set_interpreter(interpreter);
  script->set_body(text);
  script->set_key_id(key.key_id());
  script->set_signature(key.sign(jobs::script_signing_message(inv.name, interpreter, text)));
  if (script->signature().empty()) return fail(Failure{exit_internal, "signing the script failed"}, err);
  auto reply = session.call(std::move(request), v1::RpcResponse::kScript, fmt::format("scripts add {}", inv.name));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& added = std::get<v1::RpcResponse>(reply).script();
  if (added.sha256() != signing::sha256_hex(text)) {
    return fail(Failure{exit_internal, fmt::format("the manager reports SHA-256 {:?} for script {}, not {}",
                                                   added.sha256().substr(0, 80), inv.name, signing::sha256_hex(text))},
                err);
  }
  return emit(
      s, added, [&] { return render_script(added, unix_now_ms()); }, out, err);
}

int scripts_list(Session& session, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_list_scripts();
  auto reply = session.call(std::move(request), v1::RpcResponse::kScripts, "scripts list");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& list = std::get<v1::RpcResponse>(reply).scripts();
  return emit(
      s, list, [&] { return render_scripts_table(list, unix_now_ms()); }, out, err);
}

int scripts_show(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  if (auto st = validate_topic_level_name(inv.name, "script name"); !st) return fail(usage(st.error().message), err);
  v1::RpcRequest request;
  request.mutable_get_script()->set_name(inv.name);
  auto reply = session.call(std::move(request), v1::RpcResponse::kScript, fmt::format("script {}", inv.name));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& script = std::get<v1::RpcResponse>(reply).script();
  return emit(
      s, script, [&] { return render_script(script, unix_now_ms()); }, out, err);
}

Failure too_many_signatures(std::size_t devices, std::size_t bytes) {
  return usage(
      fmt::format("a job for {} devices with per-device signatures does not fit one request ({} bytes or "
                  "more, at most {}); sign once for a tenant with --scope TENANT[/SITE]",
                  devices, bytes, max_job_request_bytes));
}

// The devices an unscoped job is signed for: the ids given, or the manager's answer to the
// group's or the query's query now.
Outcome<std::vector<std::string>> resolve_devices(Session& session, const JobPlan& plan) {
  const auto& target = plan.spec.target();
  if (target.device_ids_size() > 0)
    return std::vector<std::string>(target.device_ids().begin(), target.device_ids().end());
  const std::string query = target.group().empty() ? target.query() : fmt::format("group:\"{}\"", target.group());
  std::vector<std::string> ids;
  std::string cursor;
  for (;;) {
    v1::RpcRequest request;
    auto* q = request.mutable_query_devices();
    q->set_query(query);
    q->set_limit(kResolvePage);
    q->set_cursor(cursor);
    q->add_fields("id");
    auto reply = session.call(std::move(request), v1::RpcResponse::kQueryDevices, "resolving the target");
    if (auto* f = std::get_if<Failure>(&reply)) return *f;
    const auto& page = std::get<v1::RpcResponse>(reply).query_devices();
    if (page.total() * kMinSignatureEntryBytes > max_job_request_bytes) {
      return too_many_signatures(page.total(), page.total() * kMinSignatureEntryBytes);
    }
    for (const auto& row : page.rows()) {
      if (auto id = DeviceId::parse(row.device_id()); !id) {
        return Failure{exit_internal,
                       fmt::format("the manager listed an invalid device id {:?}", row.device_id().substr(0, 80))};
      }
      ids.push_back(row.device_id());
    }
    if (page.next_cursor().empty() || page.next_cursor() == cursor) break;
    cursor = page.next_cursor();
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  if (ids.empty()) {
    return Failure{exit_not_found, target.group().empty()
                                       ? fmt::format("no device matches the query {:?}", target.query())
                                       : fmt::format("group {} has no devices (or does not exist)", target.group())};
  }
  return ids;
}

int jobs_create(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  auto plan = plan_job(inv.job, unix_now_ms());
  if (!plan) return fail(usage(plan.error().message), err);
  auto signer = load_signer(inv.key, s);
  if (auto* f = std::get_if<Failure>(&signer)) return fail(*f, err);
  const auto& key = std::get<signing::Signer>(signer);

  if (!plan->script_name.empty()) {
    v1::RpcRequest request;
    request.mutable_get_script()->set_name(plan->script_name);
    auto reply = session.call(std::move(request), v1::RpcResponse::kScript,
                              fmt::format("script {}", plan->script_name));
    if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
    if (auto st = attach_script(*plan, std::get<v1::RpcResponse>(reply).script(), key); !st) {
      return fail(Failure{exit_internal, st.error().message}, err);
    }
  }
  std::vector<std::string> devices;
  if (!plan->scoped()) {
    auto resolved = resolve_devices(session, *plan);
    if (auto* f = std::get_if<Failure>(&resolved)) return fail(*f, err);
    devices = std::move(std::get<std::vector<std::string>>(resolved));
    if (devices.size() * kMinSignatureEntryBytes > max_job_request_bytes) {
      return fail(too_many_signatures(devices.size(), devices.size() * kMinSignatureEntryBytes), err);
    }
  }
  auto spec = sign_plan(*plan, key, devices);
  if (!spec) {
    return fail(Failure{spec.error().code == Errc::internal ? exit_internal : exit_usage, spec.error().message}, err);
  }
  v1::RpcRequest request;
  *request.mutable_create_job()->mutable_spec() = std::move(*spec);
  request.set_actor(s.actor);
  if (const auto bytes = request.ByteSizeLong(); bytes > max_job_request_bytes) {
    return fail(too_many_signatures(devices.size(), bytes), err);
  }
  if (inv.dry_run) {
    return print_json(json_object({{"document", &plan->document}, {"spec", &request.create_job().spec()}}), out, err);
  }
  const std::string id = plan->document.job_id();
  auto reply = session.call(std::move(request), v1::RpcResponse::kJob, fmt::format("jobs create {}", id));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& job = std::get<v1::RpcResponse>(reply).job();
  return emit(
      s, job, [&] { return render_job(job, unix_now_ms()); }, out, err);
}

int jobs_list(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_list_jobs()->set_limit(inv.list_limit);
  request.mutable_list_jobs()->set_active_only(inv.active_only);
  auto reply = session.call(std::move(request), v1::RpcResponse::kJobs, "jobs list");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& list = std::get<v1::RpcResponse>(reply).jobs();
  return emit(
      s, list, [&] { return render_jobs_table(list, unix_now_ms()); }, out, err);
}

Outcome<v1::JobRecord> show_job(Session& session, const std::string& id) {
  v1::RpcRequest request;
  request.mutable_show_job()->set_job_id(id);
  auto reply = session.call(std::move(request), v1::RpcResponse::kJob, fmt::format("job {}", id));
  if (auto* f = std::get_if<Failure>(&reply)) return *f;
  return std::move(*std::get<v1::RpcResponse>(reply).mutable_job());
}

int jobs_show(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::ExecutionState state = v1::EXECUTION_STATE_UNSPECIFIED;
  if (!inv.state.empty()) {
    auto parsed = parse_execution_state(inv.state);
    if (!parsed) return fail(usage(fmt::format("--state: {}", parsed.error().message)), err);
    state = *parsed;
  }
  auto shown = show_job(session, inv.job_id);
  if (auto* f = std::get_if<Failure>(&shown)) return fail(*f, err);
  const auto& job = std::get<v1::JobRecord>(shown);
  if (!inv.executions) {
    return emit(
        s, job, [&] { return render_job(job, unix_now_ms()); }, out, err);
  }
  v1::ExecutionList all;
  std::string cursor;
  for (;;) {
    std::uint32_t page = kExecutionPage;
    if (inv.execution_limit > 0) {
      page = static_cast<std::uint32_t>(std::min<std::uint64_t>(page, inv.execution_limit - all.executions_size()));
    }
    v1::RpcRequest request;
    auto* q = request.mutable_job_executions();
    q->set_job_id(inv.job_id);
    q->set_state(state);
    q->set_limit(page);
    q->set_start_after(cursor);
    auto reply = session.call(std::move(request), v1::RpcResponse::kExecutions,
                              fmt::format("executions of {}", inv.job_id));
    if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
    auto& list = *std::get<v1::RpcResponse>(reply).mutable_executions();
    // The next page starts after the manager's cursor or, when a full page came without one, after
    // the last device listed (start_after takes a device id); an empty page ends the listing.
    std::string next = list.next_cursor();
    if (next.empty() && list.executions_size() > 0 && static_cast<std::uint32_t>(list.executions_size()) >= page) {
      next = list.executions(list.executions_size() - 1).device_id();
    }
    for (auto& e : *list.mutable_executions()) {
      if (inv.execution_limit > 0 && static_cast<std::uint64_t>(all.executions_size()) >= inv.execution_limit) break;
      *all.add_executions() = std::move(e);
    }
    const bool limit_reached = inv.execution_limit > 0 &&
                               static_cast<std::uint64_t>(all.executions_size()) >= inv.execution_limit;
    // A page that made no progress would loop forever on a misbehaving manager.
    if (next.empty() || next == cursor) break;
    if (limit_reached) {
      all.set_next_cursor(all.executions().rbegin()->device_id());
      break;
    }
    cursor = std::move(next);
  }
  if (s.json) return print_json(json_object({{"job", &job}, {"executions", &all}}), out, err);
  const auto now = unix_now_ms();
  out << render_job(job, now) << '\n' << render_executions_table(all, now);
  if (!all.next_cursor().empty()) out << fmt::format("(first {} executions; --limit)\n", all.executions_size());
  out.flush();
  return exit_ok;
}

// jobs cancel and jobs approve: a decision on one job, with a note for the audit log.
int jobs_decide(Session& session, const JobInvocation& inv, const Settings& s, bool approve, std::ostream& out,
                std::ostream& err) {
  const char* flag = approve ? "--note" : "--reason";
  if (inv.reason.size() > kMaxDescriptionBytes || !is_utf8(inv.reason)) {
    return fail(usage(fmt::format("{}: UTF-8 text of at most {} bytes", flag, kMaxDescriptionBytes)), err);
  }
  v1::RpcRequest request;
  auto* decision = approve ? request.mutable_approve_job() : request.mutable_cancel_job();
  decision->set_job_id(inv.job_id);
  decision->set_reason(inv.reason);
  auto reply = session.call(std::move(request), v1::RpcResponse::kJob,
                            fmt::format("jobs {} {}", approve ? "approve" : "cancel", inv.job_id));
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& job = std::get<v1::RpcResponse>(reply).job();
  return emit(
      s, job, [&] { return render_job(job, unix_now_ms()); }, out, err);
}

int jobs_watch(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  auto interval = parse_job_duration("--interval", inv.interval);
  if (!interval) return fail(usage(interval.error().message), err);
  if (*interval < std::chrono::milliseconds(100) || *interval > std::chrono::hours(1)) {
    return fail(usage("--interval: must be between 100ms and 1h"), err);
  }
  std::optional<SteadyClock::time_point> deadline;
  if (!inv.timeout_total.empty()) {
    auto total = parse_job_duration("--timeout-total", inv.timeout_total);
    if (!total) return fail(usage(total.error().message), err);
    if (total->count() <= 0) return fail(usage("--timeout-total: must be greater than 0"), err);
    deadline = SteadyClock::now() + *total;
  }
  // A live line redrawn in place on a terminal; one line per change otherwise (logs, pipes).
  const bool live = &err == &std::cerr && ::isatty(STDERR_FILENO) == 1;
  bool drawn = false;
  std::string last;
  auto end_line = [&] {
    if (live && drawn) err << '\n';
    drawn = false;
  };
  v1::JobRecord job;
  for (;;) {
    auto shown = show_job(session, inv.job_id);
    if (auto* f = std::get_if<Failure>(&shown)) {
      end_line();
      return fail(*f, err);
    }
    job = std::move(std::get<v1::JobRecord>(shown));
    const std::string line = render_progress(job, kProgressBarWidth);
    if (live) {
      err << '\r' << line << "\x1b[K";
      drawn = true;
    } else if (line != last) {
      err << line << '\n';
    }
    err.flush();
    last = line;
    if (is_terminal(job.state())) break;
    auto wait = std::chrono::duration_cast<SteadyClock::duration>(*interval);
    if (deadline) {
      const auto now = SteadyClock::now();
      if (now >= *deadline) {
        end_line();
        const int printed = emit(
            s, job, [&] { return render_job(job, unix_now_ms()); }, out, err);
        if (printed != exit_ok) return printed;
        return fail(Failure{exit_watch_timeout, fmt::format("job {} is still {} after --timeout-total {}", job.job_id(),
                                                            job_state_label(job.state()), inv.timeout_total)},
                    err);
      }
      wait = std::min(wait, *deadline - now);
    }
    std::this_thread::sleep_for(wait);
  }
  end_line();
  const int printed = emit(
      s, job, [&] { return render_job(job, unix_now_ms()); }, out, err);
  if (printed != exit_ok) return printed;
  const int code = job_outcome_exit_code(job);
  if (code == exit_ok) return exit_ok;
  const auto total = total_executions(job.counts());
  std::string why = fmt::format("job {} ended {}: {} of {} executions succeeded", job.job_id(),
                                job_state_label(job.state()), job.counts().succeeded(), total);
  if (!job.state_reason().empty()) why += fmt::format(" ({})", job.state_reason());
  return fail(Failure{code, why}, err);
}

int audit(Session& session, const JobInvocation& inv, const Settings& s, std::ostream& out, std::ostream& err) {
  v1::RpcRequest request;
  request.mutable_audit_log()->set_limit(inv.list_limit);
  auto reply = session.call(std::move(request), v1::RpcResponse::kAudit, "audit");
  if (auto* f = std::get_if<Failure>(&reply)) return fail(*f, err);
  const auto& log = std::get<v1::RpcResponse>(reply).audit();
  return emit(
      s, log, [&] { return render_audit_table(log); }, out, err);
}

}  // namespace

struct JobCommands::Impl {
  JobInvocation inv;
  CLI::App* keys = nullptr;
  CLI::App* scripts = nullptr;
  CLI::App* jobs = nullptr;
  CLI::App* audit = nullptr;
  std::vector<std::pair<CLI::App*, JobCommand>> leaves;

  void add(CLI::App& app);
  JobCommand chosen() const {
    for (const auto& [sub, command] : leaves) {
      if (sub->parsed()) return command;
    }
    return JobCommand::none;
  }
};

void JobCommands::Impl::add(CLI::App& app) {
  auto& i = inv;
  auto& j = inv.job;

  keys = app.add_subcommand("keys", "Operator signing keys (Ed25519) for jobs and scripts");
  auto* generate = keys->add_subcommand("generate", "Generate a key pair: DIR/NAME.key (0600) and DIR/NAME.pub");
  generate->add_option("--out", i.out_dir, "Directory for the key files (created 0700 when missing)")
      ->required()
      ->type_name("DIR");
  generate->add_option("--name", i.key_name, "File name of the pair (default operator)")->type_name("NAME");
  leaves.emplace_back(generate, JobCommand::keys_generate);

  scripts = app.add_subcommand("scripts", "The manager's library of signed scripts for script.run jobs");
  auto* s_add = scripts->add_subcommand("add", "Sign and add a script (a new version when the name exists)");
  s_add->add_option("name", i.name, "Script name")->required();
  s_add->add_option("file", i.file, "The script")->required();
  s_add->add_option("--interpreter", i.interpreter, "sh, bash or python3 (default: from the #! line)")
      ->check(CLI::IsMember({"sh", "bash", "python3"}))
      ->type_name("NAME");
  s_add->add_option("--key", i.key, "Private key (default $FLOTILLA_SIGNING_KEY, else the config's signing_key)")
      ->type_name("FILE");
  leaves.emplace_back(s_add, JobCommand::scripts_add);
  auto* s_list = scripts->add_subcommand("list", "List the scripts (latest versions)");
  leaves.emplace_back(s_list, JobCommand::scripts_list);
  auto* s_show = scripts->add_subcommand("show", "Show a script (its body with -o json)");
  s_show->add_option("name", i.name, "Script name")->required();
  leaves.emplace_back(s_show, JobCommand::scripts_show);

  jobs = app.add_subcommand("jobs", "Signed jobs: one command document for many devices");
  auto* create = jobs->add_subcommand("create", "Sign and create a job");
  auto* devices = create->add_option("--devices", j.devices, "Target: device ids, comma-separated")
                      ->delimiter(',')
                      ->type_name("ID,...");
  auto* group = create->add_option("--group", j.group, "Target: a group and its subgroups")->type_name("NAME");
  auto* query = create->add_option("--query", j.query, "Target: the devices matching a query")->type_name("QUERY");
  devices->excludes(group)->excludes(query);
  group->excludes(query);
  create->add_option("--type", j.type, "Job type, e.g. package.install, service.restart (docs/jobs.md)")
      ->type_name("TYPE");
  create->add_option("--param", j.params, "A parameter of the job type, repeatable")
      ->allow_extra_args(false)
      ->type_name("KEY=VALUE");
  create->add_option("--script", j.script, "Run this script of the library (type script.run)")->type_name("NAME");
  create->add_option("--arg", j.args, "An argument of the script, repeatable, in order")
      ->allow_extra_args(false)
      ->type_name("ARG");
  auto* rate = create->add_option("--rate", j.rate, "Notify at most this many devices: 100/min, 10/s, 5000/h")
                   ->type_name("RATE");
  create
      ->add_option("--exponential", j.exponential,
                   "Growing rate: 'base=10/min,factor=2,after=notified:50,max=1000/min'")
      ->excludes(rate)
      ->type_name("SPEC");
  create->add_option("--jitter", j.jitter, "Delay each device by a stable random share of this, e.g. 30s")
      ->type_name("DURATION");
  create->add_option("--abort", j.abort_rules, "Abort rule STATE>P%@MIN, e.g. FAILED>5%@50; repeatable")
      ->allow_extra_args(false)
      ->type_name("RULE");
  create->add_option("--timeout", j.timeout, "In-progress timeout of each execution (default: the manager's)")
      ->type_name("DURATION");
  create->add_option("--retries", j.retries, "Retries of a FAILED or TIMED_OUT execution (default 0)")
      ->check(integer_in(0, kMaxRetries))
      ->type_name("N");
  create->add_option("--window", j.windows, "Maintenance window 'CRON DURATION [ZONE]'; repeatable")
      ->allow_extra_args(false)
      ->type_name("WINDOW");
  create->add_option("--start", j.start, "Start time: RFC 3339, +30m or now (default now)")->type_name("TIME");
  create->add_option("--end", j.end, "Nothing is dispatched after this time")->type_name("TIME");
  create->add_option("--expires", j.expires, "Document lifetime (default 7d, at most 30d)")->type_name("DURATION");
  create->add_flag("--continuous", j.continuous, "Devices that match later get the job too (needs --scope)");
  create->add_option("--scope", j.scope, "Sign once for the devices of TENANT[/SITE] instead of per device")
      ->type_name("TENANT[/SITE]");
  create->add_option("--id", j.id, "Job id (default j-YYYYMMDD-HHMMSS-xxxxxx)")->type_name("ID");
  create->add_option("--description", j.description, "Free text")->type_name("TEXT");
  create->add_flag("--require-approval", j.require_approval,
                   "Dispatch nothing until another operator runs `flotilla jobs approve ID`");
  create->add_option("--key", i.key, "Private key (default $FLOTILLA_SIGNING_KEY, else the config's signing_key)")
      ->type_name("FILE");
  create->add_flag("--dry-run", i.dry_run, "Print the signed request as JSON; create nothing");
  leaves.emplace_back(create, JobCommand::jobs_create);

  auto* list = jobs->add_subcommand("list", "List jobs, newest first");
  list->add_flag("--active", i.active_only, "Only SCHEDULED and IN_PROGRESS jobs");
  list->add_option("--limit", i.list_limit, "At most N jobs (default 100, at most 5000)")
      ->check(integer_in(1, 5000))
      ->type_name("N");
  leaves.emplace_back(list, JobCommand::jobs_list);
  auto* show = jobs->add_subcommand("show", "Show a job: state, reason, timing, counts per state");
  show->add_option("id", i.job_id, "Job id")->required();
  auto* executions = show->add_flag("--executions", i.executions, "Also list the executions, in device order");
  show->add_option("--state", i.state, "Only executions in this state, e.g. failed")
      ->needs(executions)
      ->type_name("STATE");
  show->add_option("--limit", i.execution_limit, "At most N executions")
      ->check(integer_in(1, UINT64_MAX))
      ->needs(executions)
      ->type_name("N");
  leaves.emplace_back(show, JobCommand::jobs_show);
  auto* cancel = jobs->add_subcommand("cancel", "Cancel a job: queued executions become CANCELED");
  cancel->add_option("id", i.job_id, "Job id")->required();
  cancel->add_option("--reason", i.reason, "Why (kept in the audit log)")->type_name("TEXT");
  leaves.emplace_back(cancel, JobCommand::jobs_cancel);
  auto* approve = jobs->add_subcommand("approve", "Approve a job that awaits approval (not your own)");
  approve->add_option("id", i.job_id, "Job id")->required();
  approve->add_option("--note", i.reason, "A note for the audit log")->type_name("TEXT");
  leaves.emplace_back(approve, JobCommand::jobs_approve);
  auto* watch = jobs->add_subcommand("watch", "Follow a job's progress until it ends");
  watch->add_option("id", i.job_id, "Job id")->required();
  watch->add_option("--interval", i.interval, "Poll period (default 1s)")->type_name("DURATION");
  watch->add_option("--timeout-total", i.timeout_total, "Give up (exit 7) when the job still runs after this")
      ->type_name("DURATION");
  leaves.emplace_back(watch, JobCommand::jobs_watch);

  audit = app.add_subcommand("audit", "The manager's audit log, newest first");
  audit->add_option("--limit", i.list_limit, "At most N entries (default 50, at most 5000)")
      ->check(integer_in(1, 5000))
      ->type_name("N");
  leaves.emplace_back(audit, JobCommand::audit);
}

JobCommands::JobCommands(CLI::App& app) : impl_(std::make_unique<Impl>()) { impl_->add(app); }
JobCommands::~JobCommands() = default;

bool JobCommands::chosen() const {
  return impl_->keys->parsed() || impl_->scripts->parsed() || impl_->jobs->parsed() || impl_->audit->parsed();
}

std::optional<Failure> JobCommands::check_subcommand() const {
  if (impl_->keys->parsed() && impl_->keys->get_subcommands().empty()) {
    return usage("keys: a subcommand is required: generate (see flotilla keys --help)");
  }
  if (impl_->scripts->parsed() && impl_->scripts->get_subcommands().empty()) {
    return usage("scripts: a subcommand is required: add, list or show (see flotilla scripts --help)");
  }
  if (impl_->jobs->parsed() && impl_->jobs->get_subcommands().empty()) {
    return usage(
        "jobs: a subcommand is required: create, list, show, cancel, approve or watch (see flotilla jobs --help)");
  }
  return std::nullopt;
}

int JobCommands::execute(const GlobalOptions& options, std::ostream& out, std::ostream& err) {
  const auto& inv = impl_->inv;
  const JobCommand command = impl_->chosen();
  if (command == JobCommand::none) return fail(Failure{exit_internal, "no command selected"}, err);
  // Keys need no broker and no configuration file.
  if (command == JobCommand::keys_generate) return keys_generate(inv, options.output == "json", out, err);
  if (command == JobCommand::jobs_show || command == JobCommand::jobs_cancel || command == JobCommand::jobs_approve ||
      command == JobCommand::jobs_watch) {
    if (auto st = validate_topic_level_name(inv.job_id, "job id"); !st) return fail(usage(st.error().message), err);
  }

  auto resolved = resolve_settings(options);
  if (auto* f = std::get_if<Failure>(&resolved)) return fail(*f, err);
  const Settings& settings = std::get<Settings>(resolved);
  Session session(settings);
  switch (command) {
    case JobCommand::scripts_add: return scripts_add(session, inv, settings, out, err);
    case JobCommand::scripts_list: return scripts_list(session, settings, out, err);
    case JobCommand::scripts_show: return scripts_show(session, inv, settings, out, err);
    case JobCommand::jobs_create: return jobs_create(session, inv, settings, out, err);
    case JobCommand::jobs_list: return jobs_list(session, inv, settings, out, err);
    case JobCommand::jobs_show: return jobs_show(session, inv, settings, out, err);
    case JobCommand::jobs_cancel: return jobs_decide(session, inv, settings, false, out, err);
    case JobCommand::jobs_approve: return jobs_decide(session, inv, settings, true, out, err);
    case JobCommand::jobs_watch: return jobs_watch(session, inv, settings, out, err);
    case JobCommand::audit: return audit(session, inv, settings, out, err);
    case JobCommand::keys_generate:
    case JobCommand::none: break;
  }
  return fail(Failure{exit_internal, "no command selected"}, err);
}

}  // namespace flotilla::cli
