#include "flotilla/core/app.hpp"

#include <pthread.h>

#include <iostream>
#include <thread>

#include <fmt/format.h>

#include "flotilla/core/version.hpp"

namespace flotilla::app {
namespace {

sigset_t termination_set() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

}  // namespace

void block_termination_signals() {
  sigset_t set = termination_set();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int wait_for_termination() {
  sigset_t set = termination_set();
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

void add_common_flags(CLI::App& app, CommonFlags& flags, const std::string& name) {
  app.add_option("--config", flags.config_file, "TOML configuration file");
  app.add_option("--broker", flags.broker, "Broker URI, mqtt://host:port or mqtts://host:port");
  app.add_option("--log-level", flags.log_level, "debug, info, warn or error");
  app.set_version_flag("--version", fmt::format("{} {}", name, flotilla::version));
}

std::optional<int> parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);
    return 2;
  }
  return std::nullopt;
}

const std::filesystem::path* config_file(const CommonFlags& flags, std::filesystem::path& storage) {
  if (!flags.config_file) return nullptr;
  storage = *flags.config_file;
  return &storage;
}

bool apply_log_level(const CommonFlags& flags, log::Level& level) {
  if (!flags.log_level) return true;
  auto parsed = log::parse_level(*flags.log_level);
  if (!parsed) {
    log::error("--log-level: {}", parsed.error().message);
    return false;
  }
  level = *parsed;
  return true;
}

void run_until_signal(const std::function<void(std::stop_token)>& reactor) {
  std::jthread thread(reactor);
  const int sig = wait_for_termination();
  log::info("received signal {}, shutting down", sig);
  thread.request_stop();
  thread.join();
}

}  // namespace flotilla::app
