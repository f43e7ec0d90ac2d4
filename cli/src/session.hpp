#pragma once
// Plumbing shared by the `flotilla` commands (cli.cpp, jobs_cli.cpp): resolved settings, failures
// and their exit codes, output in table or JSON form, and the lazily connected manager session.
// Private to flotilla::cli; everything here runs on the main thread.

#include <chrono>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include <CLI/CLI.hpp>
#include <google/protobuf/message.h>

#include "flotilla/cli/cli.hpp"
#include "flotilla/cli/render.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::cli {

// The global options as the command line gave them, before any file or environment is read.
struct GlobalOptions {
  std::string config_file;
  std::string broker;
  std::string username;
  std::string password_file;
  std::string output;  // empty: from the config file, else table
  std::string timeout = "5s";
};

// The resolved settings of one run.
struct Settings {
  TransportOptions transport;
  std::string username;
  // Written into every request (RpcRequest.actor, the audit log's operator name):
  // $FLOTILLA_ACTOR, else $USER, else the broker username.
  std::string actor;
  // The configuration file's `signing_key`: the default private key of jobs and scripts.
  std::string signing_key;
  bool json = false;
  std::chrono::milliseconds timeout{5000};
};

// A failed step: exit code and the message printed after "flotilla: ".
struct Failure {
  int code;
  std::string message;
};

template <typename T>
using Outcome = std::variant<T, Failure>;

inline Failure usage(std::string message) { return Failure{exit_usage, std::move(message)}; }

// Layers the configuration file, the environment and the global options.
// Failures: exit_usage naming the bad option, file key or variable.
Outcome<Settings> resolve_settings(const GlobalOptions& options);

// Prints the error as one line "flotilla: <message>" (line breaks become spaces) and returns its
// exit code.
int fail(const Failure& f, std::ostream& err);

// Prints `message` as JSON or the table produced by `table`.
template <typename TableFn>
int emit(const Settings& s, const google::protobuf::Message& message, TableFn table, std::ostream& out,
         std::ostream& err) {
  if (s.json) {
    auto json = to_json(message);
    if (!json) return fail(Failure{exit_internal, json.error().message}, err);
    out << *json << '\n';
  } else {
    out << table();
  }
  out.flush();
  return exit_ok;
}

// Owns the broker connection of one invocation, opened by the first call(), and turns manager
// replies into Failures. Main thread only.
class Session {
 public:
  explicit Session(const Settings& settings) : settings_(settings) {}

  // Sends `request` with the settings' actor; on success returns the reply with code OK and the
  // expected result set. Failures: the connection's (exit 3 or 2), the manager's reply code, or
  // exit_internal for a reply without the expected result.
  Outcome<v1::RpcResponse> call(v1::RpcRequest request, v1::RpcResponse::ResultCase expected, std::string_view what);

 private:
  const Settings& settings_;
  std::optional<RpcClient> client_;
};

// The commands of jobs_cli.cpp: keys, scripts, jobs and audit. Adds its subcommands to the
// application; after parsing, says whether one of them was chosen and runs it.
class JobCommands {
 public:
  explicit JobCommands(CLI::App& app);
  JobCommands(const JobCommands&) = delete;
  JobCommands& operator=(const JobCommands&) = delete;
  ~JobCommands();

  // Whether the command line chose one of these commands (possibly without its subcommand).
  bool chosen() const;
  // A usage failure when a command group was given without its subcommand.
  std::optional<Failure> check_subcommand() const;
  // Runs the chosen command; returns the exit code.
  int execute(const GlobalOptions& options, std::ostream& out, std::ostream& err);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace flotilla::cli

namespace flotilla::cli {

// The commands of policies_cli.cpp: policies set|show|list|delete|effective.
class PolicyCommands {
 public:
  explicit PolicyCommands(CLI::App& app);
  PolicyCommands(const PolicyCommands&) = delete;
  PolicyCommands& operator=(const PolicyCommands&) = delete;
  ~PolicyCommands();

  bool chosen() const;
  std::optional<Failure> check_subcommand() const;
  int execute(const GlobalOptions& options, std::ostream& out, std::ostream& err);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Parses "KEY=VALUE" or "KEY=VALUE!" (enforced). Errors: invalid_argument.
Result<std::pair<std::string, v1::PolicyValue>> parse_policy_assignment(std::string_view text);

}  // namespace flotilla::cli
