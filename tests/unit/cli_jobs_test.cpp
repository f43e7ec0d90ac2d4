// Unit tests of the jobs, scripts, keys and audit commands of the `flotilla` CLI: validation of
// what an operator types, job documents and their per-device signatures (checked as a device
// checks them), key files, script interpreters, renderers, and run() paths without a broker.

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include "flotilla/cli/cli.hpp"
#include "flotilla/cli/render_jobs.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/core/signing.hpp"

namespace fs = std::filesystem;
using namespace flotilla;

namespace {

// 2023-11-14T22:13:20Z.
constexpr std::int64_t kNow = 1'700'000'000'000;
constexpr std::int64_t kMinute = 60'000;
constexpr std::int64_t kDay = 24 * 60 * kMinute;

struct RunResult {
  int code;
  std::string out;
  std::string err;
};

RunResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), "flotilla");
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::ostringstream out;
  std::ostringstream err;
  const int code = cli::run(static_cast<int>(args.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

void check_one_error_line(const std::string& err) {
  CHECK(err.starts_with("flotilla: "));
  CHECK(err.ends_with("\n"));
  CHECK(err.find('\n') == err.size() - 1);
}

bool contains(const std::string& text, std::string_view part) { return text.find(part) != std::string::npos; }

class TempDir {
 public:
  TempDir() : path_(fs::temp_directory_path() / ("flotilla-cli-jobs-test-" + cli::random_hex(8))) {
    fs::create_directories(path_);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

unsigned mode_of(const fs::path& path) {
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  return st.st_mode & 07777U;
}

void write_file(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// A key pair in a temporary directory, generated once per test that needs one.
struct TestKey {
  TempDir dir;
  cli::KeyFiles files;
  TestKey() {
    auto generated = cli::generate_key_files(dir.path(), "op");
    REQUIRE(generated.ok());
    files = *generated;
  }
  signing::Signer signer() const {
    auto s = signing::Signer::from_file(files.private_key);
    REQUIRE(s.ok());
    return std::move(s).value();
  }
  signing::TrustStore trust() const {
    signing::TrustStore t;
    REQUIRE(t.load_file(files.public_key).ok());
    return t;
  }
};

cli::JobFlags basic_flags() {
  cli::JobFlags f;
  f.devices = {"dev-a", "dev-b", "dev-c"};
  f.type = "package.install";
  f.params = {"packages=curl,jq", "dry_run=true"};
  f.id = "j-test";
  return f;
}

// What a device checks: the job command it would receive for `device`, verified by verify_job.
Status device_accepts(const signing::TrustStore& trust, const v1::JobSpec& spec, const std::string& device,
                      const std::string& signed_for, const std::string& signature) {
  v1::JobDocument doc;
  REQUIRE(doc.ParseFromString(spec.signed_().document()));
  v1::Command cmd;
  cmd.set_command_id(jobs::command_id(doc.job_id(), 1));
  cmd.set_type("job");
  cmd.set_attempt(1);
  *cmd.mutable_job() = spec.signed_();
  cmd.mutable_job()->set_target(signed_for);
  cmd.mutable_job()->set_signature(signature);
  jobs::DeviceScope self{device, "acme", "hq"};
  auto verified = jobs::verify_job(trust, cmd, self, kNow + 1000, kNow - kDay);
  if (!verified) return std::move(verified).error();
  return {};
}

v1::JobRecord job_with_counts(v1::JobState state, std::uint64_t queued, std::uint64_t in_progress,
                              std::uint64_t succeeded, std::uint64_t failed) {
  v1::JobRecord job;
  job.set_job_id("j-1");
  job.set_state(state);
  job.mutable_counts()->set_queued(queued);
  job.mutable_counts()->set_in_progress(in_progress);
  job.mutable_counts()->set_succeeded(succeeded);
  job.mutable_counts()->set_failed(failed);
  return job;
}

}  // namespace

TEST_SUITE("cli.jobs") {
TEST_CASE("generate_key_files writes a 0600 private key and a 0644 public key, never overwriting") {
  TempDir dir;
  const auto keys = dir.path() / "keys";  // created by the call, 0700
  auto files = cli::generate_key_files(keys, "alice");
  REQUIRE(files.ok());
  CHECK(files->private_key == keys / "alice.key");
  CHECK(files->public_key == keys / "alice.pub");
  CHECK(mode_of(keys) == 0700U);
  CHECK(mode_of(files->private_key) == 0600U);
  CHECK(mode_of(files->public_key) == 0644U);
  CHECK(files->key_id.size() == signing::kKeyIdHexChars);

  // The pair belongs together: the private key signs what the public key verifies.
  auto signer = signing::Signer::from_file(files->private_key);
  REQUIRE(signer.ok());
  CHECK(signer->key_id() == files->key_id);
  signing::TrustStore trust;
  REQUIRE(trust.load_file(files->public_key).ok());
  CHECK(trust.verify(files->key_id, "m", signer->sign("m")).ok());

  // A second run refuses and leaves both files as they were.
  std::ifstream before_in(files->private_key);
  const std::string before((std::istreambuf_iterator<char>(before_in)), std::istreambuf_iterator<char>());
  auto again = cli::generate_key_files(keys, "alice");
  REQUIRE_FALSE(again.ok());
  CHECK(again.error().code == Errc::already_exists);
  std::ifstream after_in(files->private_key);
  const std::string after((std::istreambuf_iterator<char>(after_in)), std::istreambuf_iterator<char>());
  CHECK(before == after);

  // Only the public half present: still refused, no private key appears.
  fs::remove(files->private_key);
  auto half = cli::generate_key_files(keys, "alice");
  REQUIRE_FALSE(half.ok());
  CHECK(half.error().code == Errc::already_exists);
  CHECK_FALSE(fs::exists(files->private_key));

  auto bad = cli::generate_key_files(keys, "../evil");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::invalid_argument);
  CHECK_FALSE(fs::exists(dir.path() / "evil.key"));
}

TEST_CASE("keys generate prints the key id and exits 2 instead of overwriting") {
  TempDir dir;
  auto r = run_cli({"keys", "generate", "--out", dir.path().string(), "--name", "ops"});
  REQUIRE(r.code == cli::exit_ok);
  auto signer = signing::Signer::from_file(dir.path() / "ops.key");
  REQUIRE(signer.ok());
  CHECK(contains(r.out, signer->key_id()));
  CHECK(r.err.empty());

  r = run_cli({"keys", "generate", "--out", dir.path().string(), "--name", "ops"});
  CHECK(r.code == cli::exit_usage);
  CHECK(contains(r.err, "ops.key already exists"));
  check_one_error_line(r.err);

  r = run_cli({"-o", "json", "keys", "generate", "--out", dir.path().string()});
  REQUIRE(r.code == cli::exit_ok);
  CHECK(contains(r.out, "\"key_id\":\""));
  CHECK(contains(r.out, "operator.key"));
  CHECK(fs::exists(dir.path() / "operator.pub"));
}

TEST_CASE("interpreter_from_shebang reads sh, bash and python3 from the first line") {
  CHECK(*cli::interpreter_from_shebang("#!/bin/sh\necho hi\n") == "sh");
  CHECK(*cli::interpreter_from_shebang("#!/bin/bash -eu\n") == "bash");
  CHECK(*cli::interpreter_from_shebang("#! /usr/bin/bash\r\necho\r\n") == "bash");
  CHECK(*cli::interpreter_from_shebang("#!/usr/bin/env python3\nprint(1)\n") == "python3");
  CHECK(*cli::interpreter_from_shebang("#!/usr/bin/env -S bash -e\n") == "bash");
  CHECK(*cli::interpreter_from_shebang("#!/usr/bin/env LC_ALL=C sh") == "sh");
  CHECK(*cli::interpreter_from_shebang("#!/usr/bin/python3.11\n") == "python3");

  for (const char* bad : {"echo no shebang\n", "", "#!\n", "#!/usr/bin/env\n", "#!/usr/bin/perl\n",
                          "#!/usr/bin/env python\n", "#!/bin/zsh\n", "#!/usr/bin/python3.x\n", " #!/bin/sh\n"}) {
    CAPTURE(bad);
    auto r = cli::interpreter_from_shebang(bad);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(contains(r.error().message, "--interpreter"));
  }
}

TEST_CASE("script bodies are 1 byte to 128 KiB of UTF-8 without NUL") {
  CHECK(cli::validate_script_body("#!/bin/sh\necho hé\n").ok());
  CHECK(cli::validate_script_body(std::string(cli::max_script_bytes, 'x')).ok());
  CHECK(cli::validate_script_body("").error().code == Errc::invalid_argument);
  CHECK(cli::validate_script_body(std::string(cli::max_script_bytes + 1, 'x')).error().code == Errc::too_large);
  CHECK(cli::validate_script_body(std::string("a\0b", 3)).error().code == Errc::invalid_argument);
  CHECK(cli::validate_script_body("\xff\xfe").error().code == Errc::invalid_argument);

  CHECK(cli::is_utf8("plain ascii"));
  CHECK(cli::is_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  CHECK_FALSE(cli::is_utf8("\xc0\xaf"));                        // overlong '/'
  CHECK_FALSE(cli::is_utf8("\xed\xa0\x80"));                    // surrogate
  CHECK_FALSE(cli::is_utf8("\xf4\x90\x80\x80"));                // beyond U+10FFFF
  CHECK_FALSE(cli::is_utf8("\xe2\x82"));                        // truncated
}

TEST_CASE("plan_job builds the document and the spec from the flags") {
  auto f = basic_flags();
  f.devices.push_back("dev-a");  // duplicates are dropped
  f.rate = "100/min";
  f.jitter = "5s";
  f.abort_rules = {"FAILED>5%@50,TIMED_OUT>10%@20", "rejected>1%@1"};
  f.timeout = "10m";
  f.retries = 2;
  f.windows = {"0 2 * * sat 4h Europe/Berlin"};
  f.start = "+30m";
  f.end = "+2d";
  f.expires = "3d";
  f.description = "curl everywhere";
  auto plan = cli::plan_job(f, kNow);
  REQUIRE_MESSAGE(plan.ok(), plan.error().message);
  const auto& doc = plan->document;
  CHECK(doc.job_id() == "j-test");
  CHECK(doc.type() == "package.install");
  CHECK(doc.params().at("packages") == "curl,jq");
  CHECK(doc.params().at("dry_run") == "true");
  CHECK(doc.issued_at_ms() == kNow);
  CHECK(doc.expires_at_ms() == kNow + 3 * kDay);
  CHECK(doc.max_attempts() == 3);
  CHECK(doc.scope_tenant().empty());
  CHECK_FALSE(plan->scoped());

  const auto& spec = plan->spec;
  REQUIRE(spec.target().device_ids_size() == 3);
  CHECK(spec.target().device_ids(0) == "dev-a");
  CHECK(spec.target().device_ids(2) == "dev-c");
  CHECK(spec.rollout().rate_per_minute() == doctest::Approx(100));
  CHECK(spec.rollout().jitter_ms() == 5000);
  REQUIRE(spec.abort_rules_size() == 3);
  CHECK(spec.abort_rules(0).state() == v1::EXECUTION_FAILED);
  CHECK(spec.abort_rules(0).threshold_percent() == doctest::Approx(5));
  CHECK(spec.abort_rules(0).min_executions() == 50);
  CHECK(spec.abort_rules(1).state() == v1::EXECUTION_TIMED_OUT);
  CHECK(spec.abort_rules(2).state() == v1::EXECUTION_REJECTED);
  CHECK(spec.timeout_s() == 600);
  CHECK(spec.retries() == 2);
  REQUIRE(spec.windows_size() == 1);
  CHECK(spec.windows(0) == "0 2 * * sat 4h Europe/Berlin");
  CHECK(spec.start_at_ms() == kNow + 30 * kMinute);
  CHECK(spec.end_at_ms() == kNow + 2 * kDay);
  CHECK(spec.description() == "curl everywhere");
}

TEST_CASE("plan_job: scripts, scopes, continuous jobs and defaults") {
  cli::JobFlags f;
  f.group = "hq";
  f.script = "cleanup";
  f.args = {"--force", "/tmp"};
  f.scope = "acme/hq";
  f.continuous = true;
  f.exponential = "base=10/min,factor=2,after=notified:50,max=1000/min";
  auto plan = cli::plan_job(f, kNow);
  REQUIRE_MESSAGE(plan.ok(), plan.error().message);
  CHECK(plan->document.type() == "script.run");
  CHECK(plan->script_name == "cleanup");
  REQUIRE(plan->document.args_size() == 2);
  CHECK(plan->document.args(0) == "--force");
  CHECK(plan->document.scope_tenant() == "acme");
  CHECK(plan->document.scope_site() == "hq");
  CHECK(plan->scoped());
  CHECK(plan->spec.target().group() == "hq");
  CHECK(plan->spec.target().continuous());
  CHECK(plan->spec.rollout().factor() == doctest::Approx(2));
  CHECK(plan->spec.rollout().increment_after() == 50);
  // Defaults: 7 days, one attempt, the manager's timeout, now.
  CHECK(plan->document.expires_at_ms() == kNow + 7 * kDay);
  CHECK(plan->document.max_attempts() == 1);
  CHECK(plan->spec.timeout_s() == 0);
  CHECK(plan->spec.start_at_ms() == 0);
  CHECK(plan->document.job_id().starts_with("j-20231114-221320-"));
}

TEST_CASE("plan_job rejects what the manager or the devices would refuse") {
  struct Case {
    const char* what;
    void (*edit)(cli::JobFlags&);
    const char* message;
  };
  const Case cases[] = {
      {"no target", [](cli::JobFlags& f) { f.devices.clear(); }, "exactly one target"},
      {"two targets", [](cli::JobFlags& f) { f.group = "hq"; }, "exactly one target"},
      {"bad device id",
       [](cli::JobFlags& f) {
         f.devices = {"ok", "bad/id"};
       },
       "bad/id"},
      {"bad group",
       [](cli::JobFlags& f) {
         f.devices.clear();
         f.group = "a b";
       },
       "--group"},
      {"continuous without scope",
       [](cli::JobFlags& f) {
         f.devices.clear();
         f.group = "hq";
         f.continuous = true;
       },
       "--scope"},
      {"continuous device list",
       [](cli::JobFlags& f) {
         f.continuous = true;
         f.scope = "acme";
       },
       "--continuous"},
      {"bad scope", [](cli::JobFlags& f) { f.scope = "acme/"; }, "--scope site"},
      {"no type", [](cli::JobFlags& f) { f.type.clear(); }, "--type"},
      {"script with another type", [](cli::JobFlags& f) { f.script = "s"; }, "--script"},
      {"script.run without script",
       [](cli::JobFlags& f) {
         f.type = "script.run";
         f.params.clear();
       },
       "--script"},
      {"arg without script", [](cli::JobFlags& f) { f.args = {"x"}; }, "--arg"},
      {"param without =", [](cli::JobFlags& f) { f.params = {"packages"}; }, "KEY=VALUE"},
      {"param twice",
       [](cli::JobFlags& f) {
         f.params = {"a=1", "a=2"};
       },
       "twice"},
      {"rate and exponential",
       [](cli::JobFlags& f) {
         f.rate = "1/s";
         f.exponential = "base=1/s,after=5";
       },
       "exclude"},
      {"bad rate", [](cli::JobFlags& f) { f.rate = "0/min"; }, "--rate"},
      {"bad exponential", [](cli::JobFlags& f) { f.exponential = "base=10/min,factor=50,after=5"; }, "--exponential"},
      {"bad abort rule", [](cli::JobFlags& f) { f.abort_rules = {"FAILED>5@50"}; }, "--abort"},
      {"bad window", [](cli::JobFlags& f) { f.windows = {"0 2 * * sat 4h Mars/Olympus"}; }, "--window"},
      {"bad jitter", [](cli::JobFlags& f) { f.jitter = "2d"; }, "--jitter"},
      {"short timeout", [](cli::JobFlags& f) { f.timeout = "500ms"; }, "--timeout"},
      {"expiry beyond 30 days", [](cli::JobFlags& f) { f.expires = "31d"; }, "--expires"},
      {"start after expiry", [](cli::JobFlags& f) { f.start = "+8d"; }, "--expires"},
      {"end before start",
       [](cli::JobFlags& f) {
         f.start = "+2h";
         f.end = "+1h";
       },
       "--end"},
      {"end after expiry", [](cli::JobFlags& f) { f.end = "+8d"; }, "--expires"},
      {"bad start", [](cli::JobFlags& f) { f.start = "tomorrow"; }, "--start"},
      {"too many retries", [](cli::JobFlags& f) { f.retries = 101; }, "--retries"},
      {"bad job id", [](cli::JobFlags& f) { f.id = "j/1"; }, "--id"},
      {"bad type", [](cli::JobFlags& f) { f.type = "package install"; }, "--type"},
      {"non-UTF-8 param", [](cli::JobFlags& f) { f.params = {"a=\xff"}; }, "UTF-8"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.what);
    auto f = basic_flags();
    c.edit(f);
    auto plan = cli::plan_job(f, kNow);
    REQUIRE_FALSE(plan.ok());
    CHECK(plan.error().code == Errc::invalid_argument);
    CHECK_MESSAGE(contains(plan.error().message, c.message), plan.error().message);
  }
}

TEST_CASE("sign_plan signs each device, and only that device accepts its signature") {
  TestKey key;
  const auto signer = key.signer();
  const auto trust = key.trust();
  auto plan = cli::plan_job(basic_flags(), kNow);
  REQUIRE(plan.ok());
  const std::vector<std::string> devices = {"dev-a", "dev-b", "dev-c"};
  auto spec = cli::sign_plan(*plan, signer, devices);
  REQUIRE_MESSAGE(spec.ok(), spec.error().message);

  // The document is the plan's, encoded once.
  v1::JobDocument doc;
  REQUIRE(doc.ParseFromString(spec->signed_().document()));
  CHECK(google::protobuf::util::MessageDifferencer::Equals(doc, plan->document));
  CHECK(spec->signed_().key_id() == signer.key_id());
  CHECK(spec->signed_().target() == "dev-a");
  REQUIRE(spec->device_signatures_size() == 3);
  CHECK(spec->signed_().signature() == spec->device_signatures().at("dev-a"));

  for (const auto& id : devices) {
    CAPTURE(id);
    const auto& sig = spec->device_signatures().at(id);
    CHECK(trust.verify(signer.key_id(), jobs::job_signing_message(spec->signed_().document(), id), sig).ok());
    CHECK(device_accepts(trust, *spec, id, id, sig).ok());
  }
  // A signature moved to another device, or claimed for "*", is refused.
  const auto& sig_a = spec->device_signatures().at("dev-a");
  CHECK_FALSE(
      trust.verify(signer.key_id(), jobs::job_signing_message(spec->signed_().document(), "dev-b"), sig_a).ok());
  CHECK_FALSE(device_accepts(trust, *spec, "dev-b", "dev-b", sig_a).ok());
  CHECK_FALSE(device_accepts(trust, *spec, "dev-b", "dev-a", sig_a).ok());
  CHECK_FALSE(device_accepts(trust, *spec, "dev-a", "*", sig_a).ok());
  // Without a device an unscoped job cannot be signed.
  auto none = cli::sign_plan(*plan, signer, {});
  REQUIRE_FALSE(none.ok());
  CHECK(none.error().code == Errc::invalid_argument);
}

TEST_CASE("sign_plan signs a scoped job once for \"*\"") {
  TestKey key;
  const auto signer = key.signer();
  const auto trust = key.trust();
  auto f = basic_flags();
  f.scope = "acme/hq";
  auto plan = cli::plan_job(f, kNow);
  REQUIRE(plan.ok());
  auto spec = cli::sign_plan(*plan, signer, {});
  REQUIRE(spec.ok());
  CHECK(spec->signed_().target() == "*");
  CHECK(spec->device_signatures().empty());
  const auto& sig = spec->signed_().signature();
  CHECK(device_accepts(trust, *spec, "dev-x", "*", sig).ok());  // acme/hq: in scope
  // Another tenant's device refuses it.
  v1::Command cmd;
  cmd.set_command_id(jobs::command_id("j-test", 1));
  cmd.set_attempt(1);
  *cmd.mutable_job() = spec->signed_();
  auto other = jobs::verify_job(trust, cmd, jobs::DeviceScope{"dev-y", "globex", "hq"}, kNow + 1000, kNow - kDay);
  REQUIRE_FALSE(other.ok());
  CHECK(other.error().code == Errc::permission_denied);
}

TEST_CASE("attach_script embeds a script whose hash and signature hold") {
  TestKey key;
  const auto signer = key.signer();
  cli::JobFlags f;
  f.devices = {"dev-a"};
  f.script = "hello";
  f.args = {"world"};
  auto plan = cli::plan_job(f, kNow);
  REQUIRE(plan.ok());

  v1::Script script;
  script.set_name("hello");
  script.set_interpreter("sh");
  script.set_body("#!/bin/sh\necho hello \"$1\"\n");
  script.set_version(3);
  script.set_sha256(signing::sha256_hex(script.body()));
  script.set_key_id(signer.key_id());
  script.set_signature(signer.sign(jobs::script_signing_message("hello", "sh", script.body())));

  SUBCASE("good") {
    REQUIRE(cli::attach_script(*plan, script, signer).ok());
    const auto& s = plan->document.script();
    CHECK(s.name() == "hello");
    CHECK(s.interpreter() == "sh");
    CHECK(s.body() == script.body());
    CHECK(s.signature().empty());
    // The signed document carries the body.
    auto spec = cli::sign_plan(*plan, signer, {"dev-a"});
    REQUIRE(spec.ok());
    CHECK(device_accepts(key.trust(), *spec, "dev-a", "dev-a", spec->signed_().signature()).ok());
  }
  SUBCASE("body changed after hashing") {
    script.set_body(script.body() + "rm -rf /\n");
    auto st = cli::attach_script(*plan, script, signer);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::corruption);
    CHECK_FALSE(plan->document.has_script());
  }
  SUBCASE("hash recomputed, but this key never signed that body") {
    script.set_body(script.body() + "rm -rf /\n");
    script.set_sha256(signing::sha256_hex(script.body()));
    auto st = cli::attach_script(*plan, script, signer);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::corruption);
    CHECK(contains(st.error().message, "signature"));
  }
  SUBCASE("another script") {
    script.set_name("other");
    CHECK(cli::attach_script(*plan, script, signer).error().code == Errc::corruption);
  }
}

TEST_CASE("default_job_id is j-date-time-hex in UTC") {
  const auto id = cli::default_job_id(kNow);
  CHECK(id.size() == 24);
  CHECK(id.starts_with("j-20231114-221320-"));
  CHECK(id.substr(18).find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(cli::default_job_id(kNow) != id);
  CHECK(cli::format_utc(kNow) == "2023-11-14T22:13:20Z");
  CHECK(cli::format_utc(951782400000) == "2000-02-29T00:00:00Z");
  CHECK(cli::format_utc(0) == "-");
}

TEST_CASE("execution states parse from their names") {
  CHECK(*cli::parse_execution_state("failed") == v1::EXECUTION_FAILED);
  CHECK(*cli::parse_execution_state("IN_PROGRESS") == v1::EXECUTION_IN_PROGRESS);
  CHECK(*cli::parse_execution_state("timed-out") == v1::EXECUTION_TIMED_OUT);
  CHECK_FALSE(cli::parse_execution_state("done").ok());
  CHECK_FALSE(cli::parse_execution_state("").ok());
}

TEST_CASE("progress line: bar, share, counts per state") {
  auto job = job_with_counts(v1::JOB_IN_PROGRESS, 3, 1, 5, 1);
  CHECK(cli::render_progress(job, 10) ==
        "j-1 IN_PROGRESS [######----]  60% 6/10 queued 3 in_progress 1 succeeded 5 failed 1");
  // Floors: 29 of 100 is 29%, never rounded up to a full bar before the end.
  job = job_with_counts(v1::JOB_IN_PROGRESS, 0, 71, 29, 0);
  CHECK(cli::render_progress(job, 20) ==
        "j-1 IN_PROGRESS [#####---------------]  29% 29/100 in_progress 71 succeeded 29");
  job = job_with_counts(v1::JOB_IN_PROGRESS, 0, 1, 998, 0);
  CHECK(cli::render_progress(job, 10).starts_with("j-1 IN_PROGRESS [#########-]  99% 998/999"));
  job = job_with_counts(v1::JOB_COMPLETED, 0, 0, 7, 0);
  CHECK(cli::render_progress(job, 5) == "j-1 COMPLETED [#####] 100% 7/7 succeeded 7");
  // No executions: empty while running, full once ended.
  job = job_with_counts(v1::JOB_SCHEDULED, 0, 0, 0, 0);
  CHECK(cli::render_progress(job, 4) == "j-1 SCHEDULED [----]   0% 0/0");
  job.set_state(v1::JOB_CANCELED);
  CHECK(cli::render_progress(job, 4) == "j-1 CANCELED [####] 100% 0/0");
  // Hostile counts neither overflow the bar nor crash.
  job = job_with_counts(v1::JOB_IN_PROGRESS, UINT64_MAX, UINT64_MAX, UINT64_MAX, 0);
  const auto line = cli::render_progress(job, 8);
  CHECK(line.find('[') != std::string::npos);
  CHECK(line.find(']') - line.find('[') == 9);
}

TEST_CASE("watch exit code: 0 only when COMPLETED with every execution SUCCEEDED") {
  CHECK(cli::job_outcome_exit_code(job_with_counts(v1::JOB_COMPLETED, 0, 0, 5, 0)) == cli::exit_ok);
  CHECK(cli::job_outcome_exit_code(job_with_counts(v1::JOB_COMPLETED, 0, 0, 0, 0)) == cli::exit_ok);
  CHECK(cli::job_outcome_exit_code(job_with_counts(v1::JOB_COMPLETED, 0, 0, 4, 1)) == cli::exit_job_failed);
  auto rejected = job_with_counts(v1::JOB_COMPLETED, 0, 0, 4, 0);
  rejected.mutable_counts()->set_rejected(1);
  CHECK(cli::job_outcome_exit_code(rejected) == cli::exit_job_failed);
  CHECK(cli::job_outcome_exit_code(job_with_counts(v1::JOB_ABORTED, 0, 0, 5, 0)) == cli::exit_job_failed);
  CHECK(cli::job_outcome_exit_code(job_with_counts(v1::JOB_CANCELED, 0, 0, 5, 0)) == cli::exit_job_failed);
  CHECK(cli::exit_job_failed == 6);
  CHECK(cli::exit_watch_timeout == 7);
}

TEST_CASE("job, jobs, executions, scripts and audit renderings") {
  auto job = job_with_counts(v1::JOB_ABORTED, 0, 2, 40, 9);
  job.set_type("package.install");
  job.set_state_reason("FAILED 18.4% of 49 executions > 5%");
  job.set_requested_by("alice");
  job.set_created_by("0123456789abcdef");
  job.set_created_at_ms(kNow - 3 * kMinute);
  job.set_expires_at_ms(kNow + 7 * kDay);
  job.set_notified(51);
  auto* spec = job.mutable_spec();
  spec->mutable_target()->set_group("hq");
  spec->mutable_rollout()->set_rate_per_minute(100);
  spec->mutable_rollout()->set_jitter_ms(5000);
  auto* rule = spec->add_abort_rules();
  rule->set_state(v1::EXECUTION_FAILED);
  rule->set_threshold_percent(5);
  rule->set_min_executions(20);
  spec->set_timeout_s(600);
  spec->set_retries(1);
  const auto text = cli::render_job(job, kNow);
  CHECK(contains(text, "Job:"));
  CHECK(contains(text, "State:         ABORTED\n"));
  CHECK(contains(text, "Reason:        FAILED 18.4% of 49 executions > 5%\n"));
  CHECK(contains(text, "Target:        group hq\n"));
  CHECK(contains(text, "alice (key 0123456789abcdef)"));
  CHECK(contains(text, "3m ago"));
  CHECK(contains(text, "Rollout:       100/min, jitter 5s\n"));
  CHECK(contains(text, "Abort:         FAILED>5%@20\n"));
  CHECK(contains(text, "Timeout:       10m\n"));
  CHECK(contains(text, "Executions:    51 (51 notified)\n"));
  CHECK(contains(text, "  IN_PROGRESS   2\n"));
  CHECK(contains(text, "  SUCCEEDED    40\n"));
  CHECK(contains(text, "  FAILED        9\n"));

  v1::JobList list;
  *list.add_jobs() = job;
  const auto table = cli::render_jobs_table(list, kNow);
  CHECK(table.starts_with("ID   TYPE             STATE    TARGET    DEVICES  SUCCEEDED  FAILED  CREATED  BY\n"));
  CHECK(contains(table, "j-1  package.install  ABORTED  group hq       51         40       9  3m ago   alice\n"));

  v1::ExecutionList executions;
  auto* e = executions.add_executions();
  e->set_device_id("dev-a");
  e->set_state(v1::EXECUTION_FAILED);
  e->set_attempt(2);
  e->set_status("exit 1:\nno space left");
  e->set_updated_at_ms(kNow - 4000);
  CHECK(cli::render_executions_table(executions, kNow) ==
        "DEVICE  STATE   ATTEMPT  STATUS                 UPDATED\n"
        "dev-a   FAILED        2  exit 1: no space left  4s ago\n");

  v1::AuditLog log;
  auto* entry = log.add_entries();
  entry->set_at_ms(kNow);
  entry->set_actor("alice");
  entry->set_key_id("0123456789abcdef");
  entry->set_action("job.create");
  entry->set_subject("j-1");
  entry->set_detail("type package.install on 51 devices");
  CHECK(cli::render_audit_table(log) ==
        "TIME                  ACTOR  KEY               ACTION      SUBJECT  DETAIL\n"
        "2023-11-14T22:13:20Z  alice  0123456789abcdef  job.create  j-1      type package.install on 51 devices\n");

  v1::ScriptList scripts;
  auto* s = scripts.add_scripts();
  s->set_name("cleanup");
  s->set_version(2);
  s->set_interpreter("bash");
  s->set_sha256(std::string(64, 'a'));
  s->set_added_at_ms(kNow - 2 * kDay);
  s->set_added_by("0123456789abcdef");
  CHECK(cli::render_scripts_table(scripts, kNow) ==
        "NAME     VERSION  INTERPRETER  SHA256            ADDED   KEY\n"
        "cleanup        2  bash         aaaaaaaaaaaaaaaa  2d ago  0123456789abcdef\n");
  CHECK(contains(cli::render_script(*s, kNow), "SHA-256:      " + std::string(64, 'a') + "\n"));
}

TEST_CASE("jobs commands: usage errors exit 2 with one line and send nothing") {
  TestKey key;
  const std::string k = key.files.private_key.string();
  struct Case {
    std::vector<std::string> args;
    const char* message;
  };
  const std::vector<Case> cases = {
      {{"jobs"}, "jobs: a subcommand is required"},
      {{"scripts"}, "scripts: a subcommand is required"},
      {{"keys"}, "keys: a subcommand is required"},
      {{"jobs", "create", "--type", "reboot", "--key", k}, "exactly one target"},
      {{"jobs", "create", "--devices", "a", "--group", "g", "--type", "reboot"}, "excludes"},
      {{"jobs", "create", "--devices", "a", "--type", "reboot", "--rate", "1/s", "--exponential", "base=1/s,after=1"},
       "excludes"},
      {{"jobs", "create", "--devices", "a", "--type", "reboot", "--retries", "1000"}, "--retries"},
      {{"jobs", "create", "--devices", "a", "--type", "reboot", "--abort", "FAILED>5%", "--key", k}, "--abort"},
      {{"jobs", "create", "--devices", "a", "--type", "reboot", "--key", "/nonexistent/key"}, "/nonexistent/key"},
      {{"jobs", "show", "bad/id"}, "job id"},
      {{"jobs", "show", "j-1", "--state", "failed"}, "--executions"},
      {{"jobs", "show", "j-1", "--executions", "--state", "done", "--broker", "mqtt://127.0.0.1:1"}, "--state"},
      {{"jobs", "list", "--limit", "0"}, "--limit"},
      {{"jobs", "watch", "j-1", "--interval", "1ms", "--broker", "mqtt://127.0.0.1:1"}, "--interval"},
      {{"jobs", "cancel"}, "id"},
      {{"audit", "--limit", "9999"}, "--limit"},
      {{"scripts", "add", "s", "/nonexistent/script.sh", "--key", k}, "/nonexistent/script.sh"},
      {{"scripts", "add", "s", "x", "--interpreter", "perl"}, "--interpreter"},
      {{"keys", "generate"}, "--out"},
  };
  for (const auto& c : cases) {
    CAPTURE(fmt::format("{}", fmt::join(c.args, " ")));
    const auto r = run_cli(c.args);
    CHECK(r.code == cli::exit_usage);
    CHECK_MESSAGE(contains(r.err, c.message), r.err);
    check_one_error_line(r.err);
    CHECK(r.out.empty());
  }
}

TEST_CASE("no signing key anywhere exits 2 naming the ways to give one") {
  const char* saved = std::getenv("FLOTILLA_SIGNING_KEY");
  const std::string saved_value = saved != nullptr ? saved : "";
  ::unsetenv("FLOTILLA_SIGNING_KEY");
  const auto r = run_cli({"jobs", "create", "--devices", "a", "--type", "reboot", "--dry-run"});
  CHECK(r.code == cli::exit_usage);
  CHECK(contains(r.err, "FLOTILLA_SIGNING_KEY"));

  // The environment variable and the configuration file's signing_key are used.
  TestKey key;
  ::setenv("FLOTILLA_SIGNING_KEY", key.files.private_key.c_str(), 1);
  auto env = run_cli({"jobs", "create", "--devices", "a", "--type", "reboot", "--dry-run"});
  CHECK(env.code == cli::exit_ok);
  ::unsetenv("FLOTILLA_SIGNING_KEY");
  const auto config = key.dir.path() / "cli.toml";
  write_file(config, fmt::format("signing_key = \"{}\"\n", key.files.private_key.string()));
  auto file = run_cli(
      {"--config", config.string(), "jobs", "create", "--devices", "a", "--type", "reboot", "--dry-run"});
  CHECK(file.code == cli::exit_ok);
  CHECK(contains(file.out, key.files.key_id));
  if (saved != nullptr) ::setenv("FLOTILLA_SIGNING_KEY", saved_value.c_str(), 1);
}

TEST_CASE("jobs create --dry-run prints the signed request without a broker") {
  TestKey key;
  const auto r = run_cli({"--broker",  "mqtt://127.0.0.1:1",
                          "jobs",      "create",
                          "--devices", "dev-b,dev-a",
                          "--devices", "dev-c",
                          "--type",    "service.restart",
                          "--param",   "unit=nginx.service",
                          "--timeout", "10m",
                          "--retries", "2",
                          "--abort",   "FAILED>5%@50",
                          "--id",      "j-dry",
                          "--key",     key.files.private_key.string(),
                          "--dry-run"});
  REQUIRE_MESSAGE(r.code == cli::exit_ok, r.err);
  CHECK(r.err.empty());
  // One JSON document: {"document": JobDocument, "spec": JobSpec}.
  const auto spec_at = r.out.find(",\"spec\":");
  REQUIRE(r.out.starts_with("{\"document\":"));
  REQUIRE(spec_at != std::string::npos);
  v1::JobDocument doc;
  REQUIRE(google::protobuf::util::JsonStringToMessage(r.out.substr(12, spec_at - 12), &doc).ok());
  v1::JobSpec spec;
  const auto spec_json = r.out.substr(spec_at + 8, r.out.size() - spec_at - 8 - 2);  // without "}\n"
  REQUIRE(google::protobuf::util::JsonStringToMessage(spec_json, &spec).ok());
  CHECK(doc.job_id() == "j-dry");
  CHECK(doc.type() == "service.restart");
  CHECK(doc.params().at("unit") == "nginx.service");
  CHECK(doc.max_attempts() == 3);
  // After the subcommand, --timeout is the execution timeout, not the reply timeout.
  CHECK(spec.timeout_s() == 600);
  CHECK(spec.retries() == 2);
  CHECK(spec.target().device_ids_size() == 3);
  CHECK(spec.device_signatures_size() == 3);
  CHECK(spec.signed_().target() == "dev-b");
  const auto trust = key.trust();
  for (const auto* id : {"dev-a", "dev-b", "dev-c"}) {
    CAPTURE(id);
    CHECK(trust
              .verify(key.files.key_id, jobs::job_signing_message(spec.signed_().document(), id),
                      spec.device_signatures().at(id))
              .ok());
  }
}

TEST_CASE("jobs create refuses a request too large for per-device signatures") {
  TestKey key;
  std::string ids;
  for (int i = 0; i < 13000; ++i) ids += fmt::format("{}device-{:05}", i == 0 ? "" : ",", i);
  auto r = run_cli(
      {"jobs", "create", "--devices", ids, "--type", "reboot", "--key", key.files.private_key.string(), "--dry-run"});
  CHECK(r.code == cli::exit_usage);
  CHECK(contains(r.err, "--scope"));
  check_one_error_line(r.err);
  CHECK(r.out.empty());
  // Few devices with long ids: the estimate passes, the signed request does not.
  ids.clear();
  for (int i = 0; i < 4600; ++i) ids += fmt::format("{}{:064}", i == 0 ? "" : ",", i);
  r = run_cli(
      {"jobs", "create", "--devices", ids, "--type", "reboot", "--key", key.files.private_key.string(), "--dry-run"});
  CHECK(r.code == cli::exit_usage);
  CHECK(contains(r.err, "4600 devices"));
  CHECK(contains(r.err, "--scope"));
  CHECK(r.out.empty());
  // With a scope one signature suffices.
  r = run_cli({"jobs", "create", "--devices", ids, "--type", "reboot", "--scope", "acme", "--key",
               key.files.private_key.string(), "--dry-run"});
  CHECK(r.code == cli::exit_ok);
  CHECK(contains(r.out, "\"target\":\"*\""));
}

TEST_CASE("jobs commands exit 3 when the broker is unreachable") {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"jobs", "list"}, {"jobs", "show", "j-1"}, {"audit"}, {"scripts", "list"}}) {
    auto full = args;
    full.insert(full.end(), {"--broker", "mqtt://127.0.0.1:1", "--timeout", "1s"});
    const auto r = run_cli(full);
    CHECK(r.code == cli::exit_unreachable);
    check_one_error_line(r.err);
  }
}
}  // TEST_SUITE("cli.jobs")
