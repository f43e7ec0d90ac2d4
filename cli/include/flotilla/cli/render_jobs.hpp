#pragma once
// The pure parts of the `flotilla` jobs, scripts, keys and audit commands: validating what an
// operator asked for, building and signing job documents, key files, script interpreter
// detection, and rendering the manager's job replies. No broker and no clock reads (callers pass
// `now_ms`), so tests check them directly. Any thread may call them; generate_key_files touches
// the filesystem.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/v1/job.pb.h"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::cli {

// A job request with per-device signatures larger than this is refused before it is sent (the
// manager accepts requests up to 1,000,000 bytes, the broker packets up to 1 MiB).
inline constexpr std::size_t max_job_request_bytes = 900 * 1000;
// Scripts of the manager's library: 1 byte to 128 KiB.
inline constexpr std::size_t max_script_bytes = 128 * 1024;

// --- Keys ------------------------------------------------------------------------------------

struct KeyFiles {
  std::filesystem::path private_key;  // DIR/NAME.key, mode 0600
  std::filesystem::path public_key;   // DIR/NAME.pub, mode 0644
  std::string key_id;
};

// Generates an Ed25519 key pair into DIR/NAME.key and DIR/NAME.pub, creating DIR (mode 0700)
// when it is missing. Never overwrites: when either file exists nothing is written.
// Errors: invalid_argument (NAME is not [A-Za-z0-9][A-Za-z0-9._-]{0,63}), already_exists,
// io_error (with the path), internal (key generation failed).
Result<KeyFiles> generate_key_files(const std::filesystem::path& dir, std::string_view name);

// --- Scripts ---------------------------------------------------------------------------------

// The interpreter a script's first line names: "#!/bin/sh", "#!/bin/bash -e",
// "#!/usr/bin/env python3", "#!/usr/bin/env -S bash -eu", "#!/usr/bin/python3.11" give sh, bash,
// python3. Errors: invalid_argument (no "#!" line, or an interpreter other than those three).
Result<std::string> interpreter_from_shebang(std::string_view body);

// Checks a script body: 1 to max_script_bytes of UTF-8 text without NUL bytes.
// Errors: invalid_argument, too_large.
Status validate_script_body(std::string_view body);

// Whether `text` is well-formed UTF-8 (protobuf string fields must be).
bool is_utf8(std::string_view text);

// --- Jobs ------------------------------------------------------------------------------------

// What `flotilla jobs create` was given, as text.
struct JobFlags {
  std::vector<std::string> devices;  // target: exactly one of devices, group, query
  std::string group;
  std::string query;
  std::string type;                      // empty with --script: script.run
  std::vector<std::string> params;       // KEY=VALUE
  std::string script;                    // a script of the library (script.run)
  std::vector<std::string> args;         // script.run arguments
  std::string rate;                      // "100/min"; exclusive with exponential
  std::string exponential;               // "base=10/min,factor=2,after=notified:50,max=1000/min"
  std::string jitter;                    // duration
  std::vector<std::string> abort_rules;  // each "FAILED>5%@50", or several comma-separated
  std::string timeout;                   // in-progress timeout per execution
  std::uint32_t retries = 0;
  std::vector<std::string> windows;  // maintenance windows
  std::string start;                 // RFC 3339, "+30m" or "now"
  std::string end;
  std::string expires = "7d";  // document lifetime from now
  bool continuous = false;
  std::string scope;  // TENANT or TENANT/SITE: one "*" signature
  std::string id;     // empty: default_job_id()
  std::string description;
  bool require_approval = false;  // wait for another operator's `jobs approve`
};

// A validated job request: the document (without the script, see attach_script) and the spec
// (target, rollout, abort rules, timeout, retries, schedule, windows, description), unsigned.
struct JobPlan {
  v1::JobDocument document;
  v1::JobSpec spec;
  std::string script_name;  // --script: fetched from the library, then attach_script()
  bool scoped() const { return !document.scope_tenant().empty(); }
};

// Validates the flags at `now_ms` and builds the plan: document issued now, expiring after
// --expires (at most 30 days), max_attempts = retries + 1.
// Errors: invalid_argument naming the flag.
Result<JobPlan> plan_job(const JobFlags& flags, std::int64_t now_ms);

// Embeds a library script (name, interpreter, body) in the document after checking that its body
// hashes to the sha256 the manager reported and, when it was signed by `signer`'s key, that its
// signature holds. Errors: invalid_argument (incomplete script), corruption (hash or signature
// mismatch).
Status attach_script(JobPlan& plan, const v1::Script& script, const signing::Signer& signer);

// Encodes the document once and signs it: a scoped plan once for target "*"; otherwise once per
// id in `devices` into spec.device_signatures, the first device's signature also in spec.signed.
// Errors: invalid_argument (an unscoped plan with no devices).
Result<v1::JobSpec> sign_plan(const JobPlan& plan, const signing::Signer& signer,
                              const std::vector<std::string>& devices);

// "j-" + UTC yyyymmdd-hhmmss of `now_ms` + "-" + 6 random hex digits.
std::string default_job_id(std::int64_t now_ms);

// Execution state from a name: queued, in_progress, succeeded, failed, timed_out, rejected,
// removed, canceled (any case; '-' for '_'). Errors: invalid_argument listing the names.
Result<v1::ExecutionState> parse_execution_state(std::string_view text);

// --- Rendering -------------------------------------------------------------------------------

// "QUEUED", "SUCCEEDED", ...; "SCHEDULED", "COMPLETED", ...
std::string_view execution_state_label(v1::ExecutionState state);
std::string_view job_state_label(v1::JobState state);
bool is_terminal(v1::JobState state);

// Sum of the counts of every execution state.
std::uint64_t total_executions(const v1::ExecutionCounts& counts);

// `jobs watch` exit code of a terminal job: exit_ok when COMPLETED and every execution
// SUCCEEDED (also when there were none), else exit_job_failed.
int job_outcome_exit_code(const v1::JobRecord& job);

// Unix ms as RFC 3339 UTC to the second, "2026-11-21T02:00:00Z"; "-" when <= 0.
std::string format_utc(std::int64_t ms);

// A job: id, type, state and reason, target, creation, schedule, rollout, then the executions
// per state.
std::string render_job(const v1::JobRecord& job, std::int64_t now_ms);
// Columns ID, TYPE, STATE, TARGET, DEVICES, SUCCEEDED, FAILED, CREATED, BY; FAILED counts
// executions that ended FAILED, TIMED_OUT or REJECTED.
std::string render_jobs_table(const v1::JobList& list, std::int64_t now_ms);
// Columns DEVICE, STATE, ATTEMPT, STATUS, UPDATED.
std::string render_executions_table(const v1::ExecutionList& list, std::int64_t now_ms);
// Columns NAME, VERSION, INTERPRETER, SHA256 (first 16 digits), ADDED, KEY.
std::string render_scripts_table(const v1::ScriptList& list, std::int64_t now_ms);
// A script's metadata (not its body).
std::string render_script(const v1::Script& script, std::int64_t now_ms);
// Columns TIME, ACTOR, KEY, ACTION, SUBJECT, DETAIL in the order given (newest first).
std::string render_audit_table(const v1::AuditLog& log);

// One line of `jobs watch`: id, state, a bar of `bar_width` cells filled by the share of
// executions in a final state, that share, "done/total", and every non-zero count per state:
// "j-1 IN_PROGRESS [######----]  60% 6/10 in_progress 4 succeeded 5 failed 1". No newline.
std::string render_progress(const v1::JobRecord& job, std::size_t bar_width);

}  // namespace flotilla::cli
