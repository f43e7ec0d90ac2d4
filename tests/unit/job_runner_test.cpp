// The agent's job runner with a real execution store and real Ed25519 keys: what it verifies,
// what it executes, what it answers to duplicates, and what survives a restart.
#include <doctest/doctest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

#include "flotilla/agent/job_runner.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/signed_job.hpp"

using namespace flotilla;
using namespace flotilla::agent;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / fmt::format("flotilla-runner-{}-{}", ::getpid(), unix_now_ms());
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

struct Keys {
  signing::Signer signer;
  signing::Signer stranger;
};

Keys make_keys(const fs::path& trusted_dir) {
  auto a = signing::generate_key();
  auto b = signing::generate_key();
  REQUIRE(a);
  REQUIRE(b);
  fs::create_directories(trusted_dir);
  std::ofstream(trusted_dir / "operator.pub") << a->public_pem;
  auto signer = signing::Signer::from_pem(a->private_pem);
  auto stranger = signing::Signer::from_pem(b->private_pem);
  REQUIRE(signer);
  REQUIRE(stranger);
  return Keys{std::move(signer).value(), std::move(stranger).value()};
}

std::string document(const std::string& id, const fs::path& marker, std::int64_t issued, std::int64_t expires,
                     std::uint32_t attempts = 1, const std::string& tenant = {}) {
  v1::JobDocument doc;
  doc.set_job_id(id);
  doc.set_type("script.run");
  doc.set_issued_at_ms(issued);
  doc.set_expires_at_ms(expires);
  doc.set_max_attempts(attempts);
  doc.set_scope_tenant(tenant);
  doc.mutable_script()->set_name("mark");
  doc.mutable_script()->set_interpreter("sh");
  doc.mutable_script()->set_body(fmt::format("echo {} >> '{}'\n", id, marker.string()));
  return codec::encode(doc);
}

v1::Command command(v1::SignedJob job, std::uint32_t attempt) {
  v1::JobDocument doc;
  REQUIRE(doc.ParseFromString(job.document()));
  v1::Command cmd;
  cmd.set_command_id(jobs::command_id(doc.job_id(), attempt));
  cmd.set_type("job");
  cmd.set_attempt(attempt);
  *cmd.mutable_job() = std::move(job);
  return cmd;
}

std::unique_ptr<JobRunner> open_runner(const TempDir& dir, const std::string& tenant = "acme") {
  JobRunnerOptions o;
  o.state_dir = dir.path / "state";
  o.trusted_keys = dir.path / "trusted";
  o.self = jobs::DeviceScope{"dev-1", tenant, "hq"};
  o.policy.work_dir = dir.path / "state" / "jobs";
  auto r = JobRunner::open(std::move(o), unix_now_ms());
  REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
  return std::move(r).value();
}

// Polls until the runner reports `n` outcomes (the worker runs real processes).
std::vector<JobReport> wait_reports(JobRunner& runner, std::size_t n) {
  std::vector<JobReport> all;
  for (int i = 0; i < 200 && all.size() < n; ++i) {
    for (auto& r : runner.poll(unix_now_ms())) all.push_back(std::move(r));
    if (all.size() < n) std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  return all;
}

std::string read(const fs::path& p) {
  std::ifstream in(p);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("job runner: a signed job runs once; duplicates and replays get the stored outcome") {
  TempDir dir;
  auto keys = make_keys(dir.path / "trusted");
  const auto marker = dir.path / "marker";
  const auto now = unix_now_ms();
  auto runner = open_runner(dir);
  auto signed_job = jobs::sign_job(keys.signer, document("j1", marker, now, now + 60'000), "dev-1");

  auto first = runner->on_command(command(signed_job, 1), unix_now_ms());
  REQUIRE(first.size() == 1);
  CHECK(first[0].status == v1::CommandResult::STATUS_IN_PROGRESS);
  // A redelivery while it runs: still in progress, not started again.
  auto again = runner->on_command(command(signed_job, 1), unix_now_ms());
  REQUIRE(again.size() == 1);
  CHECK(again[0].status == v1::CommandResult::STATUS_IN_PROGRESS);
  auto done = wait_reports(*runner, 1);
  REQUIRE(done.size() == 1);
  CHECK(done[0].status == v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(done[0].output.at("exit_code") == "0");
  CHECK(read(marker) == "j1\n");

  // After it finished, and after a restart: the stored outcome, nothing runs.
  auto replay = runner->on_command(command(signed_job, 1), unix_now_ms());
  REQUIRE(replay.size() == 1);
  CHECK(replay[0].status == v1::CommandResult::STATUS_SUCCEEDED);
  runner.reset();
  runner = open_runner(dir);
  replay = runner->on_command(command(signed_job, 1), unix_now_ms());
  REQUIRE(replay.size() == 1);
  CHECK(replay[0].status == v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(replay[0].output.at("exit_code") == "0");
  CHECK(wait_reports(*runner, 1).empty());
  CHECK(read(marker) == "j1\n");
}

TEST_CASE("job runner: rejects unsigned, foreign, misdirected, out-of-scope, expired and over-attempted jobs") {
  TempDir dir;
  auto keys = make_keys(dir.path / "trusted");
  const auto marker = dir.path / "marker";
  const auto now = unix_now_ms();
  const auto later = now + 60'000;
  auto runner = open_runner(dir);

  auto unsigned_job = jobs::sign_job(keys.signer, document("a", marker, now, later), "dev-1");
  unsigned_job.clear_signature();
  auto foreign = jobs::sign_job(keys.stranger, document("b", marker, now, later), "dev-1");
  auto elsewhere = jobs::sign_job(keys.signer, document("c", marker, now, later), "dev-2");
  auto moved = jobs::sign_job(keys.signer, document("d", marker, now, later), "dev-2");
  moved.set_target("dev-1");  // a signature for dev-2 presented as one for dev-1
  auto wrong_tenant = jobs::sign_job(keys.signer, document("e", marker, now, later, 1, "other"), "*");
  auto unscoped_star = jobs::sign_job(keys.signer, document("f", marker, now, later), "*");
  auto expired = jobs::sign_job(keys.signer, document("g", marker, now - 120'000, now - 60'000), "dev-1");
  auto tampered = jobs::sign_job(keys.signer, document("h", marker, now, later), "dev-1");
  tampered.set_document(document("h2", marker, now, later));
  auto attempts = jobs::sign_job(keys.signer, document("i", marker, now, later, 2), "dev-1");

  for (const auto& [job, attempt] : std::vector<std::pair<v1::SignedJob, std::uint32_t>>{{unsigned_job, 1},
                                                                                         {foreign, 1},
                                                                                         {elsewhere, 1},
                                                                                         {moved, 1},
                                                                                         {wrong_tenant, 1},
                                                                                         {unscoped_star, 1},
                                                                                         {expired, 1},
                                                                                         {tampered, 1},
                                                                                         {attempts, 3}}) {
    auto out = runner->on_command(command(job, attempt), unix_now_ms());
    REQUIRE(out.size() == 1);
    CHECK_MESSAGE(out[0].status == v1::CommandResult::STATUS_REJECTED, out[0].message);
  }
  // A forged document must not poison the id of a real job: the genuine one still runs.
  auto genuine = jobs::sign_job(keys.signer, document("a", marker, now, later), "dev-1");
  auto out = runner->on_command(command(genuine, 1), unix_now_ms());
  REQUIRE(out.size() == 1);
  CHECK(out[0].status == v1::CommandResult::STATUS_IN_PROGRESS);
  REQUIRE(wait_reports(*runner, 1).size() == 1);
  CHECK(read(marker) == "a\n");
  // A "*" signature within the device's scope is good.
  auto scoped = jobs::sign_job(keys.signer, document("s", marker, now, later, 1, "acme"), "*");
  out = runner->on_command(command(scoped, 1), unix_now_ms());
  REQUIRE(out.size() == 1);
  CHECK(out[0].status == v1::CommandResult::STATUS_IN_PROGRESS);
  REQUIRE(wait_reports(*runner, 1).size() == 1);
  CHECK(read(marker) == "a\ns\n");
}

TEST_CASE("job runner: a failed attempt may be retried; a succeeded one never runs again") {
  TempDir dir;
  auto keys = make_keys(dir.path / "trusted");
  const auto marker = dir.path / "marker";
  const auto now = unix_now_ms();
  auto runner = open_runner(dir);
  v1::JobDocument doc;
  doc.set_job_id("flaky");
  doc.set_type("script.run");
  doc.set_issued_at_ms(now);
  doc.set_expires_at_ms(now + 60'000);
  doc.set_max_attempts(3);
  doc.mutable_script()->set_interpreter("sh");
  doc.mutable_script()->set_name("flaky");
  // Fails the first time, succeeds afterwards.
  doc.mutable_script()->set_body(fmt::format("echo x >> '{0}'\n[ $(wc -l < '{0}') -ge 2 ]\n", marker.string()));
  auto job = jobs::sign_job(keys.signer, codec::encode(doc), "dev-1");
  REQUIRE(runner->on_command(command(job, 1), unix_now_ms()).at(0).status == v1::CommandResult::STATUS_IN_PROGRESS);
  auto r1 = wait_reports(*runner, 1);
  REQUIRE(r1.size() == 1);
  CHECK(r1[0].status == v1::CommandResult::STATUS_FAILED);
  REQUIRE(runner->on_command(command(job, 2), unix_now_ms()).at(0).status == v1::CommandResult::STATUS_IN_PROGRESS);
  auto r2 = wait_reports(*runner, 1);
  REQUIRE(r2.size() == 1);
  CHECK(r2[0].status == v1::CommandResult::STATUS_SUCCEEDED);
  auto r3 = runner->on_command(command(job, 3), unix_now_ms());
  REQUIRE(r3.size() == 1);
  CHECK(r3[0].status == v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(r3[0].attempt == 3);
  CHECK(read(marker) == "x\nx\n");
}

TEST_CASE("job runner: an execution interrupted by a stop is reported failed, never run again") {
  TempDir dir;
  auto keys = make_keys(dir.path / "trusted");
  const auto marker = dir.path / "marker";
  const auto now = unix_now_ms();
  v1::JobDocument doc;
  doc.set_job_id("long");
  doc.set_type("script.run");
  doc.set_issued_at_ms(now);
  doc.set_expires_at_ms(now + 60'000);
  doc.set_max_attempts(1);
  doc.mutable_script()->set_interpreter("sh");
  doc.mutable_script()->set_name("long");
  doc.mutable_script()->set_body(fmt::format("echo started >> '{}'\nsleep 30\n", marker.string()));
  auto job = jobs::sign_job(keys.signer, codec::encode(doc), "dev-1");
  {
    auto runner = open_runner(dir);
    REQUIRE(runner->on_command(command(job, 1), unix_now_ms()).at(0).status == v1::CommandResult::STATUS_IN_PROGRESS);
    for (int i = 0; i < 100 && read(marker).empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    REQUIRE(read(marker) == "started\n");
  }  // the runner stops with the job running
  auto runner = open_runner(dir);
  auto out = runner->on_command(command(job, 1), unix_now_ms());
  REQUIRE(out.size() == 1);
  CHECK(out[0].status == v1::CommandResult::STATUS_FAILED);
  CHECK(out[0].message.find("interrupted") != std::string::npos);
  CHECK(wait_reports(*runner, 1).empty());
  CHECK(read(marker) == "started\n");
}

TEST_CASE("job runner: job types outside the policy are rejected") {
  TempDir dir;
  auto keys = make_keys(dir.path / "trusted");
  const auto now = unix_now_ms();
  auto runner = open_runner(dir);
  runner->set_policy({"inventory.refresh"}, false, nullptr);
  auto job = jobs::sign_job(keys.signer, document("p", dir.path / "m", now, now + 60'000), "dev-1");
  auto out = runner->on_command(command(job, 1), unix_now_ms());
  REQUIRE(out.size() == 1);
  CHECK(out[0].status == v1::CommandResult::STATUS_REJECTED);
  CHECK(out[0].message.find("policy") != std::string::npos);
}
