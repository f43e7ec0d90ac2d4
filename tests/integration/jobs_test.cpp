// Jobs end to end: a real Mosquitto, the manager on RocksDB, real agents executing on this host,
// the simulator for fleets, the CLI as operators and scripts drive it.
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/signed_job.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/sim/fleet_model.hpp"
#include "support/fleet.hpp"

using namespace std::chrono_literals;
using flotilla::testing::Fleet;
using flotilla::testing::read_file;
using flotilla::testing::run_command;
namespace v1 = flotilla::v1;

namespace {

std::optional<v1::JobRecord> show_job(Fleet& fleet, const std::string& id) {
  v1::RpcRequest req;
  req.mutable_show_job()->set_job_id(id);
  auto r = fleet.rpc(req);
  if (!r || r->code() != v1::RpcResponse::CODE_OK) return std::nullopt;
  return r->job();
}

v1::EffectiveConfig effective_config(Fleet& fleet, const std::string& device) {
  v1::RpcRequest req;
  req.mutable_effective_config()->set_device_id(device);
  auto r = fleet.rpc(req);
  REQUIRE(r);
  REQUIRE(r->code() == v1::RpcResponse::CODE_OK);
  return r->effective_config();
}

bool job_finished(const v1::JobRecord& j) {
  return j.state() == v1::JOB_COMPLETED || j.state() == v1::JOB_CANCELED || j.state() == v1::JOB_ABORTED;
}

// Waits until the job ended; returns its record.
v1::JobRecord wait_job(Fleet& fleet, const std::string& id, std::chrono::milliseconds timeout) {
  std::optional<v1::JobRecord> job;
  const bool done = Fleet::wait_until(
      [&] {
        job = show_job(fleet, id);
        return job && job_finished(*job);
      },
      timeout, 250ms);
  INFO(fleet.logs());
  REQUIRE_MESSAGE(done, fmt::format("job {} did not end: {}", id, job ? job->DebugString() : "not found"));
  return *job;
}

std::vector<v1::Execution> executions(Fleet& fleet, const std::string& id) {
  std::vector<v1::Execution> out;
  std::string cursor;
  while (true) {
    v1::RpcRequest req;
    req.mutable_job_executions()->set_job_id(id);
    req.mutable_job_executions()->set_limit(1000);
    req.mutable_job_executions()->set_start_after(cursor);
    auto r = fleet.rpc(req);
    REQUIRE(r);
    REQUIRE(r->code() == v1::RpcResponse::CODE_OK);
    for (const auto& e : r->executions().executions()) out.push_back(e);
    cursor = r->executions().next_cursor();
    if (cursor.empty()) return out;
  }
}

// Lines "device job attempt" of the simulator's ledger for one job: device -> executions.
std::map<std::string, int> ledger(const Fleet& fleet, const std::string& job) {
  std::map<std::string, int> counts;
  std::istringstream in(read_file(fleet.sim_ledger()));
  std::string device, id;
  int attempt = 0;
  while (in >> device >> id >> attempt) {
    if (id == job) ++counts[device];
  }
  return counts;
}

std::string write_script(const Fleet& fleet, const std::string& name, const std::string& body) {
  const auto path = fleet.dir() / name;
  std::ofstream(path) << body;
  return path.string();
}

// Publishes `payload` on `topic` as the manager (the only client allowed to write device cmd
// topics), the way an intruder with a stolen service credential would.
void inject(Fleet& fleet, const std::string& topic, const std::string& payload) {
  static int n = 0;
  const auto file = fleet.dir() / fmt::format("injected-{}.bin", ++n);
  std::ofstream(file, std::ios::binary) << payload;
  auto r = run_command(
      {"mosquitto_pub", "-V", "mqttv5", "-h", "127.0.0.1", "-p", std::to_string(fleet.broker().service_port()), "-u",
       "flotilla-manager", "-P", fleet.password("flotilla-manager"), "-t", topic, "-f", file.string(), "-q", "1"},
      fleet.dir() / "inject.log", 20s);
  REQUIRE(r.status == 0);
}

v1::Command job_command(const v1::SignedJob& signed_job, const std::string& device, std::uint32_t attempt) {
  v1::JobDocument doc;
  REQUIRE(doc.ParseFromString(signed_job.document()));
  v1::Command cmd;
  *cmd.mutable_header() = flotilla::codec::make_header(*flotilla::DeviceId::parse(device), 0, 1,
                                                       flotilla::unix_now_ms());
  cmd.set_command_id(flotilla::jobs::command_id(doc.job_id(), attempt));
  cmd.set_type("job");
  cmd.set_attempt(attempt);
  cmd.set_expires_at_ms(doc.expires_at_ms());
  *cmd.mutable_job() = signed_job;
  return cmd;
}

}  // namespace

TEST_CASE("jobs: a real script.run and an apt dry run on this host, driven by the CLI") {
  Fleet fleet({.devices = {"host-1"}, .manager_toml = "[jobs]\nredrive_interval = \"2s\"\n"});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_agent("host-1");
  REQUIRE(Fleet::wait_until([&] { return fleet.device("host-1") && fleet.device("host-1")->record().online(); }, 20s));

  const auto marker = fleet.dir() / "ran.txt";
  const auto script = write_script(fleet, "hello.sh",
                                   fmt::format("#!/bin/sh\necho \"hello from $(hostname) args=$1|$2\"\n"
                                               "echo ran >> {}\necho warning >&2\nexit 0\n",
                                               marker.string()));
  auto added = fleet.cli({"scripts", "add", "hello", script});
  INFO(added.output);
  REQUIRE(added.status == 0);
  auto created = fleet.cli({"-o", "json", "jobs", "create", "--id", "script-1", "--devices", "host-1", "--script",
                            "hello", "--arg", "one two", "--arg", "x'y", "--timeout", "1m"});
  INFO(created.output);
  REQUIRE(created.status == 0);
  auto watched = fleet.cli({"jobs", "watch", "script-1", "--interval", "200ms"});
  INFO(watched.output);
  CHECK(watched.status == 0);
  auto job = wait_job(fleet, "script-1", 30s);
  CHECK(job.state() == v1::JOB_COMPLETED);
  CHECK(job.counts().succeeded() == 1);
  auto execs = executions(fleet, "script-1");
  REQUIRE(execs.size() == 1);
  const auto& out = execs[0].output();
  REQUIRE(out.contains("stdout"));
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  CHECK(out.at("stdout") == fmt::format("hello from {} args=one two|x'y\n", host));
  CHECK(out.at("stderr") == "warning\n");
  CHECK(out.at("exit_code") == "0");
  CHECK(read_file(marker) == "ran\n");

  // A failing script: exit code reported, FAILED.
  const auto failing = write_script(fleet, "fail.sh", "#!/bin/sh\necho nope\nexit 3\n");
  REQUIRE(fleet.cli({"scripts", "add", "fail", failing}).status == 0);
  REQUIRE(fleet.cli({"jobs", "create", "--id", "script-2", "--devices", "host-1", "--script", "fail"}).status == 0);
  auto watched_fail = fleet.cli({"jobs", "watch", "script-2", "--interval", "200ms"});
  CHECK(watched_fail.status == 6);
  job = wait_job(fleet, "script-2", 30s);
  CHECK(job.counts().failed() == 1);
  CHECK(executions(fleet, "script-2").at(0).output().at("exit_code") == "3");

  // apt's real simulation of removing an installed package: nothing is removed.
  REQUIRE(fleet
              .cli({"jobs", "create", "--id", "apt-1", "--devices", "host-1", "--type", "package.remove", "--param",
                    "packages=mosquitto", "--param", "dry_run=true"})
              .status == 0);
  job = wait_job(fleet, "apt-1", 60s);
  auto apt = executions(fleet, "apt-1").at(0);
  INFO(apt.DebugString());
  CHECK(job.counts().succeeded() == 1);
  bool mentions = false;
  for (const auto& [k, v] : apt.output()) mentions = mentions || v.find("mosquitto") != std::string::npos;
  CHECK(mentions);
  CHECK(run_command({"dpkg-query", "-W", "mosquitto"}, fleet.dir() / "dpkg.log", 10s).status == 0);

  // An unknown type is REJECTED, not ignored.
  REQUIRE(fleet.cli({"jobs", "create", "--id", "bogus-1", "--devices", "host-1", "--type", "teleport"}).status == 0);
  job = wait_job(fleet, "bogus-1", 30s);
  CHECK(job.counts().rejected() == 1);
  CHECK(executions(fleet, "bogus-1").at(0).status().find("teleport") != std::string::npos);

  // patch.scan: the pending updates become part of the inventory and are queryable.
  REQUIRE(fleet.cli({"jobs", "create", "--id", "scan-1", "--devices", "host-1", "--type", "patch.scan"}).status == 0);
  job = wait_job(fleet, "scan-1", 120s);
  REQUIRE(job.counts().succeeded() == 1);
  const auto scan = executions(fleet, "scan-1").at(0);
  const auto pending = scan.output().at("pending");
  bool indexed = Fleet::wait_until(
      [&] {
        auto q = fleet.cli({"devices", "query", "patch.pending:" + pending, "--fields", "patch.pending"});
        return q.status == 0 && q.output.find("host-1") != std::string::npos;
      },
      20s, 500ms);
  CHECK(indexed);
  CHECK(fleet.device("host-1")->inventory().patches().pending() == std::stoul(pending));

  // The audit log names who created what.
  auto audit = fleet.cli({"audit"});
  CHECK(audit.status == 0);
  CHECK(audit.output.find("job.create") != std::string::npos);
  CHECK(audit.output.find("script.add") != std::string::npos);
}

TEST_CASE("jobs: unsigned, wrongly targeted, expired and replayed documents execute nothing") {
  Fleet fleet({.devices = {"host-1"}});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_agent("host-1");
  REQUIRE(Fleet::wait_until([&] { return fleet.device("host-1") && fleet.device("host-1")->record().online(); }, 20s));

  const auto marker = fleet.dir() / "ran.txt";
  auto document = [&](const std::string& id, std::int64_t expires_at) {
    v1::JobDocument doc;
    doc.set_job_id(id);
    doc.set_type("script.run");
    doc.set_issued_at_ms(flotilla::unix_now_ms());
    doc.set_expires_at_ms(expires_at);
    doc.set_max_attempts(1);
    doc.mutable_script()->set_name("mark");
    doc.mutable_script()->set_interpreter("sh");
    doc.mutable_script()->set_body(fmt::format("echo {} >> {}\n", id, marker.string()));
    return flotilla::codec::encode(doc);
  };
  auto signer = flotilla::signing::Signer::from_file(fleet.operator_key());
  REQUIRE(signer);
  auto stranger_pair = flotilla::signing::generate_key();
  REQUIRE(stranger_pair);
  auto stranger = flotilla::signing::Signer::from_pem(stranger_pair->private_pem);
  REQUIRE(stranger);
  const auto later = flotilla::unix_now_ms() + 3'600'000;
  const auto topic = flotilla::topics::device(*flotilla::DeviceId::parse("host-1"), flotilla::topics::Channel::cmd);

  // The genuine one first: it runs once.
  auto genuine = flotilla::jobs::sign_job(*signer, document("genuine", later), "host-1");
  inject(fleet, topic, flotilla::codec::encode(job_command(genuine, "host-1", 1)));
  REQUIRE(Fleet::wait_until([&] { return read_file(marker) == "genuine\n"; }, 20s));

  auto unsigned_job = flotilla::jobs::sign_job(*signer, document("unsigned", later), "host-1");
  unsigned_job.clear_signature();
  auto foreign_key = flotilla::jobs::sign_job(*stranger, document("foreign", later), "host-1");
  auto other_device = flotilla::jobs::sign_job(*signer, document("elsewhere", later), "host-2");
  auto expired = flotilla::jobs::sign_job(*signer, document("expired", flotilla::unix_now_ms() - 1000), "host-1");
  auto tampered = flotilla::jobs::sign_job(*signer, document("tampered", later), "host-1");
  tampered.set_document(document("tampered-2", later));
  for (const auto& bad : std::vector<v1::SignedJob>{unsigned_job, foreign_key, other_device, expired, tampered}) {
    inject(fleet, topic, flotilla::codec::encode(job_command(bad, "host-1", 1)));
  }
  // Replays of the genuine document, as the same attempt and as a "retry" beyond max_attempts.
  inject(fleet, topic, flotilla::codec::encode(job_command(genuine, "host-1", 1)));
  inject(fleet, topic, flotilla::codec::encode(job_command(genuine, "host-1", 2)));

  const auto log = fleet.dir() / "host-1.log";
  const bool all_seen = Fleet::wait_until(
      [&] {
        const auto text = read_file(log);
        std::size_t n = 0;
        for (auto pos = text.find("rejected:"); pos != std::string::npos; pos = text.find("rejected:", pos + 1)) ++n;
        return n >= 6;
      },
      20s);
  INFO(read_file(log));
  CHECK(all_seen);
  std::this_thread::sleep_for(1s);
  CHECK(read_file(marker) == "genuine\n");  // nothing else ran, the genuine job ran once
}

TEST_CASE("jobs: an offline device gets the job when it comes back") {
  Fleet fleet({.devices = {"host-1", "host-2"}, .manager_toml = "[jobs]\nredrive_interval = \"1s\"\n"});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_agent("host-1");
  fleet.start_agent("host-2");
  REQUIRE(Fleet::wait_until(
      [&] {
        auto a = fleet.device("host-1"), b = fleet.device("host-2");
        return a && a->record().online() && b && b->record().online();
      },
      20s));
  fleet.agent("host-2").terminate();
  REQUIRE(Fleet::wait_until([&] { return !fleet.device("host-2")->record().online(); }, 10s));

  REQUIRE(fleet.cli({"jobs", "create", "--id", "inv-1", "--devices", "host-1,host-2", "--type", "inventory.refresh"})
              .status == 0);
  REQUIRE(Fleet::wait_until([&] { return show_job(fleet, "inv-1")->counts().succeeded() == 1; }, 20s));
  std::this_thread::sleep_for(2s);
  auto job = show_job(fleet, "inv-1");
  CHECK(job->counts().queued() == 1);
  CHECK(job->state() == v1::JOB_IN_PROGRESS);

  fleet.start_agent("host-2");
  const auto done = wait_job(fleet, "inv-1", 30s);
  CHECK(done.state() == v1::JOB_COMPLETED);
  CHECK(done.counts().succeeded() == 2);
}

TEST_CASE("jobs: broker restarted mid-job over 1,000 simulated devices: each executes exactly once") {
  constexpr std::size_t kDevices = 1000;
  Fleet fleet({.sim_devices = kDevices, .manager_toml = "[jobs]\nredrive_interval = \"2s\"\n"});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_sim(kDevices, "30s");
  REQUIRE(Fleet::wait_until([&] { return fleet.stats() && fleet.stats()->devices_online() == kDevices; }, 60s, 500ms));

  // 3,000 per minute: about 20 s of dispatching, with a broker outage in the middle.
  auto created = fleet.cli({"jobs", "create", "--id", "fleet-1", "--query", "tag:simulated", "--type",
                            "inventory.refresh", "--rate", "3000/min", "--timeout", "2m"});
  INFO(created.output);
  REQUIRE(created.status == 0);
  REQUIRE(Fleet::wait_until([&] { return show_job(fleet, "fleet-1")->notified() >= 200; }, 30s));
  fleet.broker().stop();
  std::this_thread::sleep_for(3s);
  fleet.broker().start();

  auto job = wait_job(fleet, "fleet-1", 180s);
  CHECK(job.state() == v1::JOB_COMPLETED);
  CHECK(job.counts().succeeded() == kDevices);
  const auto ran = ledger(fleet, "fleet-1");
  std::size_t twice = 0;
  for (const auto& [device, n] : ran) twice += n > 1 ? 1 : 0;
  CHECK(ran.size() == kDevices);  // 0 never
  CHECK(twice == 0);              // 0 twice
}

TEST_CASE("jobs: manager kill -9 mid-job: the job resumes and completes, nothing runs twice") {
  constexpr std::size_t kDevices = 200;
  Fleet fleet({.sim_devices = kDevices, .manager_toml = "[jobs]\nredrive_interval = \"2s\"\n"});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_sim(kDevices, "30s");
  REQUIRE(Fleet::wait_until([&] { return fleet.stats() && fleet.stats()->devices_online() == kDevices; }, 60s, 500ms));
  REQUIRE(fleet
              .cli({"jobs", "create", "--id", "kill-1", "--query", "tag:simulated", "--type", "inventory.refresh",
                    "--rate", "600/min"})
              .status == 0);
  REQUIRE(Fleet::wait_until([&] { return show_job(fleet, "kill-1")->notified() >= 40; }, 30s));
  REQUIRE(fleet.manager().kill());
  fleet.start_manager();
  auto job = wait_job(fleet, "kill-1", 120s);
  CHECK(job.state() == v1::JOB_COMPLETED);
  CHECK(job.counts().succeeded() == kDevices);
  const auto ran = ledger(fleet, "kill-1");
  CHECK(ran.size() == kDevices);
  for (const auto& entry : ran) CHECK_MESSAGE(entry.second == 1, entry.first);
}

TEST_CASE("policies: inheritance reaches the agent, which applies and reports the version; drift is visible") {
  Fleet fleet({.devices = {"host-1"}});
  fleet.start_manager();
  fleet.start_agent("host-1", {.keepalive = "2s", .telemetry_interval = "30s", .tenant = "acme"});
  REQUIRE(Fleet::wait_until([&] { return fleet.device("host-1") && fleet.device("host-1")->record().online(); }, 20s));

  auto set = [&](const std::string& level, const std::string& name, const std::string& key, const std::string& value,
                 bool enforced = false) {
    v1::RpcRequest req;
    req.set_actor("tester");
    auto* p = req.mutable_set_policy()->mutable_policy();
    p->set_level(level);
    p->set_name(name);
    auto& v = (*p->mutable_values())[key];
    v.set_value(value);
    v.set_enforced(enforced);
    auto r = fleet.rpc(req);
    REQUIRE(r);
    return *r;
  };
  auto effective = [&] { return effective_config(fleet, "host-1"); };
  const auto seq_before = fleet.device("host-1")->telemetry().header().seq();

  REQUIRE(set("tenant", "acme", "telemetry.interval", "1s").code() == v1::RpcResponse::CODE_OK);
  REQUIRE(set("site", "test-lab", "custom.owner", "lab team").code() == v1::RpcResponse::CODE_OK);
  REQUIRE(set("device", "host-1", "custom.owner", "alice").code() == v1::RpcResponse::CODE_OK);
  // A bad value is refused with the reason, and changes nothing.
  auto bad = set("tenant", "acme", "telemetry.interval", "0s");
  CHECK(bad.code() == v1::RpcResponse::CODE_INVALID_ARGUMENT);
  CHECK(bad.error().find("telemetry.interval") != std::string::npos);

  v1::EffectiveConfig e;
  const bool applied = Fleet::wait_until(
      [&] {
        e = effective();
        return !e.drift() && e.applied_version() == e.desired().version();
      },
      20s, 200ms);
  INFO(fleet.logs());
  REQUIRE(applied);
  CHECK(e.desired().values().at("telemetry.interval") == "1s");
  CHECK(e.desired().sources().at("telemetry.interval") == "tenant/acme");
  CHECK(e.desired().values().at("custom.owner") == "alice");
  CHECK(e.desired().sources().at("custom.owner") == "device/host-1");

  // The agent samples every second now (it was every 30 s).
  const bool faster = Fleet::wait_until(
      [&] { return fleet.device("host-1")->telemetry().header().seq() >= seq_before + 5; }, 15s, 500ms);
  CHECK(faster);

  // Enforced at the tenant: the device level cannot override it.
  REQUIRE(set("tenant", "acme", "custom.owner", "corporate", true).code() == v1::RpcResponse::CODE_OK);
  REQUIRE(Fleet::wait_until([&] { return effective().desired().values().at("custom.owner") == "corporate"; }, 10s));

  // An agent that is down cannot apply a change: drift, until it is back.
  fleet.agent("host-1").terminate();
  REQUIRE(set("tenant", "acme", "telemetry.interval", "2s").code() == v1::RpcResponse::CODE_OK);
  CHECK(effective().drift());
  fleet.start_agent("host-1", {.keepalive = "2s", .telemetry_interval = "30s", .tenant = "acme"});
  const bool caught_up = Fleet::wait_until([&] { return !effective().drift(); }, 20s, 200ms);
  CHECK(caught_up);
  CHECK(effective().desired().values().at("telemetry.interval") == "2s");

  // Drift is a query.
  auto in_step = fleet.cli({"devices", "query", "config.drift:false", "--fields", "config.applied"});
  CHECK(in_step.status == 0);
  CHECK(in_step.output.find("host-1") != std::string::npos);

  // The same through the CLI, as an ops script would drive it.
  auto cli_set = fleet.cli({"policies", "set", "group", "no-such-group", "custom.x=1"});
  CHECK(cli_set.status == 0);  // a policy may name a group before it exists
  auto cli_bad = fleet.cli({"policies", "set", "tenant", "acme", "bogus=1"});
  CHECK(cli_bad.status == 5);
  CHECK(cli_bad.output.find("unknown key") != std::string::npos);
  auto shown = fleet.cli({"policies", "effective", "host-1"});
  INFO(shown.output);
  CHECK(shown.status == 0);
  CHECK(shown.output.find("tenant/acme") != std::string::npos);
  CHECK(shown.output.find("corporate") != std::string::npos);
  auto listed = fleet.cli({"-o", "json", "policies", "list"});
  CHECK(listed.status == 0);
  CHECK(listed.output.find("no-such-group") != std::string::npos);
  auto audit = fleet.cli({"audit"});
  CHECK(audit.output.find("policy.set") != std::string::npos);
}

TEST_CASE("jobs: approval gates a job; config.set rolls desired configuration out through the agent") {
  Fleet fleet({.devices = {"host-1"}, .manager_toml = "[jobs]\nredrive_interval = \"2s\"\n"});
  fleet.operator_key();
  fleet.start_manager();
  fleet.start_agent("host-1", {.keepalive = "2s", .telemetry_interval = "30s", .tenant = "acme"});
  REQUIRE(Fleet::wait_until([&] { return fleet.device("host-1") && fleet.device("host-1")->record().online(); }, 20s));
  // The CLI names its operator from FLOTILLA_ACTOR.
  struct Actor {
    explicit Actor(const char* name) { ::setenv("FLOTILLA_ACTOR", name, 1); }
    ~Actor() { ::unsetenv("FLOTILLA_ACTOR"); }
  };
  auto effective = [&] { return effective_config(fleet, "host-1"); };

  {
    Actor alice("alice");
    auto created = fleet.cli({"jobs", "create", "--id", "cfg-1", "--devices", "host-1", "--type", "config.set",
                              "--param", "telemetry.interval=5s", "--param", "custom.owner=ops team",
                              "--require-approval"});
    INFO(created.output);
    REQUIRE(created.status == 0);
    auto shown = fleet.cli({"jobs", "show", "cfg-1"});
    CHECK(shown.output.find("awaiting") != std::string::npos);
    auto own = fleet.cli({"jobs", "approve", "cfg-1"});
    CHECK(own.status == 5);
    CHECK(own.output.find("another operator") != std::string::npos);
  }
  // Nothing moves while the job waits.
  std::this_thread::sleep_for(1500ms);
  auto waiting = show_job(fleet, "cfg-1");
  REQUIRE(waiting);
  CHECK(waiting->state() == v1::JOB_SCHEDULED);
  CHECK(waiting->awaiting_approval());
  CHECK(waiting->counts().queued() == 1);
  CHECK(effective().desired().values().count("custom.owner") == 0);
  {
    Actor bob("bob");
    auto approved = fleet.cli({"jobs", "approve", "cfg-1", "--note", "CHG-42"});
    INFO(approved.output);
    CHECK(approved.status == 0);
  }
  auto job = wait_job(fleet, "cfg-1", 30s);
  CHECK(job.state() == v1::JOB_COMPLETED);
  CHECK(job.approved_by() == "bob");
  REQUIRE(job.counts().succeeded() == 1);
  const auto exec = executions(fleet, "cfg-1").at(0);
  const auto e = effective();
  CHECK(e.desired().values().at("custom.owner") == "ops team");
  CHECK(e.desired().values().at("telemetry.interval") == "5s");
  CHECK(e.desired().sources().at("custom.owner") == "device/host-1");
  CHECK(exec.output().at("config_version") == e.desired().version());
  CHECK(Fleet::wait_until([&] { return !effective().drift(); }, 20s, 200ms));

  // A value enforced above the device: the agent refuses the job rather than apply another value.
  v1::RpcRequest enforce;
  enforce.set_actor("tester");
  auto* p = enforce.mutable_set_policy()->mutable_policy();
  p->set_level("tenant");
  p->set_name("acme");
  (*p->mutable_values())["custom.owner"].set_value("corporate");
  (*p->mutable_values())["custom.owner"].set_enforced(true);
  auto enforced = fleet.rpc(enforce);
  REQUIRE(enforced);
  REQUIRE(enforced->code() == v1::RpcResponse::CODE_OK);
  REQUIRE(fleet
              .cli({"jobs", "create", "--id", "cfg-2", "--devices", "host-1", "--type", "config.set", "--param",
                    "custom.owner=someone else"})
              .status == 0);
  job = wait_job(fleet, "cfg-2", 30s);
  CHECK(job.counts().rejected() == 1);
  const auto refused = executions(fleet, "cfg-2").at(0);
  INFO(refused.DebugString());
  CHECK(refused.status().find("tenant/acme") != std::string::npos);

  // Keys are checked before anything is created.
  auto bad = fleet.cli(
      {"jobs", "create", "--id", "cfg-3", "--devices", "host-1", "--type", "config.set", "--param", "bogus=1"});
  CHECK(bad.status == 5);
  CHECK(bad.output.find("unknown key") != std::string::npos);
  CHECK_FALSE(show_job(fleet, "cfg-3"));

  auto audit = fleet.cli({"audit"});
  CHECK(audit.output.find("job.approve") != std::string::npos);
  CHECK(audit.output.find("bob") != std::string::npos);
}
