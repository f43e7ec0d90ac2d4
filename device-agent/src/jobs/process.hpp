#pragma once
// Child processes for the job executors: fork/exec of an argv (never a shell) in its own session
// and process group, with a defined environment, optional user, bounded capture of stdout and
// stderr, a timeout and cancellation. Synchronous; any thread may call run_process, several
// threads may run processes at once.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::agent::proc {

// Who the child runs as: looked up in the parent, applied in the child with setgroups, setgid
// and setuid (in that order) before exec.
struct Identity {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups, as initgroups would set them
  std::filesystem::path home;
};

// The agent's own identity (effective uid).
Result<Identity> current_identity();
// Looks `name` up in the user database. Errors: not_found (no such user), internal.
Result<Identity> lookup_user(std::string_view name);

struct Spec {
  std::vector<std::string> argv;  // argv[0] is an absolute path: there is no PATH search
  std::vector<std::string> env;   // the child's whole environment, "KEY=value"
  std::filesystem::path cwd;      // empty: the agent's working directory
  std::optional<Identity> user;   // set: switch to this user (the agent must be root)
  // Files open in the child at these descriptor numbers (not close-on-exec), e.g. a script the
  // child reads as /dev/fd/3. Descriptors owned by the caller, kept open.
  std::vector<std::pair<int, int>> inherit_fds;                   // {parent fd, child fd}, child fd >= 3
  std::chrono::milliseconds timeout{0};                           // 0: none
  std::chrono::milliseconds kill_grace{std::chrono::seconds(5)};  // SIGTERM .. SIGKILL
  std::size_t max_output_bytes = 64 * 1024;                       // kept per stream
};

struct Captured {
  std::string data;           // the first max_output_bytes bytes
  std::uint64_t dropped = 0;  // bytes read and discarded beyond them
};

struct Outcome {
  bool started = false;    // false: canceled before the child was created
  int exit_code = -1;      // when the child exited (signal == 0)
  int signal = 0;          // the signal that terminated the child, 0 if it exited
  bool timed_out = false;  // the timeout expired and the group was killed
  bool canceled = false;   // stop was requested and the group was killed
  Captured out;
  Captured err;
  std::chrono::milliseconds duration{0};
};

// Runs spec.argv to completion. stdin is /dev/null. When the timeout expires or stop is
// requested, the child's process group gets SIGTERM, then SIGKILL after kill_grace. Returns
// once the child is reaped; processes the child left running in the background keep running
// unless the group was killed. Errors: invalid_argument (empty argv, relative argv[0]),
// not_found (executable missing), permission_denied (exec, chdir or user switch refused),
// io_error / internal (pipes, fork).
Result<Outcome> run_process(const Spec& spec, std::stop_token stop);

// The captured text for a report: valid UTF-8 (invalid bytes become U+FFFD) and, when bytes
// were dropped, ending in "\n[truncated: N more bytes]".
std::string report_text(const Captured& captured);
// `text` with invalid UTF-8 sequences replaced by U+FFFD.
std::string valid_utf8(std::string_view text);
// "SIGKILL" for 9, "signal 64" when the number has no name.
std::string signal_name(int signal);
// Absolute path of the first of `candidates` that is an executable regular file, or empty.
std::filesystem::path find_executable(const std::vector<std::filesystem::path>& candidates);

}  // namespace flotilla::agent::proc
