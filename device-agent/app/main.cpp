// flotilla-agent: parses flags, builds the agent over the host collectors and Paho, runs until
// SIGTERM.

#include <thread>

#include "flotilla/agent/agent.hpp"
#include "flotilla/core/app.hpp"
#include "flotilla/core/log.hpp"

int main(int argc, char** argv) {
  using namespace flotilla;
  app::block_termination_signals();
  log::set_component("flotilla-agent");

  CLI::App cli{"Flotilla device agent: reports this host's inventory and health, runs commands."};
  app::CommonFlags flags;
  std::optional<std::string> device_id;
  std::optional<std::string> state_dir;
  app::add_common_flags(cli, flags, "flotilla-agent");
  cli.add_option("--device-id", device_id, "Device id (default: derived from /etc/machine-id)");
  cli.add_option("--state-dir", state_dir, "Directory for the outbox and session state");
  if (auto code = app::parse(cli, argc, argv)) return *code;

  std::filesystem::path config_path;
  auto config = agent::load_config(app::config_file(flags, config_path));
  if (!config) {
    log::error("{}", config.error().message);
    return 2;
  }
  if (flags.broker) config->mqtt.broker = *flags.broker;
  if (device_id) config->device_id = *device_id;
  if (state_dir) config->state_dir = *state_dir;
  if (!app::apply_log_level(flags, config->log_level)) return 2;
  if (auto st = agent::resolve_device_id(*config); !st) {
    log::error("{}", st.error().message);
    return 2;
  }
  if (auto st = agent::validate(*config); !st) {
    log::error("{}", st.error().message);
    return 2;
  }
  log::set_level(config->log_level);

  auto a = agent::Agent::create(std::move(config).value(), agent::make_host_collectors(), make_mqtt_transport);
  if (!a) {
    log::error("{}", a.error().message);
    return 1;
  }
  app::run_until_signal([&](std::stop_token stop) { (*a)->run(stop); });
  return 0;
}
