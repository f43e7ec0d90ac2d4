// flotilla-manager: parses flags, builds the manager over RocksDB and Paho, runs until SIGTERM.

#include <sys/stat.h>

#include <filesystem>
#include <thread>

#include "flotilla/core/app.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/manager/manager.hpp"

int main(int argc, char** argv) {
  using namespace flotilla;
  app::block_termination_signals();
  log::set_component("flotilla-manager");

  CLI::App cli{"Flotilla fleet manager: indexes devices in RocksDB and serves operators over MQTT."};
  app::CommonFlags flags;
  std::optional<std::string> data_dir;
  app::add_common_flags(cli, flags, "flotilla-manager");
  cli.add_option("--data-dir", data_dir, "Directory of the RocksDB store");
  if (auto code = app::parse(cli, argc, argv)) return *code;

  std::filesystem::path config_path;
  auto config = manager::load_config(app::config_file(flags, config_path));
  if (!config) {
    log::error("{}", config.error().message);
    return 2;
  }
  if (flags.broker) config->mqtt.broker = *flags.broker;
  if (data_dir) config->data_dir = *data_dir;
  if (!app::apply_log_level(flags, config->log_level)) return 2;
  if (auto st = manager::validate(*config); !st) {
    log::error("{}", st.error().message);
    return 2;
  }
  log::set_level(config->log_level);

  std::error_code ec;
  std::filesystem::create_directories(config->data_dir, ec);
  if (ec) {
    log::error("manager.data_dir: cannot create {}: {}", config->data_dir.string(), ec.message());
    return 1;
  }
  ::chmod(config->data_dir.c_str(), 0700);
  auto store = manager::open_rocksdb_store(config->data_dir / "db");
  if (!store) {
    log::error("{}", store.error().message);
    return 1;
  }
  auto mgr = manager::Manager::create(std::move(config).value(), std::move(store).value(), make_mqtt_transport);
  if (!mgr) {
    log::error("{}", mgr.error().message);
    return 1;
  }
  app::run_until_signal([&](std::stop_token stop) { (*mgr)->run(stop); });
  return 0;
}
