#pragma once
// The `flotilla` operator command line: argument parsing, configuration layering, one RPC
// conversation with the manager and rendering of its reply. docs/cli.md is the user contract.

#include <ostream>

#include "flotilla/core/result.hpp"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::cli {

// Process exit codes; ops scripts rely on them (docs/cli.md).
enum ExitCode : int {
  exit_ok = 0,
  exit_internal = 1,       // a bug, an undecodable reply, CODE_INTERNAL from the manager
  exit_usage = 2,          // bad flags, bad device id, bad configuration file
  exit_unreachable = 3,    // broker or manager unreachable, or CODE_UNAVAILABLE from the manager
  exit_not_found = 4,      // CODE_NOT_FOUND
  exit_rejected = 5,       // CODE_INVALID_ARGUMENT: the manager rejected the request
  exit_job_failed = 6,     // jobs watch: the job ended, but not COMPLETED with every execution SUCCEEDED
  exit_watch_timeout = 7,  // jobs watch: the job was still running when --timeout-total passed
};

// Runs one invocation: writes the result to `out` and any error to `err` as one line
// "flotilla: <message>", and returns the exit code. Called from the main thread only (it creates
// and destroys its own broker connection).
int run(int argc, char** argv, std::ostream& out, std::ostream& err);

// Exit code for an error of RpcClient (connect or call).
int exit_code_for(const Error& error) noexcept;
// Exit code for a manager reply code.
int exit_code_for(v1::RpcResponse::Code code) noexcept;

}  // namespace flotilla::cli
