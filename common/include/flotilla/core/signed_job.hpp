#pragma once
// What an operator's signature covers, and the checks a device makes before it executes a job
// (docs/jobs.md, "Security"). Shared by the CLI (signing), the agent and the simulator
// (verifying).

#include <cstdint>
#include <string>
#include <string_view>

#include "flotilla/core/result.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/job.pb.h"

namespace flotilla::jobs {

// The bytes a job signature covers: a domain tag, the SHA-256 of the encoded document and the
// target ("*" or a device id), so one signature cannot be moved to another device or document.
std::string job_signing_message(std::string_view document, std::string_view target);
// The bytes a script signature covers.
std::string script_signing_message(std::string_view name, std::string_view interpreter, std::string_view body);

// Signs `document` for `target` with `signer`.
v1::SignedJob sign_job(const signing::Signer& signer, std::string document, std::string target);

struct DeviceScope {
  std::string device_id;
  std::string tenant;
  std::string site;
};

// Checks a job command addressed to this device: trusted key, valid signature, bound to this
// device (or "*" with a scope this device is in), document decodes, command id and attempt agree
// with the document, not expired at `now_ms`, not issued before `horizon_ms` (older documents
// could be replays the device no longer remembers), and a script.run's script is whole.
// Errors: permission_denied (signature, key, target, scope), invalid_argument (malformed,
// inconsistent, expired, too old).
Result<v1::JobDocument> verify_job(const signing::TrustStore& trust, const v1::Command& command,
                                   const DeviceScope& self, std::int64_t now_ms, std::int64_t horizon_ms);

// verify_job() without the signature check, for a signature the caller verified before.
Result<v1::JobDocument> check_job(const v1::Command& command, const DeviceScope& self, std::int64_t now_ms,
                                  std::int64_t horizon_ms);

// A job type: dotted lower-case words (script.run, config.set), at most 64 characters.
bool valid_job_type(std::string_view type);

// "{job_id}/{attempt}": the command id of one attempt of a job.
std::string command_id(std::string_view job_id, std::uint32_t attempt);

}  // namespace flotilla::jobs
