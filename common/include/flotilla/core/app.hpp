#pragma once
// Helpers shared by the thin app/main.cpp of every service: termination signals and the flags
// every executable takes.

#include <csignal>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

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

}  // namespace flotilla::app
