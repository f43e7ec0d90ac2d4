// The job engine on a manual clock: rollout pace, abort rules, timeouts, retries, offline
// devices, cancellation and a restart from the store. No sleeps, no broker.
#include <doctest/doctest.h>

#include <functional>
#include <map>
#include <set>

#include "flotilla/core/codec.hpp"
#include "flotilla/manager/jobs.hpp"

using namespace flotilla;
using namespace flotilla::manager;

namespace {

constexpr std::int64_t kStart = 1'800'000'000'000;
constexpr std::int64_t kMinute = 60'000;

// A fleet the engine sees through its DeviceDirectory.
struct Fleet {
  std::map<std::string, bool> online;  // device -> online
  std::set<std::string> matching;      // devices matching continuous targets
  // Optional hooks, forwarded by the directory.
  std::function<void(const std::string& device, Batch&)> before;
  std::function<void(const std::string& device, v1::Command&)> complete;

  DeviceDirectory directory() {
    DeviceDirectory d;
    d.known = [this](const std::string& id) { return online.contains(id); };
    d.online = [this](const std::string& id) {
      auto it = online.find(id);
      return it != online.end() && it->second;
    };
    d.resolve = [this](const v1::JobTarget& t) -> Result<std::vector<std::string>> {
      std::vector<std::string> ids;
      if (t.device_ids_size() > 0) {
        for (const auto& id : t.device_ids()) {
          if (!online.contains(id)) return make_error(Errc::not_found, "unknown {}", id);
          ids.push_back(id);
        }
        return ids;
      }
      for (const auto& id : matching) ids.push_back(id);
      return ids;
    };
    d.matches = [this](const v1::JobRecord&, const v1::JobDocument&, const std::string& id) {
      return matching.contains(id);
    };
    d.before_dispatch = [this](const v1::JobRecord&, const v1::JobDocument&, const std::string& id, std::int64_t,
                               Batch& b) {
      if (before) before(id, b);
    };
    d.complete_command = [this](const v1::JobDocument&, const std::string& id, v1::Command& cmd) {
      if (complete) complete(id, cmd);
    };
    return d;
  }
};

std::string device_name(int i) { return fmt::format("dev-{:04}", i); }

struct SpecBuilder {
  v1::JobSpec spec;
  v1::JobDocument doc;

  explicit SpecBuilder(std::string id, int devices, std::int64_t now = kStart) {
    doc.set_job_id(std::move(id));
    doc.set_type("script.run");
    doc.set_issued_at_ms(now);
    doc.set_expires_at_ms(now + 7 * 24 * 60 * kMinute);
    doc.set_max_attempts(1);
    for (int i = 0; i < devices; ++i) {
      spec.mutable_target()->add_device_ids(device_name(i));
      (*spec.mutable_device_signatures())[device_name(i)] = "sig";
    }
  }
  v1::JobSpec build() {
    spec.mutable_signed_()->set_document(codec::encode(doc));
    spec.mutable_signed_()->set_key_id("k1");
    spec.mutable_signed_()->set_target(spec.target().device_ids_size() > 0 ? spec.target().device_ids(0) : "*");
    spec.mutable_signed_()->set_signature("sig");
    return spec;
  }
};

struct Harness {
  Fleet fleet;
  std::unique_ptr<Store> store = make_memory_store();
  JobEngine engine{options(), fleet.directory()};
  std::int64_t now = kStart;
  // Device -> commands received (job/attempt), in order.
  std::map<std::string, std::vector<std::string>> received;
  // Device -> the configuration version the last command carried ("" for none).
  std::map<std::string, std::string> config_received;

  static JobEngineOptions options() {
    JobEngineOptions o;
    o.default_timeout = std::chrono::minutes(5);
    o.redrive_interval = std::chrono::seconds(30);
    return o;
  }

  explicit Harness(int devices, bool online = true) {
    for (int i = 0; i < devices; ++i) fleet.online[device_name(i)] = online;
  }

  void commit(Batch& b) {
    if (!b.empty()) REQUIRE(store->write(b, true));
    for (auto& m : engine.take_outgoing()) {
      auto cmd = codec::decode<v1::Command>(m.payload, codec::max_command_bytes);
      REQUIRE(cmd);
      received[cmd->header().device_id()].push_back(cmd->command_id());
      config_received[cmd->header().device_id()] = cmd->has_config() ? cmd->config().version() : "";
    }
  }
  v1::JobRecord create(const v1::JobSpec& spec) {
    Batch b;
    auto r = engine.create(spec, "tester", now, b);
    REQUIRE_MESSAGE(r, (r ? "" : r.error().message));
    commit(b);
    return *r;
  }
  void tick() {
    Batch b;
    engine.tick(now, b);
    commit(b);
  }
  void advance(std::int64_t ms, std::int64_t step = 1000) {
    for (std::int64_t t = 0; t < ms; t += step) {
      now += step;
      tick();
    }
  }
  void answer(const std::string& device, const std::string& job, std::uint32_t attempt,
              v1::CommandResult::Status status) {
    v1::CommandResult r;
    r.set_job_id(job);
    r.set_attempt(attempt);
    r.set_status(status);
    r.set_message("answer");
    Batch b;
    engine.on_result(device, r, now, b);
    commit(b);
  }
  std::size_t notified() const {
    std::size_t n = 0;
    for (const auto& [d, cmds] : received) n += cmds.empty() ? 0 : 1;
    return n;
  }
  const v1::JobRecord& job(const std::string& id) {
    const auto* r = engine.find(id);
    REQUIRE(r != nullptr);
    return *r;
  }
};

}  // namespace

TEST_CASE("jobs: unlimited rollout notifies every online device at once and completes on results") {
  Harness h(50);
  auto rec = h.create(SpecBuilder("j1", 50).build());
  CHECK(rec.state() == v1::JOB_IN_PROGRESS);
  CHECK(h.notified() == 50);
  CHECK(h.job("j1").counts().in_progress() == 50);
  for (int i = 0; i < 50; ++i) h.answer(device_name(i), "j1", 1, v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(h.job("j1").state() == v1::JOB_COMPLETED);
  CHECK(h.job("j1").counts().succeeded() == 50);
  // A late duplicate changes nothing.
  h.answer(device_name(3), "j1", 1, v1::CommandResult::STATUS_FAILED);
  CHECK(h.job("j1").counts().succeeded() == 50);
  CHECK(h.job("j1").counts().failed() == 0);
}

TEST_CASE("jobs: a constant rate of 100/min notifies 100 devices per simulated minute") {
  Harness h(1000);
  SpecBuilder b("rate", 1000);
  b.spec.mutable_rollout()->set_rate_per_minute(100);
  h.create(b.build());
  CHECK(h.notified() <= 2);
  for (int minute = 1; minute <= 5; ++minute) {
    h.advance(kMinute, 200);  // the reactor wakes at least every 200 ms
    const auto n = static_cast<long>(h.notified());
    CHECK(n >= minute * 100 - 2);
    CHECK(n <= minute * 100 + 2);
  }
}

TEST_CASE("jobs: exponential rollout multiplies the rate after every N notified") {
  Harness h(2000);
  SpecBuilder b("expo", 2000);
  auto* r = b.spec.mutable_rollout();
  r->set_rate_per_minute(10);
  r->set_factor(2);
  r->set_increment_after(50);
  r->set_max_rate_per_minute(1000);
  h.create(b.build());
  // 10/min until 50 notified (~5 min), then 20/min until 100 (~2.5 min), then 40/min...
  h.advance(5 * kMinute);
  CHECK(h.notified() >= 48);
  CHECK(h.notified() <= 52);
  h.advance(2 * kMinute + 30'000);
  CHECK(h.notified() >= 96);
  CHECK(h.notified() <= 104);
  h.advance(kMinute + 15'000);  // 40/min for 50 more: 1.25 min
  CHECK(h.notified() >= 145);
  CHECK(h.notified() <= 155);
}

TEST_CASE("jobs: abort fires with 30% failures after the minimum and stops dispatching") {
  Harness h(1000);
  SpecBuilder b("abort", 1000);
  b.spec.mutable_rollout()->set_rate_per_minute(600);  // 10 per second
  auto* rule = b.spec.add_abort_rules();
  rule->set_state(v1::EXECUTION_FAILED);
  rule->set_threshold_percent(5);
  rule->set_min_executions(50);
  h.create(b.build());
  int answered = 0;
  for (int step = 0; step < 200 && h.job("abort").state() == v1::JOB_IN_PROGRESS; ++step) {
    h.advance(1000);
    for (const auto& [device, cmds] : h.received) {
      const int index = std::stoi(device.substr(4));
      if (index >= answered && index < static_cast<int>(h.notified())) {
        // 3 in 10 fail.
        h.answer(device, "abort", 1,
                 index % 10 < 3 ? v1::CommandResult::STATUS_FAILED : v1::CommandResult::STATUS_SUCCEEDED);
      }
    }
    answered = static_cast<int>(h.notified());
  }
  const auto& job = h.job("abort");
  CHECK(job.state() == v1::JOB_ABORTED);
  CHECK(job.state_reason().find("FAILED") != std::string::npos);
  const auto finished = job.counts().succeeded() + job.counts().failed();
  CHECK(finished >= 50);
  CHECK(finished < 80);  // it fired at the minimum, not later
  CHECK(job.counts().canceled() > 900);
  CHECK(job.counts().queued() == 0);
  const auto notified = h.notified();
  h.advance(5 * kMinute);
  CHECK(h.notified() == notified);  // nothing more dispatched
}

TEST_CASE("jobs: devices that never answer become TIMED_OUT, and are retried when allowed") {
  Harness h(10);
  SpecBuilder b("silent", 10);
  b.spec.set_timeout_s(120);
  b.spec.set_retries(1);
  b.doc.set_max_attempts(2);
  h.create(b.build());
  for (int i = 0; i < 5; ++i) h.answer(device_name(i), "silent", 1, v1::CommandResult::STATUS_SUCCEEDED);
  h.advance(119'000);
  CHECK(h.job("silent").counts().in_progress() == 5);
  // Re-driven while unanswered: the same command id again, never a second attempt early.
  CHECK(h.received[device_name(7)].size() >= 2);
  CHECK(h.received[device_name(7)].front() == "silent/1");
  h.advance(2000);
  // First timeout: retried as attempt 2.
  CHECK(h.received[device_name(7)].back() == "silent/2");
  CHECK(h.job("silent").counts().in_progress() == 5);
  h.advance(121'000);
  CHECK(h.job("silent").counts().timed_out() == 5);
  CHECK(h.job("silent").counts().succeeded() == 5);
  CHECK(h.job("silent").state() == v1::JOB_COMPLETED);
}

TEST_CASE("jobs: REJECTED is never retried; FAILED is, up to the limit") {
  Harness h(2);
  SpecBuilder b("retry", 2);
  b.spec.set_retries(2);
  b.doc.set_max_attempts(3);
  h.create(b.build());
  h.answer(device_name(0), "retry", 1, v1::CommandResult::STATUS_REJECTED);
  h.answer(device_name(1), "retry", 1, v1::CommandResult::STATUS_FAILED);
  h.tick();
  h.answer(device_name(1), "retry", 2, v1::CommandResult::STATUS_FAILED);
  h.tick();
  h.answer(device_name(1), "retry", 3, v1::CommandResult::STATUS_FAILED);
  h.tick();
  CHECK(h.received[device_name(0)].size() == 1);
  CHECK(h.received[device_name(1)] == std::vector<std::string>{"retry/1", "retry/2", "retry/3"});
  CHECK(h.job("retry").counts().rejected() == 1);
  CHECK(h.job("retry").counts().failed() == 1);
  CHECK(h.job("retry").state() == v1::JOB_COMPLETED);
}

TEST_CASE("jobs: an offline device gets the job at its birth, and in-flight jobs are re-sent then") {
  Harness h(3, /*online=*/false);
  h.fleet.online[device_name(0)] = true;
  h.create(SpecBuilder("offline", 3).build());
  CHECK(h.notified() == 1);
  h.advance(10 * kMinute);
  CHECK(h.job("offline").counts().queued() == 2);
  CHECK(h.job("offline").counts().timed_out() == 1);  // the online one never answered
  h.fleet.online[device_name(1)] = true;
  h.engine.on_birth(device_name(1), h.now);
  h.tick();
  CHECK(h.received[device_name(1)] == std::vector<std::string>{"offline/1"});
  // A reconnect of a device with the job in flight re-sends the same attempt.
  h.engine.on_birth(device_name(1), h.now);
  h.tick();
  CHECK(h.received[device_name(1)] == std::vector<std::string>{"offline/1", "offline/1"});
  h.answer(device_name(1), "offline", 1, v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(h.job("offline").counts().succeeded() == 1);
  CHECK(h.job("offline").counts().queued() == 1);
  CHECK(h.job("offline").state() == v1::JOB_IN_PROGRESS);
}

TEST_CASE("jobs: cancel cancels queued executions and is audited; a restart resumes from the store") {
  Harness h(20);
  SpecBuilder b("resume", 20);
  b.spec.mutable_rollout()->set_rate_per_minute(60);  // one per second
  h.create(b.build());
  h.advance(9000);
  const auto notified = h.notified();
  CHECK(notified >= 9);
  CHECK(notified <= 11);
  h.answer(device_name(0), "resume", 1, v1::CommandResult::STATUS_SUCCEEDED);

  // A new engine over the same store: same counts, in-flight executions asked again.
  JobEngine again(Harness::options(), h.fleet.directory());
  REQUIRE(again.load(*h.store, h.now));
  const auto* r = again.find("resume");
  REQUIRE(r != nullptr);
  CHECK(r->counts().succeeded() == 1);
  CHECK(r->counts().in_progress() == notified - 1);
  CHECK(r->counts().queued() == 20 - notified);
  Batch b2;
  again.tick(h.now, b2);
  const auto resent = again.take_outgoing();
  CHECK(resent.size() >= notified - 1);

  Batch b3;
  auto canceled = again.cancel("resume", "tester", "changed my mind", h.now, b3);
  REQUIRE(canceled);
  CHECK(canceled->state() == v1::JOB_CANCELED);
  CHECK(canceled->counts().canceled() == 20 - notified);
  REQUIRE(h.store->write(b3, true));
  auto audit = read_audit(*h.store, 10);
  REQUIRE(audit);
  REQUIRE(audit->size() == 2);
  CHECK((*audit)[0].action() == "job.cancel");
  CHECK((*audit)[1].action() == "job.create");
  CHECK((*audit)[1].actor() == "tester");
}

TEST_CASE("jobs: creation rejects what it cannot run") {
  Harness h(3);
  Batch batch;
  SUBCASE("duplicate id") {
    h.create(SpecBuilder("dup", 3).build());
    auto r = h.engine.create(SpecBuilder("dup", 3).build(), "t", h.now, batch);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Errc::already_exists);
  }
  SUBCASE("expired document") {
    SpecBuilder b("old", 3);
    b.doc.set_expires_at_ms(h.now - 1);
    CHECK_FALSE(h.engine.create(b.build(), "t", h.now, batch));
  }
  SUBCASE("unsigned") {
    auto spec = SpecBuilder("nosig", 3).build();
    spec.mutable_signed_()->clear_signature();
    spec.clear_device_signatures();
    CHECK_FALSE(h.engine.create(spec, "t", h.now, batch));
  }
  SUBCASE("retries disagree with the document") {
    SpecBuilder b("tries", 3);
    b.spec.set_retries(2);
    CHECK_FALSE(h.engine.create(b.build(), "t", h.now, batch));
  }
  SUBCASE("continuous without a scoped signature") {
    SpecBuilder b("cont", 0);
    b.spec.mutable_target()->set_query("kind:computer");
    b.spec.mutable_target()->set_continuous(true);
    CHECK_FALSE(h.engine.create(b.build(), "t", h.now, batch));
  }
  SUBCASE("devices without a signature are left out and said so") {
    auto spec = SpecBuilder("partial", 3).build();
    spec.mutable_device_signatures()->erase(device_name(2));
    auto r = h.engine.create(spec, "t", h.now, batch);
    REQUIRE(r);
    CHECK(r->counts().in_progress() + r->counts().queued() == 2);
    CHECK(r->state_reason().find("no signature") != std::string::npos);
  }
}

TEST_CASE("jobs: a continuous job reaches devices that join its target later") {
  Harness h(5);
  h.fleet.matching = {device_name(0), device_name(1)};
  SpecBuilder b("cont", 0);
  b.doc.set_scope_tenant("acme");
  b.spec.mutable_target()->set_query("site:a");
  b.spec.mutable_target()->set_continuous(true);
  auto spec = b.build();
  spec.mutable_signed_()->set_target("*");
  h.create(spec);
  CHECK(h.notified() == 2);
  h.fleet.matching.insert(device_name(3));
  Batch batch;
  h.engine.on_devices_changed({device_name(3), device_name(4)}, h.now, batch);
  h.commit(batch);
  h.tick();
  CHECK(h.notified() == 3);
  CHECK(h.received[device_name(3)] == std::vector<std::string>{"cont/1"});
  for (int i : {0, 1, 3}) h.answer(device_name(i), "cont", 1, v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(h.job("cont").state() == v1::JOB_IN_PROGRESS);  // continuous: open until its end
}

TEST_CASE("jobs: a job that requires approval dispatches nothing until another operator approves it") {
  Harness h(5);
  SpecBuilder b("needs-ok", 5);
  b.spec.set_require_approval(true);
  auto rec = h.create(b.build());
  CHECK(rec.state() == v1::JOB_SCHEDULED);
  CHECK(rec.awaiting_approval());
  CHECK(rec.state_reason() == "awaiting approval");
  CHECK(rec.counts().queued() == 5);
  h.advance(10 * kMinute, kMinute);
  CHECK(h.notified() == 0);

  Batch b1;
  auto own = h.engine.approve("needs-ok", "tester", "", h.now, b1);
  REQUIRE_FALSE(own);
  CHECK(own.error().code == Errc::permission_denied);
  CHECK(own.error().message.find("another operator") != std::string::npos);
  auto nameless = h.engine.approve("needs-ok", "", "", h.now, b1);
  REQUIRE_FALSE(nameless);
  CHECK(nameless.error().code == Errc::permission_denied);
  auto missing = h.engine.approve("no-such-job", "alice", "", h.now, b1);
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == Errc::not_found);
  CHECK(b1.empty());
  CHECK(h.notified() == 0);

  auto approved = h.engine.approve("needs-ok", "alice", "change 4711", h.now, b1);
  REQUIRE_MESSAGE(approved, (approved ? "" : approved.error().message));
  h.commit(b1);
  CHECK(h.notified() == 5);
  CHECK(approved->state() == v1::JOB_IN_PROGRESS);
  CHECK_FALSE(approved->awaiting_approval());
  CHECK(approved->approved_by() == "alice");
  CHECK(approved->approved_at_ms() == h.now);
  CHECK(approved->state_reason().empty());

  Batch b2;
  auto twice = h.engine.approve("needs-ok", "bob", "", h.now, b2);
  REQUIRE_FALSE(twice);
  CHECK(twice.error().code == Errc::invalid_argument);

  auto audit = read_audit(*h.store, 10);
  REQUIRE(audit);
  REQUIRE(audit->size() == 2);
  CHECK((*audit)[0].action() == "job.approve");
  CHECK((*audit)[0].actor() == "alice");
  CHECK((*audit)[0].detail() == "change 4711");
  CHECK((*audit)[1].detail().find("awaiting approval") != std::string::npos);

  // The approval survives a restart.
  JobEngine again(Harness::options(), h.fleet.directory());
  REQUIRE(again.load(*h.store, h.now));
  REQUIRE(again.find("needs-ok") != nullptr);
  CHECK(again.find("needs-ok")->approved_by() == "alice");
  CHECK(again.find("needs-ok")->state() == v1::JOB_IN_PROGRESS);
}

TEST_CASE("jobs: a job still awaiting approval at its end time is canceled; cancel works before approval") {
  Harness h(4);
  SpecBuilder b("late", 4);
  b.spec.set_require_approval(true);
  b.spec.set_end_at_ms(h.now + 30 * kMinute);
  h.create(b.build());
  CHECK(h.engine.next_deadline(h.now) == h.now + 30 * kMinute);
  h.advance(29 * kMinute, kMinute);
  CHECK(h.job("late").state() == v1::JOB_SCHEDULED);
  h.advance(kMinute, kMinute);
  CHECK(h.job("late").state() == v1::JOB_CANCELED);
  CHECK(h.job("late").counts().canceled() == 4);
  CHECK(h.job("late").state_reason().find("not approved") != std::string::npos);
  CHECK(h.notified() == 0);
  Batch b1;
  CHECK_FALSE(h.engine.approve("late", "alice", "", h.now, b1));

  SpecBuilder b2("refused", 4, h.now);
  b2.spec.set_require_approval(true);
  h.create(b2.build());
  Batch b3;
  auto canceled = h.engine.cancel("refused", "alice", "not during the freeze", h.now, b3);
  REQUIRE(canceled);
  CHECK(canceled->counts().canceled() == 4);
  h.commit(b3);
  CHECK(h.notified() == 0);
}

TEST_CASE("jobs: the manager can require approval for some job types") {
  Fleet fleet;
  for (int i = 0; i < 3; ++i) fleet.online[device_name(i)] = true;
  auto options = Harness::options();
  options.require_approval = {"reboot"};
  JobEngine engine(options, fleet.directory());
  Batch batch;
  auto script = engine.create(SpecBuilder("script", 3).build(), "tester", kStart, batch);
  REQUIRE(script);
  CHECK(script->state() == v1::JOB_IN_PROGRESS);
  CHECK_FALSE(script->awaiting_approval());
  SpecBuilder reboot("reboot", 3);
  reboot.doc.set_type("reboot");
  auto gated = engine.create(reboot.build(), "tester", kStart, batch);
  REQUIRE(gated);
  CHECK(gated->state() == v1::JOB_SCHEDULED);
  CHECK(gated->awaiting_approval());
  options.require_approval = {"*"};
  JobEngine every(options, fleet.directory());
  auto any = every.create(SpecBuilder("any", 3).build(), "tester", kStart, batch);
  REQUIRE(any);
  CHECK(any->awaiting_approval());
}

TEST_CASE("jobs: the dispatch hooks run once per attempt and complete every command sent") {
  Harness h(3);
  std::map<std::string, int> dispatched;
  h.fleet.before = [&](const std::string& device, Batch& b) {
    ++dispatched[device];
    b.put(Space::policies, "device/" + device, "x");
  };
  int version = 0;
  h.fleet.complete = [&](const std::string& device, v1::Command& cmd) {
    cmd.mutable_config()->set_device_id(device);
    cmd.mutable_config()->set_version(fmt::format("v{}", ++version));
  };
  SpecBuilder b("hooks", 3);
  b.doc.set_max_attempts(2);
  b.spec.set_retries(1);
  h.create(b.build());
  CHECK(dispatched.size() == 3);
  CHECK(dispatched[device_name(0)] == 1);
  CHECK(h.store->get(Space::policies, "device/" + device_name(0)));
  CHECK_FALSE(h.config_received[device_name(0)].empty());
  // A re-drive re-sends (and completes) the command without dispatching again.
  const auto before = h.config_received[device_name(0)];
  h.advance(31'000);
  CHECK(h.received[device_name(0)].size() == 2);
  CHECK(h.config_received[device_name(0)] != before);
  CHECK(dispatched[device_name(0)] == 1);
  // A retry is a new dispatch.
  h.answer(device_name(0), "hooks", 1, v1::CommandResult::STATUS_FAILED);
  h.tick();
  CHECK(dispatched[device_name(0)] == 2);
  CHECK(h.received[device_name(0)].back() == "hooks/2");
}

TEST_CASE("jobs: jitter spreads notifications without busy ticks; one tick notifies a bounded number") {
  Harness h(40);
  SpecBuilder b("jittered", 40);
  b.spec.mutable_rollout()->set_jitter_ms(60'000);
  h.create(b.build());
  const auto first = h.notified();
  CHECK(first < 10);  // a share of 40 devices whose jitter is under a second or so
  // Nothing is due before the next device's jitter: the engine does not ask to tick now.
  const auto next = h.engine.next_deadline(h.now);
  CHECK(next > h.now);
  CHECK(next <= h.now + 60'000);
  h.advance(30'000);
  const auto half = h.notified();
  CHECK(half > first);
  CHECK(half < 40);
  h.advance(31'000);
  CHECK(h.notified() == 40);

  Fleet fleet;
  for (int i = 0; i < 25; ++i) fleet.online[device_name(i)] = true;
  auto options = Harness::options();
  options.max_dispatch_per_tick = 10;
  JobEngine engine(options, fleet.directory());
  Batch batch;
  REQUIRE(engine.create(SpecBuilder("bounded", 25).build(), "tester", kStart, batch));
  CHECK(engine.take_outgoing().size() == 10);
  CHECK(engine.next_deadline(kStart) == kStart);  // more are ready now
  engine.tick(kStart, batch);
  CHECK(engine.take_outgoing().size() == 10);
  engine.tick(kStart, batch);
  CHECK(engine.take_outgoing().size() == 5);
  CHECK(engine.find("bounded")->counts().in_progress() == 25);
}

TEST_CASE("jobs: a deleted device's unfinished executions end REMOVED and its late answer is ignored") {
  Harness h(3);
  SpecBuilder b("gone", 3);
  b.spec.mutable_rollout()->set_rate_per_minute(1);  // one device now, the others later
  h.create(b.build());
  REQUIRE(h.job("gone").counts().in_progress() == 1);
  const std::string notified = h.received.begin()->first;
  std::string queued;
  for (int i = 0; i < 3; ++i) {
    if (device_name(i) != notified) queued = device_name(i);
  }
  Batch batch;
  h.engine.on_device_deleted(notified, h.now, batch);
  h.engine.on_device_deleted(queued, h.now, batch);
  h.engine.on_device_deleted("never-targeted", h.now, batch);
  h.commit(batch);
  CHECK(h.job("gone").counts().removed() == 2);
  CHECK(h.job("gone").counts().in_progress() == 0);
  CHECK(h.job("gone").counts().queued() == 1);
  h.answer(notified, "gone", 1, v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(h.job("gone").counts().succeeded() == 0);
  h.advance(2 * kMinute, 1000);
  std::string last;
  for (int i = 0; i < 3; ++i) {
    if (device_name(i) != notified && device_name(i) != queued) last = device_name(i);
  }
  REQUIRE(h.received.contains(last));
  CHECK_FALSE(h.received.contains(queued));
  h.answer(last, "gone", 1, v1::CommandResult::STATUS_SUCCEEDED);
  CHECK(h.job("gone").state() == v1::JOB_COMPLETED);
  auto e = h.store->get(Space::jobs, JobEngine::execution_key("gone", queued));
  REQUIRE(e);
  v1::Execution removed;
  REQUIRE(removed.ParseFromString(*e));
  CHECK(removed.state() == v1::EXECUTION_REMOVED);
  CHECK(removed.status() == "device deleted");
}
