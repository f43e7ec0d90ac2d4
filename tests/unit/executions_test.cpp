#include "flotilla/agent/executions.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace fs = std::filesystem;
using namespace std::string_literals;
using flotilla::Errc;
using flotilla::agent::ExecRecord;
using flotilla::agent::ExecState;
using flotilla::agent::ExecutionStore;
using flotilla::agent::ExecutionStoreOptions;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-exec-test.XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

ExecutionStoreOptions options_for(const TempDir& tmp) {
  ExecutionStoreOptions o;
  o.dir = tmp.path() / "state" / "executions";  // does not exist yet: open() creates it
  return o;
}

std::unique_ptr<ExecutionStore> open_ok(const ExecutionStoreOptions& o) {
  auto r = ExecutionStore::open(o);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : fmt::format("{}", r.error())));
  return std::move(r).value();
}

void started(ExecutionStore& s, const std::string& job, std::uint32_t attempt, std::int64_t now,
             std::int64_t expires = 1'000'000'000) {
  auto st = s.mark_started(job, attempt, expires, now);
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? std::string() : fmt::format("{}", st.error())));
}

void finished(ExecutionStore& s, const std::string& job, std::uint32_t attempt, std::string result, std::int64_t now) {
  auto st = s.mark_finished(job, attempt, std::move(result), now);
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? std::string() : fmt::format("{}", st.error())));
}

std::vector<std::string> interrupted_ids(const ExecutionStore& s) {
  std::vector<std::string> out;
  for (const auto* r : s.interrupted()) out.push_back(fmt::format("{}/{}", r->job_id, r->attempt));
  std::sort(out.begin(), out.end());
  return out;
}

void flip_byte(const fs::path& path, std::uint64_t offset) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x20);
  f.seekp(static_cast<std::streamoff>(offset));
  f.write(&c, 1);
  REQUIRE(f.good());
}

// What the store should hold, to compare with after reopening.
struct Expected {
  std::uint32_t attempt;
  ExecState state;
  std::string result;
};

void check_matches(const ExecutionStore& s, const std::map<std::string, Expected>& model) {
  CHECK(s.size() == model.size());
  for (const auto& entry : model) {
    const std::string& job = entry.first;
    const Expected& e = entry.second;
    CAPTURE(job);
    const ExecRecord* r = s.find(job);
    REQUIRE(r != nullptr);
    CHECK(r->job_id == job);
    CHECK(r->attempt == e.attempt);
    CHECK(r->state == e.state);
    CHECK(r->result == e.result);
  }
}

}  // namespace

TEST_SUITE("executions") {

TEST_CASE("executions: records survive a reopen; unfinished ones are reported interrupted") {
  TempDir tmp;
  const auto o = options_for(tmp);
  const std::string binary_result = "ok\0\xff result"s;
  {
    auto s = open_ok(o);
    CHECK(s->size() == 0);
    CHECK(s->find("job-a") == nullptr);
    CHECK(s->horizon_ms() == 0);
    started(*s, "job-a", 1, 1000, 5000);
    finished(*s, "job-a", 1, binary_result, 1100);
    started(*s, "job-b", 1, 1200);
    started(*s, "job-c", 1, 1300);
    finished(*s, "job-c", 1, "failed", 1400);
    started(*s, "job-c", 2, 1500);
    finished(*s, "job-c", 2, "succeeded", 1600);
    CHECK(s->interrupted().empty());  // nothing was unfinished at open

    // The store refuses what would run an attempt twice, or record an outcome out of turn.
    CHECK(s->mark_started("job-a", 1, 5000, 1700).error().code == Errc::already_exists);
    CHECK(s->mark_started("job-c", 1, 5000, 1700).error().code == Errc::already_exists);
    CHECK(s->mark_started("job-b", 1, 5000, 1700).error().code == Errc::already_exists);
    CHECK(s->mark_finished("job-a", 1, "again", 1700).error().code == Errc::already_exists);
    CHECK(s->mark_finished("job-b", 2, "x", 1700).error().code == Errc::invalid_argument);
    CHECK(s->mark_finished("job-z", 1, "x", 1700).error().code == Errc::not_found);
    CHECK(s->mark_started("", 1, 5000, 1700).error().code == Errc::invalid_argument);
    CHECK(s->mark_started(std::string(129, 'j'), 1, 5000, 1700).error().code == Errc::invalid_argument);
    CHECK(s->mark_started("job-d", 0, 5000, 1700).error().code == Errc::invalid_argument);
    CHECK(s->mark_finished("job-b", 1, std::string(ExecutionStore::kMaxRecordBytes, 'r'), 1700).error().code ==
          Errc::too_large);
    started(*s, std::string(128, 'j'), 1, 1800);

    // A second store on the same directory is refused while this one is open.
    auto second = ExecutionStore::open(o);
    REQUIRE_FALSE(second.ok());
    CHECK(second.error().code == Errc::unavailable);
  }
  auto s = open_ok(o);
  CHECK(s->corrupt_records_skipped() == 0);
  CHECK(s->torn_bytes_truncated() == 0);
  check_matches(*s, {{"job-a", {1, ExecState::finished, binary_result}},
                     {"job-b", {1, ExecState::started, ""}},
                     {"job-c", {2, ExecState::finished, "succeeded"}},
                     {std::string(128, 'j'), {1, ExecState::started, ""}}});
  const ExecRecord* a = s->find("job-a");
  REQUIRE(a != nullptr);
  CHECK(a->updated_ms == 1100);
  CHECK(a->expires_ms == 5000);
  CHECK(interrupted_ids(*s) == std::vector<std::string>{std::string(128, 'j') + "/1", "job-b/1"});
  // Once finished (as interrupted), an execution leaves the list.
  finished(*s, "job-b", 1, "interrupted", 2000);
  CHECK(interrupted_ids(*s) == std::vector<std::string>{std::string(128, 'j') + "/1"});
  CHECK(s->mark_started("job-b", 1, 5000, 2100).error().code == Errc::already_exists);
}

TEST_CASE("executions: a torn tail is truncated and every complete record is kept") {
  for (const std::uint64_t cut : {1, 3, 10, 30}) {
    CAPTURE(cut);
    TempDir tmp;
    const auto o = options_for(tmp);
    std::uint64_t before_last = 0;
    std::uint64_t full = 0;
    {
      auto s = open_ok(o);
      for (int i = 0; i < 9; ++i) started(*s, fmt::format("job-{}", i), 1, 100 + i);
      finished(*s, "job-3", 1, "result of job 3", 200);
      before_last = s->log_file_bytes();
      started(*s, "job-9", 1, 300);
      full = s->log_file_bytes();
    }
    REQUIRE(fs::file_size(o.dir / "executions.log") == full);
    fs::resize_file(o.dir / "executions.log", full - cut);

    auto s = open_ok(o);
    CHECK(s->torn_bytes_truncated() == full - cut - before_last);
    CHECK(s->corrupt_records_skipped() == 0);
    CHECK(fs::file_size(o.dir / "executions.log") == before_last);
    CHECK(s->size() == 9);
    CHECK(s->find("job-9") == nullptr);
    for (int i = 0; i < 9; ++i) CHECK(s->find(fmt::format("job-{}", i)) != nullptr);
    REQUIRE(s->find("job-3") != nullptr);
    CHECK(s->find("job-3")->result == "result of job 3");
    // The torn record's mark_started() never returned: the job may start now.
    started(*s, "job-9", 1, 400);
    s.reset();
    auto again = open_ok(o);
    CHECK(again->torn_bytes_truncated() == 0);
    CHECK(again->size() == 10);
  }
}

TEST_CASE("executions: a damaged record in the middle is skipped and counted, the rest kept, the horizon raised") {
  TempDir tmp;
  const auto o = options_for(tmp);
  std::vector<std::uint64_t> offsets;  // where each job's record starts
  {
    auto s = open_ok(o);
    for (int i = 0; i < 10; ++i) {
      offsets.push_back(s->log_file_bytes());
      started(*s, fmt::format("job-{}", i), 1, 1000 + i);
    }
  }
  flip_byte(o.dir / "executions.log", offsets[5] + 20);  // inside job-5's updated_ms

  auto s = open_ok(o);
  CHECK(s->corrupt_records_skipped() == 1);
  CHECK(s->torn_bytes_truncated() == 0);
  CHECK(s->size() == 9);
  CHECK(s->find("job-5") == nullptr);
  for (int i = 0; i < 10; ++i) {
    if (i != 5) CHECK(s->find(fmt::format("job-{}", i)) != nullptr);
  }
  // The lost record could have been any execution up to the latest one recorded.
  CHECK(s->horizon_ms() == 1010);
  s.reset();

  // The damage was rewritten away at once; the horizon stays.
  auto again = open_ok(o);
  CHECK(again->corrupt_records_skipped() == 0);
  CHECK(again->size() == 9);
  CHECK(again->horizon_ms() == 1010);

  // A damaged magic (the resync has to scan) and a damaged length are handled the same way.
  TempDir tmp2;
  const auto o2 = options_for(tmp2);
  offsets.clear();
  {
    auto w = open_ok(o2);
    for (int i = 0; i < 6; ++i) {
      offsets.push_back(w->log_file_bytes());
      started(*w, fmt::format("job-{}", i), 1, 1000 + i);
      finished(*w, fmt::format("job-{}", i), 1, std::string(100, static_cast<char>('a' + i)), 1100 + i);
    }
  }
  flip_byte(o2.dir / "executions.log", offsets[1]);      // magic of job-1's started record
  flip_byte(o2.dir / "executions.log", offsets[3] + 9);  // length of job-3's started record
  auto w = open_ok(o2);
  CHECK(w->corrupt_records_skipped() == 2);
  CHECK(w->size() == 6);  // the finished records of job-1 and job-3 are intact
  REQUIRE(w->find("job-3") != nullptr);
  CHECK(w->find("job-3")->state == ExecState::finished);
  CHECK(w->find("job-3")->result == std::string(100, 'd'));
  CHECK(w->horizon_ms() == 1106);
}

TEST_CASE("executions: a log that is not an execution log is refused and left untouched") {
  TempDir tmp;
  const auto o = options_for(tmp);
  fs::create_directories(o.dir);
  {
    std::ofstream f(o.dir / "executions.log", std::ios::binary);
    f << "this is not an execution log at all";
  }
  auto r = ExecutionStore::open(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::corruption);
  CHECK(fs::file_size(o.dir / "executions.log") == 35);

  // A damaged header loses the horizon: refused too.
  TempDir tmp2;
  const auto o2 = options_for(tmp2);
  open_ok(o2).reset();
  flip_byte(o2.dir / "executions.log", 20);
  auto r2 = ExecutionStore::open(o2);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().code == Errc::corruption);

  ExecutionStoreOptions bad = o;
  bad.max_records = 0;
  CHECK(ExecutionStore::open(bad).error().code == Errc::invalid_argument);
  bad = o;
  bad.dir.clear();
  CHECK(ExecutionStore::open(bad).error().code == Errc::invalid_argument);
}

TEST_CASE("executions: compaction keeps every live record and bounds the log") {
  TempDir tmp;
  auto o = options_for(tmp);
  o.compact_min_bytes = 0;
  o.sync = false;  // what is checked is the content; the durable path runs in the other cases
  std::map<std::string, Expected> model;
  {
    auto s = open_ok(o);
    std::int64_t now = 1;
    for (int round = 0; round < 5; ++round) {
      for (int j = 0; j < 40; ++j) {
        const std::string job = fmt::format("job-{}", j);
        const auto attempt = static_cast<std::uint32_t>(round + 1);
        started(*s, job, attempt, ++now);
        if (j % 7 == 3 && round == 4) {
          model[job] = {attempt, ExecState::started, ""};
          continue;
        }
        const std::string result = fmt::format("round {} of {}: {}", round, job, std::string(j * 3, 'x'));
        finished(*s, job, attempt, result, ++now);
        model[job] = {attempt, ExecState::finished, result};
      }
    }
    CHECK(s->compactions() > 0);
    CHECK(s->log_file_bytes() <= 2 * (s->live_bytes() + 32) + 1024);
    check_matches(*s, model);
  }
  auto s = open_ok(o);
  check_matches(*s, model);
  CHECK(s->interrupted().size() == 6);  // jobs 3, 10, 17, 24, 31, 38
  CHECK(fs::file_size(o.dir / "executions.log") == s->log_file_bytes());
  CHECK_FALSE(fs::exists(o.dir / "executions.log.tmp"));
}

TEST_CASE("executions: pruning respects expiry, unfinished records and the bound, and raises a durable horizon") {
  TempDir tmp;
  auto o = options_for(tmp);
  o.max_records = 2;
  o.retention = std::chrono::milliseconds(100'000);
  {
    auto s = open_ok(o);
    // Five finished jobs: three expire at 10'000, two at 20'000. Over the bound, but none may
    // go before it expires.
    for (int i = 0; i < 5; ++i) {
      const std::string job = fmt::format("job-{}", i);
      started(*s, job, 1, 100 + 10 * i, i < 3 ? 10'000 : 20'000);
      finished(*s, job, 1, "done", 105 + 10 * i);
    }
    // One that never finishes, expired long ago.
    started(*s, "stuck", 1, 200, 300);
    CHECK(s->size() == 6);
    REQUIRE(s->prune(9'999));
    CHECK(s->size() == 6);
    CHECK(s->horizon_ms() == 0);

    // Expired but within retention: only the bound applies, to expired finished records; the
    // bound cannot be reached without dropping unexpired or unfinished ones, which stay.
    REQUIRE(s->prune(10'000));
    CHECK(s->size() == 3);
    for (const char* gone : {"job-0", "job-1", "job-2"}) CHECK(s->find(gone) == nullptr);
    for (const char* kept : {"job-3", "job-4", "stuck"}) CHECK(s->find(kept) != nullptr);
    CHECK(s->horizon_ms() == 126);  // job-2's last update + 1
  }
  {
    // The horizon survives a reopen although no compaction ran (the records come back from the
    // log and are pruned again).
    auto s = open_ok(o);
    CHECK(s->horizon_ms() == 126);
    CHECK(s->compactions() == 0);
    REQUIRE(s->prune(10'000));
    CHECK(s->size() == 3);
    CHECK(s->horizon_ms() == 126);

    // Past retention and expiry every finished record goes; the unfinished one never does.
    REQUIRE(s->prune(1'000'000));
    CHECK(s->size() == 1);
    CHECK(s->find("stuck") != nullptr);
    CHECK(s->horizon_ms() == 146);  // job-4's last update + 1

    // A job expiring later is kept past retention until it expires.
    started(*s, "late", 1, 1'000'000, 5'000'000);
    finished(*s, "late", 1, "done", 1'000'001);
    REQUIRE(s->prune(2'000'000));
    CHECK(s->find("late") != nullptr);
    REQUIRE(s->prune(5'000'000));
    CHECK(s->find("late") == nullptr);
    CHECK(s->horizon_ms() == 1'000'002);
  }
  auto s = open_ok(o);
  CHECK(s->horizon_ms() == 1'000'002);
  REQUIRE(s->prune(5'000'000));
  CHECK(s->size() == 1);
}

TEST_CASE("executions: after kill -9, every record reported durable is there") {
  // Killed after a different number of marks each round, so that some kills land inside a
  // compaction.
  for (const std::size_t kill_after : {150, 700, 1900, 3100}) {
    CAPTURE(kill_after);
    TempDir tmp;
    auto o = options_for(tmp);
    o.compact_min_bytes = 4096;  // a compaction every few dozen marks
    o.sync = false;              // a killed process loses no written data; only a power loss would
    std::array<int, 2> fds{};
    REQUIRE(::pipe(fds.data()) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::close(fds[0]);
      auto r = ExecutionStore::open(o);
      if (!r) ::_exit(2);
      auto& s = **r;
      for (std::uint32_t i = 0;; ++i) {
        const std::string job = fmt::format("job-{}", i % 50);
        const std::uint32_t attempt = i / 50 + 1;
        const auto now = static_cast<std::int64_t>(i) * 2;
        if (!s.mark_started(job, attempt, 1'000'000'000, now)) ::_exit(3);
        std::array<std::uint32_t, 2> msg{i, 1};
        if (::write(fds[1], msg.data(), sizeof(msg)) != sizeof(msg)) ::_exit(4);
        if (!s.mark_finished(job, attempt, fmt::format("result {}", i), now + 1)) ::_exit(5);
        msg[1] = 2;
        if (::write(fds[1], msg.data(), sizeof(msg)) != sizeof(msg)) ::_exit(4);
      }
    }
    ::close(fds[1]);
    // job -> (attempt, finished) as last reported.
    std::map<std::string, std::pair<std::uint32_t, bool>> reported;
    std::size_t messages = 0;
    auto take = [&](const std::array<std::uint32_t, 2>& msg) {
      reported[fmt::format("job-{}", msg[0] % 50)] = {msg[0] / 50 + 1, msg[1] == 2};
      ++messages;
    };
    std::array<std::uint32_t, 2> msg{};
    while (messages < kill_after) {
      const ssize_t n = ::read(fds[0], msg.data(), sizeof(msg));
      REQUIRE(n == static_cast<ssize_t>(sizeof(msg)));
      take(msg);
    }
    REQUIRE(::kill(child, SIGKILL) == 0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    for (;;) {  // what the child reported before it died
      const ssize_t n = ::read(fds[0], msg.data(), sizeof(msg));
      if (n != static_cast<ssize_t>(sizeof(msg))) break;
      take(msg);
    }
    ::close(fds[0]);

    auto s = open_ok(o);
    CHECK(s->corrupt_records_skipped() == 0);
    CHECK(s->size() == reported.size());
    for (const auto& entry : reported) {
      const std::string& job = entry.first;
      const auto& rep = entry.second;
      CAPTURE(job);
      const ExecRecord* r = s->find(job);
      REQUIRE(r != nullptr);
      // The store may be one step ahead of the report (killed between the write and the report),
      // never behind it.
      const bool at_least = r->attempt > rep.first ||
                            (r->attempt == rep.first && (!rep.second || r->state == ExecState::finished));
      CHECK(at_least);
      CHECK(r->attempt <= rep.first + 1);
      if (r->attempt == rep.first && r->state == ExecState::finished) {
        CHECK(r->result == fmt::format("result {}", (rep.first - 1) * 50 + std::stoul(job.substr(4))));
      }
    }
  }
}

}  // TEST_SUITE("executions")
