// flotilla-sim: runs N simulated devices of three kinds against a broker until SIGTERM.

#include <thread>

#include "flotilla/core/app.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/sim/simulator.hpp"

int main(int argc, char** argv) {
  using namespace flotilla;
  app::block_termination_signals();
  log::set_component("flotilla-sim");

  CLI::App cli{"Flotilla fleet simulator: N protocol-complete virtual PCs, printers and sensors."};
  app::CommonFlags flags;
  sim::SimConfig config;
  std::string telemetry = "10s";
  std::optional<std::string> keepalive;
  std::optional<std::string> password_file;
  app::add_common_flags(cli, flags, "flotilla-sim");
  cli.add_option("--devices", config.devices, "Number of devices")->capture_default_str();
  cli.add_option("--prefix", config.prefix, "Device id prefix")->capture_default_str();
  cli.add_option("--seed", config.seed, "Seed for inventories and readings")->capture_default_str();
  cli.add_option("--telemetry-interval", telemetry, "Telemetry period per device")->capture_default_str();
  cli.add_option("--keepalive", keepalive, "MQTT keepalive (default: mqtt.keepalive, 30s)");
  cli.add_option("--password-file", password_file, "File holding the password every simulated device uses");
  cli.add_option("--tenant", config.tenant, "Tenant every simulated device reports")->capture_default_str();
  cli.add_option("--trusted-keys", config.trusted_keys,
                 "Public key file or directory whose job signatures the devices accept (none: jobs are rejected)");
  cli.add_option("--job-fail-rate", config.job_fail_rate, "Fraction of job executions that report FAILED")
      ->check(CLI::Range(0.0, 1.0));
  cli.add_option("--job-silent-rate", config.job_silent_rate, "Fraction of job executions never answered")
      ->check(CLI::Range(0.0, 1.0));
  cli.add_option("--ledger", config.ledger, "Append one line per job execution to this file");
  if (auto code = app::parse(cli, argc, argv)) return *code;

  if (flags.config_file) {
    auto reader = config::TomlReader::load_file(*flags.config_file);
    if (!reader) {
      log::error("{}", reader.error().message);
      return 2;
    }
    if (auto st = config::read_mqtt(*reader, config.mqtt); !st) {
      log::error("{}", st.error().message);
      return 2;
    }
    if (auto st = reader->reject_unknown_keys(); !st) {
      log::error("{}", st.error().message);
      return 2;
    }
  }
  config::apply_mqtt_env(config.mqtt);
  if (flags.broker) config.mqtt.broker = *flags.broker;
  if (password_file) config.mqtt.password_file = *password_file;
  auto t = config::parse_duration(telemetry);
  if (!t) {
    log::error("--telemetry-interval: {}", t.error().message);
    return 2;
  }
  config.telemetry_interval = *t;
  if (keepalive) {
    auto k = config::parse_duration(*keepalive);
    if (!k) {
      log::error("--keepalive: {}", k.error().message);
      return 2;
    }
    config.mqtt.keepalive = std::chrono::duration_cast<std::chrono::seconds>(*k);
  }
  config.mqtt.session_expiry = std::chrono::seconds(0);
  log::Level level = log::level();
  if (!app::apply_log_level(flags, level)) return 2;
  log::set_level(level);
  auto s = sim::Simulator::create(std::move(config), make_mqtt_transport);
  if (!s) {
    log::error("{}", s.error().message);
    return 2;
  }
  app::run_until_signal([&](std::stop_token stop) { (*s)->run(stop); });
  return 0;
}
