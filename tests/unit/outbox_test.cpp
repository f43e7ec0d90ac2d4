#include "flotilla/agent/outbox.hpp"

#include <signal.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace fs = std::filesystem;
using flotilla::Errc;
using flotilla::agent::Outbox;
using flotilla::agent::OutboxOptions;
using flotilla::agent::OutboxRecord;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-outbox-test.XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

OutboxOptions options_for(const TempDir& tmp, bool sync = false) {
  OutboxOptions o;
  o.dir = tmp.path() / "outbox";  // does not exist yet: open() creates it
  o.sync = sync;
  return o;
}

std::unique_ptr<Outbox> open_ok(const OutboxOptions& o) {
  auto r = Outbox::open(o);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : fmt::format("{}", r.error())));
  return std::move(r).value();
}

std::uint64_t append_ok(Outbox& box, std::string_view topic, std::string_view payload) {
  auto r = box.append(topic, payload);
  REQUIRE_MESSAGE(r.ok(), (r.ok() ? std::string() : fmt::format("{}", r.error())));
  return *r;
}

std::vector<std::uint64_t> ids_of(const std::vector<OutboxRecord>& records) {
  std::vector<std::uint64_t> ids;
  ids.reserve(records.size());
  for (const auto& r : records) ids.push_back(r.id);
  return ids;
}

std::vector<std::uint64_t> range(std::uint64_t first, std::uint64_t last) {
  std::vector<std::uint64_t> ids;
  for (std::uint64_t i = first; i <= last; ++i) ids.push_back(i);
  return ids;
}

std::uint64_t framed(std::string_view topic, std::string_view payload) {
  return Outbox::kRecordOverhead + topic.size() + payload.size();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, std::string_view data, std::ios::openmode mode = std::ios::trunc) {
  std::ofstream out(path, std::ios::binary | mode);
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  REQUIRE(out.good());
}

// Runs body in a forked child that then dies by SIGKILL with the outbox still open and no
// destructor run: the closest a unit test gets to a crash. body opens the outbox into `keep`
// (so that it outlives body) and returns 0, or an exit code on failure.
template <typename Body>
void run_in_child_and_kill(Body body) {
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    // No doctest macros in the child.
    std::unique_ptr<Outbox> keep;
    const int code = body(keep);
    if (code != 0) ::_exit(code);
    if (!keep) ::_exit(99);
    ::kill(::getpid(), SIGKILL);
    ::_exit(100);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  INFO("child exit code ", (WIFEXITED(status) ? WEXITSTATUS(status) : -1));
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
}

}  // namespace

TEST_CASE("crc32c matches the published check value") {
  CHECK(flotilla::agent::detail::crc32c("123456789") == 0xE3069283u);
  CHECK(flotilla::agent::detail::crc32c("6789", flotilla::agent::detail::crc32c("12345")) == 0xE3069283u);
  CHECK(flotilla::agent::detail::crc32c("") == 0u);
}

TEST_CASE("append returns increasing ids and pending lists records oldest first") {
  TempDir tmp;
  auto box = open_ok(options_for(tmp, /*sync=*/true));
  CHECK(fs::is_directory(tmp.path() / "outbox"));
  CHECK((fs::status(tmp.path() / "outbox").permissions() & fs::perms::all) == fs::perms::owner_all);
  CHECK(box->size() == 0);

  CHECK(append_ok(*box, "t/a", "one") == 1);
  CHECK(append_ok(*box, "t/b", "two") == 2);
  CHECK(append_ok(*box, "t/c", std::string("th\0ree", 6)) == 3);
  CHECK(box->size() == 3);
  CHECK(box->bytes() == framed("t/a", "one") + framed("t/b", "two") + framed("t/c", std::string("th\0ree", 6)));

  const auto all = box->pending(0, 10);
  REQUIRE(all.size() == 3);
  CHECK(all[0].topic == "t/a");
  CHECK(all[0].payload == "one");
  CHECK(all[2].payload == std::string("th\0ree", 6));
  CHECK(ids_of(box->pending(1, 10)) == std::vector<std::uint64_t>{2, 3});
  CHECK(ids_of(box->pending(0, 2)) == std::vector<std::uint64_t>{1, 2});
  CHECK(box->pending(3, 10).empty());
  CHECK(box->pending(0, 0).empty());
}

TEST_CASE("in-order acks advance the head, which persists across reopen") {
  TempDir tmp;
  const auto o = options_for(tmp);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 5; ++i) append_ok(*box, "t", fmt::format("r{}", i));
    CHECK(box->ack(1).ok());
    CHECK(box->ack(2).ok());
    CHECK(box->head_id() == 3);
    CHECK(box->size() == 3);
    CHECK(box->bytes() == 3 * framed("t", "r0"));
  }
  auto box = open_ok(o);
  CHECK(box->head_id() == 3);
  const auto records = box->pending(0, 10);
  CHECK(ids_of(records) == range(3, 5));
  CHECK(records.front().payload == "r2");
  CHECK(append_ok(*box, "t", "r5") == 6);
}

TEST_CASE("out-of-order acks advance the head over the acknowledged prefix") {
  TempDir tmp;
  const auto o = options_for(tmp);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 5; ++i) append_ok(*box, "t", "x");
    CHECK(box->ack(3).ok());
    CHECK(box->size() == 4);
    CHECK(box->bytes() == 4 * framed("t", "x"));
    CHECK(box->head_id() == 1);
    CHECK(ids_of(box->pending(0, 10)) == std::vector<std::uint64_t>{1, 2, 4, 5});
    CHECK(ids_of(box->pending(2, 1)) == std::vector<std::uint64_t>{4});

    // Duplicates and unknown ids are ignored.
    CHECK(box->ack(3).ok());
    CHECK(box->ack(0).ok());
    CHECK(box->ack(99).ok());
    CHECK(box->size() == 4);

    CHECK(box->ack(1).ok());
    CHECK(box->head_id() == 2);
    CHECK(box->ack(2).ok());
    CHECK(box->head_id() == 4);  // 3 was already acknowledged
    CHECK(box->ack(2).ok());
    CHECK(box->size() == 2);

    // An ack above the head is kept in memory only: after a restart the record comes again.
    CHECK(box->ack(5).ok());
    CHECK(ids_of(box->pending(0, 10)) == std::vector<std::uint64_t>{4});
  }
  auto box = open_ok(o);
  CHECK(box->head_id() == 4);
  CHECK(ids_of(box->pending(0, 10)) == std::vector<std::uint64_t>{4, 5});
}

TEST_CASE("ids keep increasing across reopen, even once everything was acknowledged and compacted") {
  TempDir tmp;
  auto o = options_for(tmp);
  o.compact_min_dead_bytes = 0;
  {
    auto box = open_ok(o);
    for (int i = 0; i < 3; ++i) append_ok(*box, "t", "payload");
    for (std::uint64_t id = 1; id <= 3; ++id) CHECK(box->ack(id).ok());
    CHECK(box->size() == 0);
    CHECK(fs::file_size(box->log_path()) == 24);  // compacted down to the file header
  }
  {
    auto box = open_ok(o);
    CHECK(box->size() == 0);
    CHECK(box->next_id() == 4);
    CHECK(append_ok(*box, "t", "after") == 4);
    CHECK(box->ack(4).ok());
  }
  // Even without the state file, the log header's id floor prevents reuse.
  fs::remove(o.dir / "outbox.state");
  auto box = open_ok(o);
  CHECK(append_ok(*box, "t", "again") >= 5);
}

TEST_CASE("the bound drops the oldest records and counts them durably") {
  TempDir tmp;
  auto o = options_for(tmp);
  const std::string payload(16, 'p');
  const std::uint64_t record = framed("t", payload);
  o.max_bytes = 10 * record;
  {
    auto box = open_ok(o);
    for (std::uint64_t i = 1; i <= 15; ++i) CHECK(append_ok(*box, "t", payload) == i);
    CHECK(box->size() == 10);
    CHECK(box->bytes() == 10 * record);
    CHECK(box->dropped_unreported() == 5);
    CHECK(ids_of(box->pending(0, 100)) == range(6, 15));
  }
  {
    auto box = open_ok(o);
    CHECK(box->dropped_unreported() == 5);
    CHECK(ids_of(box->pending(0, 100)) == range(6, 15));
    CHECK(box->mark_dropped_reported(3).ok());
    CHECK(box->dropped_unreported() == 2);
  }
  {
    auto box = open_ok(o);
    CHECK(box->dropped_unreported() == 2);
    CHECK(box->mark_dropped_reported(10).ok());  // saturates
    CHECK(box->dropped_unreported() == 0);
    // An acknowledged-out-of-order record is not live, so it is not dropped or counted.
    CHECK(box->ack(7).ok());
    CHECK(append_ok(*box, "t", payload) == 16);
    CHECK(box->dropped_unreported() == 0);
    CHECK(append_ok(*box, "t", payload) == 17);
    CHECK(box->dropped_unreported() == 1);  // 6 dropped; 7 was acknowledged
    CHECK(ids_of(box->pending(0, 100)) == range(8, 17));
  }
  {
    auto box = open_ok(o);
    CHECK(box->dropped_unreported() == 1);
  }
  // A smaller bound on the next start applies at open.
  o.max_bytes = 4 * record;
  auto box = open_ok(o);
  CHECK(ids_of(box->pending(0, 100)) == range(14, 17));
  CHECK(box->dropped_unreported() == 7);
}

TEST_CASE("a record larger than the bound is rejected") {
  TempDir tmp;
  auto o = options_for(tmp);
  o.max_bytes = 100;
  auto box = open_ok(o);
  const auto too_big = box->append("t", std::string(76, 'x'));  // 101 bytes framed
  REQUIRE_FALSE(too_big.ok());
  CHECK(too_big.error().code == Errc::too_large);
  CHECK(box->size() == 0);
  CHECK(append_ok(*box, "t", std::string(75, 'x')) == 1);  // exactly 100 bytes

  const auto no_topic = box->append("", "x");
  REQUIRE_FALSE(no_topic.ok());
  CHECK(no_topic.error().code == Errc::invalid_argument);
}

TEST_CASE("a torn or garbage tail is truncated and earlier records survive") {
  TempDir tmp;
  const auto o = options_for(tmp);
  const std::string payload = "reading";
  const std::uint64_t record = framed("t", payload);
  std::uint64_t full_size = 0;
  {
    auto box = open_ok(o);
    for (int i = 0; i < 5; ++i) append_ok(*box, "t", payload);
    full_size = fs::file_size(box->log_path());
  }
  const fs::path log = o.dir / "outbox.log";

  SUBCASE("torn last record") {
    fs::resize_file(log, full_size - 3);
    {
      auto box = open_ok(o);
      CHECK(ids_of(box->pending(0, 10)) == range(1, 4));
      CHECK(box->corrupt_records_skipped() == 1);
      CHECK(box->corrupt_bytes_truncated() == record - 3);
      CHECK(fs::file_size(log) == full_size - record);
      CHECK(append_ok(*box, "t", "new") > 5);
    }
    auto box = open_ok(o);
    CHECK(box->corrupt_records_skipped() == 0);
    CHECK(box->size() == 5);
  }
  SUBCASE("torn inside the record header") {
    fs::resize_file(log, full_size - record + 5);
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 10)) == range(1, 4));
    CHECK(box->corrupt_records_skipped() == 1);
  }
  SUBCASE("garbage appended") {
    const char garbage[] = "\0\0\0garbage FLR1 more garbage \xff\xfe";
    write_file(log, std::string(garbage, sizeof(garbage) - 1), std::ios::app);
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 10)) == range(1, 5));
    CHECK(box->corrupt_records_skipped() == 1);
    CHECK(fs::file_size(log) == full_size);
    CHECK(append_ok(*box, "t", "new") > 5);
  }
  SUBCASE("zero-filled tail") {
    write_file(log, std::string(4096, '\0'), std::ios::app);
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 10)) == range(1, 5));
    CHECK(fs::file_size(log) == full_size);
  }
}

TEST_CASE("corruption in the middle keeps the records before it and never reuses ids") {
  TempDir tmp;
  const auto o = options_for(tmp);
  const std::string payload(20, 'v');
  const std::uint64_t record = framed("t", payload);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 6; ++i) append_ok(*box, "t", payload);
  }
  const fs::path log = o.dir / "outbox.log";
  std::string bytes = read_file(log);
  bytes[24 + 2 * record + 30] ^= 0x01;  // a payload byte of record 3
  write_file(log, bytes);

  auto box = open_ok(o);
  CHECK(ids_of(box->pending(0, 10)) == range(1, 2));
  CHECK(box->corrupt_records_skipped() == 4);  // the bad one and the three intact ones behind it
  CHECK(box->corrupt_bytes_truncated() == 4 * record);
  CHECK(append_ok(*box, "t", "next") > 6);
}

TEST_CASE("a corrupt state file resets the head without losing records") {
  TempDir tmp;
  const auto o = options_for(tmp);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 3; ++i) append_ok(*box, "t", "x");
    CHECK(box->ack(1).ok());
  }
  write_file(o.dir / "outbox.state", "definitely not a state file");
  auto box = open_ok(o);
  CHECK(box->state_was_reset());
  CHECK(ids_of(box->pending(0, 10)) == range(1, 3));  // 1 is delivered again: at least once
  CHECK(append_ok(*box, "t", "x") == 4);
}

TEST_CASE("a log with a foreign header is refused and left untouched") {
  TempDir tmp;
  const auto o = options_for(tmp);
  fs::create_directory(o.dir);
  const std::string foreign(100, 'z');
  write_file(o.dir / "outbox.log", foreign);
  const auto r = Outbox::open(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::corruption);
  CHECK(read_file(o.dir / "outbox.log") == foreign);
}

TEST_CASE("compaction shrinks the log; records survive it and a reopen") {
  TempDir tmp;
  auto o = options_for(tmp);
  o.compact_min_dead_bytes = 4096;
  const auto payload_of = [](std::uint64_t id) { return fmt::format("{:0>200}", id); };
  std::uint64_t before = 0;
  {
    auto box = open_ok(o);
    for (std::uint64_t i = 1; i <= 100; ++i) append_ok(*box, "t/telemetry", payload_of(i));
    before = fs::file_size(box->log_path());
    CHECK(box->ack(90).ok());
    for (std::uint64_t id = 1; id <= 70; ++id) CHECK(box->ack(id).ok());
    CHECK(fs::file_size(box->log_path()) < before / 2);
    CHECK(box->log_file_bytes() == fs::file_size(box->log_path()));
    CHECK(box->size() == 29);
    // Appends after a compaction go to the new file.
    CHECK(append_ok(*box, "t/telemetry", payload_of(101)) == 101);
  }
  auto box = open_ok(o);
  CHECK(box->corrupt_records_skipped() == 0);
  const auto records = box->pending(0, 1000);
  std::vector<std::uint64_t> expected = range(71, 101);
  expected.erase(expected.begin() + (90 - 71));  // compacted away after its ack
  CHECK(ids_of(records) == expected);
  for (const auto& r : records) CHECK(r.payload == payload_of(r.id));
  CHECK(fs::file_size(box->log_path()) < before);
}

TEST_CASE("a second Outbox on the same directory is refused") {
  TempDir tmp;
  const auto o = options_for(tmp);
  auto first = open_ok(o);
  const auto second = Outbox::open(o);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code == Errc::unavailable);
}

TEST_CASE("an unusable directory is an io_error naming the path") {
  TempDir tmp;
  const fs::path file = tmp.path() / "plain-file";
  write_file(file, "x");
  OutboxOptions o;
  o.dir = file / "outbox";
  const auto r = Outbox::open(o);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::io_error);
  CHECK(r.error().message.find(file.string()) != std::string::npos);

  if (::geteuid() == 0) {
    MESSAGE("running as root: permission bits do not stop writes; read-only dir case skipped");
    return;
  }
  const fs::path ro = tmp.path() / "read-only";
  fs::create_directory(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  o.dir = ro;
  const auto denied = Outbox::open(o);
  fs::permissions(ro, fs::perms::owner_all);
  REQUIRE_FALSE(denied.ok());
  CHECK(denied.error().code == Errc::io_error);
  CHECK(denied.error().message.find(ro.string()) != std::string::npos);
}

TEST_CASE("records appended with sync survive a kill -9 of the writing process") {
  TempDir tmp;
  const auto o = options_for(tmp, /*sync=*/true);
  constexpr int kRecords = 200;
  run_in_child_and_kill([&](std::unique_ptr<Outbox>& keep) {
    auto opened = Outbox::open(o);
    if (!opened.ok()) return 2;
    auto& box = keep = std::move(opened).value();
    for (int i = 0; i < kRecords; ++i) {
      if (!box->append("t/crash", fmt::format("reading-{}", i)).ok()) return 3;
    }
    return 0;
  });

  auto box = open_ok(o);
  const auto records = box->pending(0, 1000);
  REQUIRE(records.size() == kRecords);
  for (int i = 0; i < kRecords; ++i) {
    CHECK(records[static_cast<std::size_t>(i)].id == static_cast<std::uint64_t>(i + 1));
    CHECK(records[static_cast<std::size_t>(i)].payload == fmt::format("reading-{}", i));
  }
  CHECK(box->corrupt_records_skipped() == 0);
  CHECK(append_ok(*box, "t/crash", "after") == kRecords + 1);
}

TEST_CASE("every single-bit flip and every truncation of a log is survived") {
  TempDir tmp;
  const auto o = options_for(tmp);
  const std::vector<std::string> payloads = {"a", "", "ccccc", "dddddddddd"};
  std::vector<std::uint64_t> ends;  // file offset where each record ends
  {
    auto box = open_ok(o);
    for (const auto& p : payloads) {
      append_ok(*box, "t/x", p);
      ends.push_back(box->log_file_bytes());
    }
  }
  const fs::path log = o.dir / "outbox.log";
  const std::string original = read_file(log);
  // Records wholly before `offset` must survive damage at `offset`.
  const auto intact_before = [&](std::size_t offset) {
    std::uint64_t n = 0;
    while (n < ends.size() && ends[n] <= offset) ++n;
    return n;
  };

  for (std::size_t offset = 0; offset < original.size(); ++offset) {
    CAPTURE(offset);
    std::string damaged = original;
    damaged[offset] = static_cast<char>(damaged[offset] ^ 0x10);
    write_file(log, damaged);
    fs::remove(o.dir / "outbox.state");
    auto r = Outbox::open(o);
    if (offset < 24) {  // the file header: refused, file left alone
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().code == Errc::corruption);
      CHECK(read_file(log) == damaged);
      continue;
    }
    REQUIRE(r.ok());
    const auto n = intact_before(offset);
    CHECK(ids_of((*r)->pending(0, 10)) == range(1, n));
    CHECK((*r)->corrupt_records_skipped() >= 1);
    CHECK(append_ok(**r, "t/x", "new") > payloads.size());
  }

  for (std::size_t length = 24; length < original.size(); ++length) {
    CAPTURE(length);
    write_file(log, std::string_view(original).substr(0, length));
    fs::remove(o.dir / "outbox.state");
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 10)) == range(1, intact_before(length)));
  }
}

TEST_CASE("every single-bit flip of the state file resets it instead of failing") {
  TempDir tmp;
  const auto o = options_for(tmp);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 3; ++i) append_ok(*box, "t", "x");
    CHECK(box->ack(1).ok());
  }
  const fs::path state = o.dir / "outbox.state";
  const std::string original = read_file(state);
  REQUIRE(original.size() == 48);
  for (std::size_t offset = 0; offset < original.size(); ++offset) {
    CAPTURE(offset);
    std::string damaged = original;
    damaged[offset] = static_cast<char>(damaged[offset] ^ 0x01);
    write_file(state, damaged);
    auto box = open_ok(o);
    CHECK(box->state_was_reset());
    CHECK(ids_of(box->pending(0, 10)) == range(1, 3));
  }
}

TEST_CASE("ack_batch acknowledges several ids with one head update") {
  TempDir tmp;
  const auto o = options_for(tmp);
  {
    auto box = open_ok(o);
    for (int i = 0; i < 6; ++i) append_ok(*box, "t", "x");
    const std::vector<std::uint64_t> ids = {3, 1, 42, 2, 5, 1};
    CHECK(box->ack_batch(ids).ok());
    CHECK(box->head_id() == 4);
    CHECK(ids_of(box->pending(0, 10)) == std::vector<std::uint64_t>{4, 6});
  }
  auto box = open_ok(o);
  CHECK(ids_of(box->pending(0, 10)) == range(4, 6));  // 5 was above the head: delivered again
}

TEST_CASE("head and drop count survive a kill -9 after acks and drops") {
  TempDir tmp;
  auto o = options_for(tmp, /*sync=*/true);
  const std::string payload = "telemetry";

  SUBCASE("drops recounted from the log") {
    o.max_bytes = 150 * framed("t", payload);
    run_in_child_and_kill([&](std::unique_ptr<Outbox>& keep) {
      auto opened = Outbox::open(o);
      if (!opened.ok()) return 2;
      auto& box = keep = std::move(opened).value();
      for (int i = 0; i < 100; ++i) {
        if (!box->append("t", payload).ok()) return 3;
      }
      for (std::uint64_t id = 1; id <= 10; ++id) {
        if (!box->ack(id).ok()) return 4;
      }
      for (int i = 0; i < 100; ++i) {
        if (!box->append("t", payload).ok()) return 5;
      }
      return box->dropped_unreported() == 40 ? 0 : 6;
    });
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 1000)) == range(51, 200));
    CHECK(box->dropped_unreported() == 40);
    CHECK(append_ok(*box, "t", payload) == 201);
  }
  SUBCASE("drops persisted before compaction removes the dropped records") {
    o.max_bytes = 10 * framed("t", payload);
    o.compact_min_dead_bytes = 0;
    run_in_child_and_kill([&](std::unique_ptr<Outbox>& keep) {
      auto opened = Outbox::open(o);
      if (!opened.ok()) return 2;
      auto& box = keep = std::move(opened).value();
      for (int i = 0; i < 35; ++i) {
        if (!box->append("t", payload).ok()) return 3;
      }
      // Compacted at least once: the log holds fewer than the 35 records appended.
      return box->log_file_bytes() < 20 * framed("t", payload) ? 0 : 4;
    });
    auto box = open_ok(o);
    CHECK(ids_of(box->pending(0, 1000)) == range(26, 35));
    CHECK(box->dropped_unreported() == 25);
  }
}
