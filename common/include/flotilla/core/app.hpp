#pragma once
// Helpers shared by the thin app/main.cpp of every service: termination signals and the flags
// every executable takes.

#include <csignal>
#include <filesystem>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>

#include <CLI/CLI.hpp>

#include "flotilla/core/log.hpp"

namespace flotilla::app {

// Blocks SIGINT and SIGTERM in the calling thread and every thread it creates afterwards, so
// wait_for_termination() can receive them synchronously. Call first in main().
void block_termination_signals();
// Waits for SIGINT or SIGTERM; returns the signal number.
int wait_for_termination();

struct CommonFlags {
  std::optional<std::string> config_file;
  std::optional<std::string> broker;
  std::optional<std::string> log_level;
};

// Adds --config, --broker, --log-level and --version (printing "NAME VERSION").
void add_common_flags(CLI::App& app, CommonFlags& flags, const std::string& name);

// Parses argv; on --help/--version prints and returns the exit code, on a usage error prints it
// and returns 2; returns nullopt when the program should continue.
std::optional<int> parse(CLI::App& app, int argc, char** argv);

// The --config file, or nullptr when none was given (for the load_config functions).
const std::filesystem::path* config_file(const CommonFlags& flags, std::filesystem::path& storage);

// Applies --log-level over `level`. Returns false (after logging why) on a bad value.
bool apply_log_level(const CommonFlags& flags, log::Level& level);

// Runs `reactor` on its own thread until SIGINT or SIGTERM, then stops it and joins.
// block_termination_signals() must have been called first.
void run_until_signal(const std::function<void(std::stop_token)>& reactor);

}  // namespace flotilla::app
