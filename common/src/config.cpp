#include "flotilla/core/config.hpp"

#include <sys/stat.h>

#include <charconv>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include <toml++/toml.h>

namespace flotilla::config {

Result<std::chrono::milliseconds> parse_duration(std::string_view text) {
  std::int64_t value = 0;
  const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || ptr == text.data() || value < 0) {
    return make_error(Errc::invalid_argument, "'{}' is not a duration (e.g. 250ms, 30s, 5m, 2h)", text);
  }
  const std::string_view unit(ptr, static_cast<std::size_t>(text.data() + text.size() - ptr));
  std::int64_t scale = 0;
  if (unit.empty() || unit == "s") scale = 1000;
  else if (unit == "ms") scale = 1;
  else if (unit == "m") scale = 60'000;
  else if (unit == "h") scale = 3'600'000;
  else if (unit == "d") scale = 86'400'000;
  else return make_error(Errc::invalid_argument, "'{}': unknown unit '{}' (ms, s, m, h, d)", text, unit);
  if (value > std::numeric_limits<std::int64_t>::max() / scale) {
    return make_error(Errc::invalid_argument, "'{}' is too long", text);
  }
  return std::chrono::milliseconds(value * scale);
}

std::string format_duration(std::chrono::milliseconds d) {
  const auto ms = d.count();
  if (ms % 1000 != 0) return fmt::format("{}ms", ms);
  return fmt::format("{}s", ms / 1000);
}

struct TomlReader::Impl {
  toml::table table;
  std::string source;
  std::set<std::string, std::less<>> consumed;

  const toml::node* find(std::string_view key) {
    const toml::node* node = table.at_path(key).node();
    if (node != nullptr) consumed.emplace(key);
    return node;
  }
  Error type_error(std::string_view key, std::string_view expected) const {
    return make_error(Errc::invalid_argument, "{}: {}: expected {}", source, key, expected);
  }
};

TomlReader::TomlReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TomlReader::TomlReader(TomlReader&&) noexcept = default;
TomlReader& TomlReader::operator=(TomlReader&&) noexcept = default;
TomlReader::~TomlReader() = default;

Result<TomlReader> TomlReader::parse(std::string_view text, std::string source_name) {
  auto impl = std::make_unique<Impl>();
  impl->source = std::move(source_name);
  try {
    impl->table = toml::parse(text, impl->source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    return make_error(Errc::parse_error, "{}:{}:{}: {}", impl->source, where.line, where.column, e.description());
  }
  return TomlReader(std::move(impl));
}

Result<TomlReader> TomlReader::load_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) return make_error(Errc::not_found, "{}: no such file", path.string());
    return make_error(Errc::io_error, "{}: not readable", path.string());
  }
  std::ostringstream text;
  text << in.rdbuf();
  constexpr std::size_t kMaxConfigBytes = 1 << 20;
  if (text.str().size() > kMaxConfigBytes) {
    return make_error(Errc::too_large, "{}: larger than {} bytes", path.string(), kMaxConfigBytes);
  }
  return parse(text.str(), path.string());
}

const std::string& TomlReader::source() const { return impl_->source; }

Status TomlReader::read(std::string_view key, std::string& out) {
  const auto* node = impl_->find(key);
  if (node == nullptr) return {};
  const auto* v = node->as_string();
  if (v == nullptr) return impl_->type_error(key, "a string");
  out = v->get();
  return {};
}

Status TomlReader::read(std::string_view key, bool& out) {
  const auto* node = impl_->find(key);
  if (node == nullptr) return {};
  const auto* v = node->as_boolean();
  if (v == nullptr) return impl_->type_error(key, "true or false");
  out = v->get();
  return {};
}

Status TomlReader::read(std::string_view key, std::int64_t& out) {
  const auto* node = impl_->find(key);
  if (node == nullptr) return {};
  const auto* v = node->as_integer();
  if (v == nullptr) return impl_->type_error(key, "an integer");
  out = v->get();
  return {};
}

Status TomlReader::read(std::string_view key, std::uint32_t& out) {
  std::int64_t wide = out;
  if (auto st = read(key, wide); !st) return st;
  if (wide < 0 || wide > std::numeric_limits<std::uint32_t>::max()) {
    return impl_->type_error(key, "an integer from 0 to 4294967295");
  }
  out = static_cast<std::uint32_t>(wide);
  return {};
}

Status TomlReader::read(std::string_view key, std::uint64_t& out) {
  std::int64_t wide = static_cast<std::int64_t>(std::min<std::uint64_t>(out, std::numeric_limits<std::int64_t>::max()));
  if (auto st = read(key, wide); !st) return st;
  if (wide < 0) return impl_->type_error(key, "a non-negative integer");
  out = static_cast<std::uint64_t>(wide);
  return {};
}

Status TomlReader::read(std::string_view key, std::chrono::milliseconds& out) {
  const auto* node = impl_->find(key);
  if (node == nullptr) return {};
  if (const auto* i = node->as_integer()) {
    if (i->get() < 0) return impl_->type_error(key, "a non-negative duration");
    out = std::chrono::seconds(i->get());
    return {};
  }
  const auto* s = node->as_string();
  if (s == nullptr) return impl_->type_error(key, "a duration such as \"30s\" or an integer of seconds");
  auto d = parse_duration(s->get());
  if (!d) return make_error(Errc::invalid_argument, "{}: {}: {}", impl_->source, key, d.error().message);
  out = *d;
  return {};
}

Status TomlReader::read(std::string_view key, std::chrono::seconds& out) {
  std::chrono::milliseconds ms = out;
  if (auto st = read(key, ms); !st) return st;
  if (ms.count() % 1000 != 0) return impl_->type_error(key, "a whole number of seconds");
  out = std::chrono::duration_cast<std::chrono::seconds>(ms);
  return {};
}

Status TomlReader::read(std::string_view key, std::vector<std::string>& out) {
  const auto* node = impl_->find(key);
  if (node == nullptr) return {};
  const auto* arr = node->as_array();
  if (arr == nullptr) return impl_->type_error(key, "an array of strings");
  std::vector<std::string> values;
  for (const auto& item : *arr) {
    const auto* s = item.as_string();
    if (s == nullptr) return impl_->type_error(key, "an array of strings");
    values.push_back(s->get());
  }
  out = std::move(values);
  return {};
}

Status TomlReader::reject_unknown_keys() const {
  std::vector<std::string> unknown;
  auto walk = [&](auto&& self, const toml::table& t, const std::string& prefix) -> void {
    for (const auto& [k, v] : t) {
      const std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
      if (impl_->consumed.contains(path)) continue;
      if (const auto* sub = v.as_table()) self(self, *sub, path);
      else unknown.push_back(path);
    }
  };
  walk(walk, impl_->table, "");
  if (unknown.empty()) return {};
  return make_error(Errc::invalid_argument, "{}: unknown key{} {}", impl_->source, unknown.size() > 1 ? "s" : "",
                    fmt::join(unknown, ", "));
}

Status read_mqtt(TomlReader& r, MqttConfig& c) {
  for (auto st : {r.read("mqtt.broker", c.broker), r.read("mqtt.client_id", c.client_id),
                  r.read("mqtt.username", c.username), r.read("mqtt.password", c.password),
                  r.read("mqtt.password_file", c.password_file), r.read("mqtt.keepalive", c.keepalive),
                  r.read("mqtt.session_expiry", c.session_expiry), r.read("mqtt.connect_timeout", c.connect_timeout),
                  r.read("mqtt.reconnect_min", c.reconnect_min), r.read("mqtt.reconnect_max", c.reconnect_max),
                  r.read("mqtt.tls.ca_file", c.tls_ca_file), r.read("mqtt.tls.cert_file", c.tls_cert_file),
                  r.read("mqtt.tls.key_file", c.tls_key_file), r.read("mqtt.tls.verify_server", c.tls_verify_server)}) {
    if (!st) return st;
  }
  return {};
}

void apply_mqtt_env(MqttConfig& c) {
  if (const char* v = std::getenv("FLOTILLA_BROKER"); v != nullptr && *v != '\0') c.broker = v;
  if (const char* v = std::getenv("FLOTILLA_MQTT_USERNAME"); v != nullptr && *v != '\0') c.username = v;
  if (const char* v = std::getenv("FLOTILLA_MQTT_PASSWORD"); v != nullptr && *v != '\0') {
    c.password = v;
    c.password_file.clear();  // the environment layer overrides the file layer
  }
}

Status validate_mqtt(const MqttConfig& c) {
  auto uri = parse_broker_uri(c.broker);
  if (!uri) return make_error(Errc::invalid_argument, "mqtt.broker: {}", uri.error().message);
  if (c.keepalive < std::chrono::seconds(1) || c.keepalive > std::chrono::seconds(65535)) {
    return make_error(Errc::invalid_argument, "mqtt.keepalive: must be between 1s and 65535s");
  }
  if (c.session_expiry.count() > std::numeric_limits<std::int32_t>::max()) {
    return make_error(Errc::invalid_argument, "mqtt.session_expiry: at most {}s",
                      std::numeric_limits<std::int32_t>::max());
  }
  if (c.connect_timeout < std::chrono::seconds(1)) {
    return make_error(Errc::invalid_argument, "mqtt.connect_timeout: must be at least 1s");
  }
  if (c.reconnect_min <= std::chrono::milliseconds(0) || c.reconnect_max < c.reconnect_min) {
    return make_error(Errc::invalid_argument, "mqtt.reconnect_max: must be >= mqtt.reconnect_min > 0");
  }
  if (!c.password.empty() && !c.password_file.empty()) {
    return make_error(Errc::invalid_argument, "mqtt.password_file: set either password or password_file, not both");
  }
  if (!c.password_file.empty()) {
    if (auto st = check_secret_file(c.password_file, "mqtt.password_file"); !st) return st;
  }
  if (!c.tls_key_file.empty()) {
    if (auto st = check_secret_file(c.tls_key_file, "mqtt.tls.key_file"); !st) return st;
  }
  for (const auto& [key, file] :
       {std::pair{"mqtt.tls.ca_file", &c.tls_ca_file}, {"mqtt.tls.cert_file", &c.tls_cert_file}}) {
    if (!file->empty() && ::access(file->c_str(), R_OK) != 0) {
      return make_error(Errc::invalid_argument, "{}: {} is not readable", key, *file);
    }
  }
  if (!uri->tls && (!c.tls_ca_file.empty() || !c.tls_cert_file.empty())) {
    return make_error(Errc::invalid_argument, "mqtt.tls: TLS files are set but mqtt.broker is not mqtts://");
  }
  return {};
}

Status check_secret_file(const std::filesystem::path& path, std::string_view key) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return make_error(Errc::not_found, "{}: {} does not exist", key, path.string());
  if ((st.st_mode & S_IROTH) != 0) {
    return make_error(Errc::permission_denied, "{}: {} is world-readable (chmod o-r)", key, path.string());
  }
  if (::access(path.c_str(), R_OK) != 0) {
    return make_error(Errc::permission_denied, "{}: {} is not readable", key, path.string());
  }
  return {};
}

Result<TransportOptions> transport_options(const MqttConfig& c) {
  TransportOptions o;
  o.broker_uri = c.broker;
  o.client_id = c.client_id;
  o.username = c.username;
  o.password = c.password;
  if (!c.password_file.empty()) {
    std::ifstream in(c.password_file);
    if (!in) return make_error(Errc::io_error, "mqtt.password_file: cannot read {}", c.password_file);
    std::getline(in, o.password);
    while (!o.password.empty() && (o.password.back() == '\r' || o.password.back() == ' ')) o.password.pop_back();
  }
  o.keepalive = c.keepalive;
  o.session_expiry = c.session_expiry;
  o.connect_timeout = c.connect_timeout;
  o.tls.ca_file = c.tls_ca_file;
  o.tls.cert_file = c.tls_cert_file;
  o.tls.key_file = c.tls_key_file;
  o.tls.verify_server = c.tls_verify_server;
  return o;
}

}  // namespace flotilla::config
