#include "flotilla/core/signed_job.hpp"

#include <fmt/format.h>

namespace flotilla::jobs {

std::string job_signing_message(std::string_view document, std::string_view target) {
  return fmt::format("flotilla-job-v1\n{}\n{}", signing::sha256_hex(document), target);
}

std::string script_signing_message(std::string_view name, std::string_view interpreter, std::string_view body) {
  return fmt::format("flotilla-script-v1\n{}\n{}\n{}", name, interpreter, signing::sha256_hex(body));
}

v1::SignedJob sign_job(const signing::Signer& signer, std::string document, std::string target) {
  v1::SignedJob s;
  s.set_key_id(signer.key_id());
  s.set_signature(signer.sign(job_signing_message(document, target)));
  s.set_target(std::move(target));
  s.set_document(std::move(document));
  return s;
}

bool valid_job_type(std::string_view type) {
  if (type.empty() || type.size() > 64) return false;
  bool word_start = true;
  for (const char c : type) {
    const bool lower = c >= 'a' && c <= 'z';
    const bool digit_or_underscore = (c >= '0' && c <= '9') || c == '_';
    if (c == '.') {
      if (word_start) return false;
      word_start = true;
    } else if (lower || (!word_start && digit_or_underscore)) {
      word_start = false;
    } else {
      return false;
    }
  }
  return !word_start;
}

std::string command_id(std::string_view job_id, std::uint32_t attempt) { return fmt::format("{}/{}", job_id, attempt); }

Result<v1::JobDocument> verify_job(const signing::TrustStore& trust, const v1::Command& command,
                                   const DeviceScope& self, std::int64_t now_ms, std::int64_t horizon_ms) {
  if (!command.has_job()) return make_error(Errc::invalid_argument, "the command carries no job");
  const auto& job = command.job();
  if (auto st = trust.verify(job.key_id(), job_signing_message(job.document(), job.target()), job.signature()); !st) {
    return make_error(Errc::permission_denied, "signature rejected: {}", st.error().message);
  }
  return check_job(command, self, now_ms, horizon_ms);
}

Result<v1::JobDocument> check_job(const v1::Command& command, const DeviceScope& self, std::int64_t now_ms,
                                  std::int64_t horizon_ms) {
  if (!command.has_job()) return make_error(Errc::invalid_argument, "the command carries no job");
  const auto& job = command.job();
  v1::JobDocument doc;
  if (!doc.ParseFromString(job.document()))
    return make_error(Errc::invalid_argument, "the job document does not decode");
  if (job.target() == "*") {
    if (doc.scope_tenant().empty()) {
      return make_error(Errc::permission_denied, "a \"*\" signature over a document without a tenant scope");
    }
    if (doc.scope_tenant() != self.tenant || (!doc.scope_site().empty() && doc.scope_site() != self.site)) {
      return make_error(Errc::permission_denied, "the job is scoped to {}{}{}, this device is in {}/{}",
                        doc.scope_tenant(), doc.scope_site().empty() ? "" : "/", doc.scope_site(), self.tenant,
                        self.site);
    }
  } else if (job.target() != self.device_id) {
    return make_error(Errc::permission_denied, "the job is signed for device {:?}, not this one",
                      job.target().substr(0, 80));
  }
  if (command.attempt() < 1 || command.attempt() > std::max<std::uint32_t>(doc.max_attempts(), 1)) {
    return make_error(Errc::invalid_argument, "attempt {} is beyond the {} the document allows", command.attempt(),
                      std::max<std::uint32_t>(doc.max_attempts(), 1));
  }
  if (command.command_id() != command_id(doc.job_id(), command.attempt())) {
    return make_error(Errc::invalid_argument, "command id {:?} does not name job {} attempt {}",
                      command.command_id().substr(0, 80), doc.job_id(), command.attempt());
  }
  if (doc.expires_at_ms() <= now_ms) return make_error(Errc::invalid_argument, "the job document expired");
  if (doc.issued_at_ms() < horizon_ms) {
    return make_error(Errc::invalid_argument,
                      "the job document was issued before this device's replay horizon (possible replay)");
  }
  if (doc.type() == "script.run") {
    const auto& s = doc.script();
    if (s.body().empty() || s.interpreter().empty()) {
      return make_error(Errc::invalid_argument, "script.run without a script body and interpreter");
    }
  }
  return doc;
}

}  // namespace flotilla::jobs
