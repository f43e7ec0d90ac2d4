#pragma once
// Configuration plumbing shared by every executable. Layers: built-in defaults (the structs'
// initialisers) -> TOML file -> environment -> command line, then one validate(). Errors are
// path-qualified: "mqtt.keepalive: must be between 1s and 65535s".

#include <chrono>
#include <filesystem>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/core/transport.hpp"

namespace flotilla::config {

// "250ms", "30s", "5m", "2h", "1d"; a bare integer is seconds.
// Errors: invalid_argument.
Result<std::chrono::milliseconds> parse_duration(std::string_view text);
std::string format_duration(std::chrono::milliseconds d);

// Reads typed values out of one TOML document and remembers which keys were read, so keys
// nobody asked for (typos) can be reported. Values absent from the file leave `out` unchanged.
class TomlReader {
 public:
  // Errors: not_found, io_error, parse_error ("FILE:LINE:COL: message").
  static Result<TomlReader> load_file(const std::filesystem::path& path);
  static Result<TomlReader> parse(std::string_view text, std::string source_name);

  TomlReader(TomlReader&&) noexcept;
  TomlReader& operator=(TomlReader&&) noexcept;
  ~TomlReader();

  Status read(std::string_view key, std::string& out);
  Status read(std::string_view key, bool& out);
  Status read(std::string_view key, std::int64_t& out);
  Status read(std::string_view key, std::uint32_t& out);
  Status read(std::string_view key, std::uint64_t& out);
  Status read(std::string_view key, std::chrono::seconds& out);
  Status read(std::string_view key, std::chrono::milliseconds& out);
  Status read(std::string_view key, std::vector<std::string>& out);

  // Errors: invalid_argument listing every key in the file that no read() consumed.
  Status reject_unknown_keys() const;
  const std::string& source() const;

 private:
  struct Impl;
  explicit TomlReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The [mqtt] section every executable shares.
struct MqttConfig {
  std::string broker = "mqtt://127.0.0.1:1883";
  std::string client_id;  // empty: derived by the executable
  std::string username;   // empty: derived by the executable
  std::string password;   // prefer password_file
  std::string password_file;
  // Keepalive: the broker publishes the Will after 1.5x this of silence.
  std::chrono::seconds keepalive{30};
  // How long the broker keeps the session (subscriptions, queued QoS 1) across a disconnect.
  std::chrono::seconds session_expiry{std::chrono::hours(24)};
  std::chrono::seconds connect_timeout{10};
  // Reconnect backoff: full jitter between 0 and min(max, min * 2^attempt).
  std::chrono::milliseconds reconnect_min{500};
  std::chrono::milliseconds reconnect_max{std::chrono::seconds(60)};
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  bool tls_verify_server = true;
};

// Reads [mqtt] keys: broker, client_id, username, password, password_file, keepalive,
// session_expiry, connect_timeout, reconnect_min, reconnect_max, tls.ca_file, tls.cert_file,
// tls.key_file, tls.verify_server.
Status read_mqtt(TomlReader& reader, MqttConfig& out);
// Applies FLOTILLA_BROKER, FLOTILLA_MQTT_USERNAME, FLOTILLA_MQTT_PASSWORD when set.
void apply_mqtt_env(MqttConfig& out);
Status validate_mqtt(const MqttConfig& config);
// Builds transport options, reading password_file. Errors: io_error, permission_denied.
Result<TransportOptions> transport_options(const MqttConfig& config);

// A file holding a secret must not be readable by others.
// Errors: not_found, permission_denied (with the path).
Status check_secret_file(const std::filesystem::path& path, std::string_view key);

}  // namespace flotilla::config
