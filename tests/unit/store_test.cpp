#include "flotilla/manager/store.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace fs = std::filesystem;
using flotilla::Errc;
using flotilla::Result;
using flotilla::manager::Batch;
using flotilla::manager::Space;
using flotilla::manager::Store;
using flotilla::manager::StoreOptions;

namespace {

// A fresh directory under the system temp dir, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-store-test.XXXXXX").string();
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

std::string describe(const flotilla::Error& e) { return fmt::format("{}", e); }

template <typename T>
std::string describe(const Result<T>& r) {
  return r.ok() ? std::string("ok") : describe(r.error());
}

std::unique_ptr<Store> open_ok(const fs::path& dir, const StoreOptions& options = {}) {
  auto r = flotilla::manager::open_rocksdb_store(dir, options);
  REQUIRE_MESSAGE(r.ok(), describe(r));
  return std::move(r).value();
}

void write_ok(Store& store, const Batch& batch, bool sync = false) {
  const auto status = store.write(batch, sync);
  REQUIRE_MESSAGE(status.ok(), describe(status));
}

std::string get_ok(const Store& store, Space space, std::string_view key) {
  auto r = store.get(space, key);
  REQUIRE_MESSAGE(r.ok(), fmt::format("get {:?}: {}", key, describe(r)));
  return std::move(r).value();
}

bool missing(const Store& store, Space space, std::string_view key) {
  const auto r = store.get(space, key);
  return !r.ok() && r.error().code == Errc::not_found;
}

using Entries = std::vector<std::pair<std::string, std::string>>;

Entries scan_all(const Store& store, Space space, std::string_view prefix) {
  Entries seen;
  const auto status = store.scan(space, prefix, [&](std::string_view key, std::string_view value) {
    seen.emplace_back(key, value);
    return true;
  });
  REQUIRE_MESSAGE(status.ok(), describe(status));
  return seen;
}

std::vector<std::string> keys_of(const Entries& entries) {
  std::vector<std::string> keys;
  for (const auto& entry : entries) keys.push_back(entry.first);
  return keys;
}

// Keys around the prefixes the scan cases use (each stored as "v:" + key in devices), and one key
// in inventory. Returns the device keys.
std::vector<std::string> put_scan_keys(Store& store) {
  std::vector<std::string> keys = {"dev-2", "dev-10",  "dev",         "de",       "dew",         "dev-1",
                                   "dex",   "dev\xff", "dev\xff\xff", "\xff\xff", "\xff\xff\x01"};
  Batch batch;
  for (const auto& key : keys) batch.put(Space::devices, key, "v:" + key);
  batch.put(Space::inventory, "dev-3", "other space");
  write_ok(store, batch);
  return keys;
}

using Factory = std::function<std::unique_ptr<Store>()>;

// The Store contract, shared by every implementation.
void check_store_contract(const Factory& make) {
  auto store = make();
  REQUIRE(store != nullptr);

  SUBCASE("get of a missing key is not_found") {
    const auto r = store->get(Space::devices, "nobody");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::not_found);
    CHECK(r.error().message.find("nobody") != std::string::npos);
  }

  SUBCASE("put, get and erase in one batch") {
    Batch first;
    first.put(Space::devices, "dev-a", "record a");
    first.put(Space::devices, "dev-b", "record b");
    first.put(Space::inventory, "dev-a", "inventory a");
    write_ok(*store, first, true);
    CHECK(get_ok(*store, Space::devices, "dev-a") == "record a");
    CHECK(get_ok(*store, Space::devices, "dev-b") == "record b");
    CHECK(get_ok(*store, Space::inventory, "dev-a") == "inventory a");
    CHECK(missing(*store, Space::telemetry, "dev-a"));

    Batch second;
    second.erase(Space::devices, "dev-a");
    second.put(Space::devices, "dev-b", "record b2");
    second.put(Space::telemetry, "dev-b", "");
    second.erase(Space::devices, "never-existed");
    write_ok(*store, second);
    CHECK(missing(*store, Space::devices, "dev-a"));
    CHECK(get_ok(*store, Space::inventory, "dev-a") == "inventory a");
    CHECK(get_ok(*store, Space::devices, "dev-b") == "record b2");
    CHECK(get_ok(*store, Space::telemetry, "dev-b").empty());
  }

  SUBCASE("later operations in a batch win") {
    Batch batch;
    batch.put(Space::devices, "k", "1");
    batch.put(Space::devices, "k", "2");
    batch.put(Space::devices, "gone", "x");
    batch.erase(Space::devices, "gone");
    write_ok(*store, batch);
    CHECK(get_ok(*store, Space::devices, "k") == "2");
    CHECK(missing(*store, Space::devices, "gone"));
  }

  SUBCASE("a batch with an invalid operation changes nothing") {
    Batch batch;
    batch.put(Space::devices, "dev-a", "record a");
    batch.put(static_cast<Space>(99), "dev-a", "nowhere");
    const auto status = store->write(batch, true);
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().code == Errc::invalid_argument);
    CHECK(missing(*store, Space::devices, "dev-a"));
  }

  SUBCASE("an empty batch is accepted") {
    write_ok(*store, Batch{}, true);
    write_ok(*store, Batch{}, false);
  }

  SUBCASE("keys and values are bytes") {
    const std::string key("a\0b", 3);
    const std::string value("\0\xff\x01", 3);
    Batch batch;
    batch.put(Space::meta, key, value);
    write_ok(*store, batch);
    CHECK(get_ok(*store, Space::meta, key) == value);
    CHECK(missing(*store, Space::meta, "a"));
  }

  SUBCASE("scan visits keys with the prefix in key order") {
    const auto keys = put_scan_keys(*store);

    const auto dev = scan_all(*store, Space::devices, "dev");
    CHECK(keys_of(dev) == std::vector<std::string>{"dev", "dev-1", "dev-10", "dev-2", "dev\xff", "dev\xff\xff"});
    for (const auto& [key, value] : dev) CHECK(value == "v:" + key);

    CHECK(keys_of(scan_all(*store, Space::devices, "dev-1")) == std::vector<std::string>{"dev-1", "dev-10"});
    CHECK(keys_of(scan_all(*store, Space::devices, "dev\xff")) == std::vector<std::string>{"dev\xff", "dev\xff\xff"});
    CHECK(keys_of(scan_all(*store, Space::devices, "\xff\xff")) ==
          std::vector<std::string>{"\xff\xff", "\xff\xff\x01"});
    CHECK(scan_all(*store, Space::devices, "zzz").empty());
    CHECK(scan_all(*store, Space::telemetry, "").empty());
    CHECK(keys_of(scan_all(*store, Space::inventory, "")) == std::vector<std::string>{"dev-3"});

    const auto all = scan_all(*store, Space::devices, "");
    REQUIRE(all.size() == keys.size());
    CHECK(all.front().first == "de");
    CHECK(all.back().first == "\xff\xff\x01");
    for (std::size_t i = 1; i < all.size(); ++i) CHECK(all[i - 1].first < all[i].first);
  }

  SUBCASE("scan_reverse visits keys with the prefix in reverse key order, reading only what it visits") {
    const auto keys = put_scan_keys(*store);
    auto reverse = [&](Space space, std::string_view prefix, std::size_t limit = 100) {
      std::vector<std::string> seen;
      const auto status = store->scan_reverse(space, prefix, [&](std::string_view key, std::string_view value) {
        CHECK(value == (space == Space::devices ? "v:" + std::string(key) : std::string("other space")));
        seen.emplace_back(key);
        return seen.size() < limit;
      });
      REQUIRE_MESSAGE(status.ok(), describe(status));
      return seen;
    };
    CHECK(reverse(Space::devices, "dev") ==
          std::vector<std::string>{"dev\xff\xff", "dev\xff", "dev-2", "dev-10", "dev-1", "dev"});
    CHECK(reverse(Space::devices, "dev-1") == std::vector<std::string>{"dev-10", "dev-1"});
    CHECK(reverse(Space::devices, "\xff\xff") == std::vector<std::string>{"\xff\xff\x01", "\xff\xff"});
    CHECK(reverse(Space::devices, "d", 2) == std::vector<std::string>{"dex", "dew"});
    CHECK(reverse(Space::devices, "zzz").empty());
    CHECK(reverse(Space::devices, "a").empty());
    CHECK(reverse(Space::telemetry, "").empty());
    CHECK(reverse(Space::inventory, "") == std::vector<std::string>{"dev-3"});
    auto all = reverse(Space::devices, "");
    REQUIRE(all.size() == keys.size());
    CHECK(all.front() == "\xff\xff\x01");
    CHECK(all.back() == "de");
  }

  SUBCASE("scan stops when visit returns false") {
    Batch batch;
    for (int i = 0; i < 10; ++i) batch.put(Space::telemetry, fmt::format("t-{}", i), "x");
    write_ok(*store, batch);
    std::vector<std::string> seen;
    const auto status = store->scan(Space::telemetry, "t-", [&](std::string_view key, std::string_view) {
      seen.emplace_back(key);
      return seen.size() < 3;
    });
    REQUIRE(status.ok());
    CHECK(seen == std::vector<std::string>{"t-0", "t-1", "t-2"});
  }

  SUBCASE("visit may write; the scan sees the store as it was when it began") {
    Batch batch;
    batch.put(Space::devices, "a-1", "x");
    batch.put(Space::devices, "a-2", "x");
    write_ok(*store, batch);
    std::vector<std::string> seen;
    const auto status = store->scan(Space::devices, "a-", [&](std::string_view key, std::string_view) {
      seen.emplace_back(key);
      Batch more;
      more.put(Space::devices, std::string(key) + "-child", "y");
      more.erase(Space::devices, "a-2");
      return store->write(more, false).ok();
    });
    REQUIRE(status.ok());
    CHECK(seen == std::vector<std::string>{"a-1", "a-2"});
    CHECK(keys_of(scan_all(*store, Space::devices, "a-")) == std::vector<std::string>{"a-1", "a-1-child", "a-2-child"});
  }

  SUBCASE("an invalid space is refused") {
    const auto r = store->get(static_cast<Space>(-1), "k");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
    const auto status = store->scan(static_cast<Space>(99), "",
                                    [](std::string_view, std::string_view) { return true; });
    REQUIRE_FALSE(status.ok());
    CHECK(status.error().code == Errc::invalid_argument);
  }
}

std::string batch_key(int i) { return fmt::format("dev-{:04}", i); }

// Runs in the forked child: writes `count` synced batches and reports each one on `fd` once
// write() has returned. Never returns.
[[noreturn]] void write_batches_then_wait(const fs::path& dir, int count, int fd) {
  auto opened = flotilla::manager::open_rocksdb_store(dir);
  if (!opened.ok()) ::_exit(2);
  auto& store = *opened.value();
  for (int i = 0; i < count; ++i) {
    Batch batch;
    batch.put(Space::devices, batch_key(i), fmt::format("record {}", i));
    batch.put(Space::inventory, batch_key(i), fmt::format("inventory {}", i));
    batch.put(Space::meta, "crash.last", std::to_string(i));
    if (!store.write(batch, /*sync=*/true).ok()) ::_exit(3);
    const auto done = static_cast<std::uint32_t>(i + 1);
    if (::write(fd, &done, sizeof done) != static_cast<ssize_t>(sizeof done)) ::_exit(4);
  }
  for (;;) ::pause();
}

// Reads counts from the child until one reaches `until` (0: until end of file); returns the
// highest count read.
std::uint32_t read_reports(int fd, std::uint32_t until) {
  std::uint32_t highest = 0;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const int ready = ::poll(&p, 1, 30'000);
    if (ready < 0 && errno == EINTR) continue;
    REQUIRE_MESSAGE(ready == 1, "no report from the child within 30 s");
    std::uint32_t count = 0;
    const ssize_t n = ::read(fd, &count, sizeof count);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) return highest;
    REQUIRE(n == static_cast<ssize_t>(sizeof count));
    highest = count;
    if (until != 0 && highest >= until) return highest;
  }
}

// Kills and reaps a forked child unless it was reaped already, so a failed REQUIRE in the
// parent leaves no process behind.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ChildGuard(const ChildGuard&) = delete;
  ChildGuard& operator=(const ChildGuard&) = delete;
  ~ChildGuard() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  // Waits for the child to exit; returns its wait status.
  int reap() {
    int wstatus = 0;
    REQUIRE(::waitpid(pid_, &wstatus, 0) == pid_);
    pid_ = 0;
    return wstatus;
  }

 private:
  pid_t pid_;
};

}  // namespace

TEST_CASE("memory store: Store contract") {
  check_store_contract([] { return flotilla::manager::make_memory_store(); });
}

TEST_CASE("rocksdb store: Store contract") {
  TempDir tmp;
  check_store_contract([&] { return open_ok(tmp.path() / "db"); });
}

TEST_CASE("rocksdb store: reopening keeps the data and the schema version") {
  TempDir tmp;
  const auto dir = tmp.path() / "db";
  {
    auto store = open_ok(dir);
    CHECK(get_ok(*store, Space::meta, "store.schema_version") == "1");
    Batch batch;
    batch.put(Space::devices, "dev-a", "synced");
    write_ok(*store, batch, true);
    batch.clear();
    batch.put(Space::telemetry, "dev-a", "unsynced, kept by a clean close");
    batch.erase(Space::devices, "missing");
    write_ok(*store, batch, false);
    CHECK(store->disk_bytes() > 0);
  }
  StoreOptions no_create;
  no_create.create_if_missing = false;
  auto store = open_ok(dir, no_create);
  CHECK(get_ok(*store, Space::devices, "dev-a") == "synced");
  CHECK(get_ok(*store, Space::telemetry, "dev-a") == "unsynced, kept by a clean close");
  CHECK(get_ok(*store, Space::meta, "store.schema_version") == "1");
  CHECK(store->disk_bytes() > 0);
}

TEST_CASE("rocksdb store: a missing store with create_if_missing=false is not_found") {
  TempDir tmp;
  StoreOptions no_create;
  no_create.create_if_missing = false;
  const auto r = flotilla::manager::open_rocksdb_store(tmp.path() / "db", no_create);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::not_found);
  CHECK(r.error().message.find(tmp.path().string()) != std::string::npos);
}

TEST_CASE("rocksdb store: a path that is a regular file is an io_error naming it") {
  TempDir tmp;
  const auto file = tmp.path() / "not-a-dir";
  std::ofstream(file) << "x";
  const auto r = flotilla::manager::open_rocksdb_store(file);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().code == Errc::io_error);
  CHECK(r.error().message.find(file.string()) != std::string::npos);
}

TEST_CASE("rocksdb store: opening the same directory twice is unavailable") {
  TempDir tmp;
  const auto dir = tmp.path() / "db";
  auto first = open_ok(dir);
  const auto second = flotilla::manager::open_rocksdb_store(dir);
  REQUIRE_FALSE(second.ok());
  CHECK(second.error().code == Errc::unavailable);
  CHECK(second.error().message.find("in use") != std::string::npos);
  CHECK(second.error().message.find(dir.string()) != std::string::npos);
  // The failed attempt leaves the first store working.
  Batch batch;
  batch.put(Space::devices, "still", "works");
  write_ok(*first, batch, true);
}

TEST_CASE("rocksdb store: schema versions") {
  TempDir tmp;
  const auto dir = tmp.path() / "db";
  auto set_version = [&](std::optional<std::string> version) {
    auto store = open_ok(dir);
    Batch batch;
    batch.put(Space::devices, "dev-a", "record");
    if (version) {
      batch.put(Space::meta, "store.schema_version", *version);
    } else {
      batch.erase(Space::meta, "store.schema_version");
    }
    write_ok(*store, batch, true);
  };

  SUBCASE("a newer version is refused and the data left alone") {
    set_version("2");
    const auto r = flotilla::manager::open_rocksdb_store(dir);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
    CHECK(r.error().message.find("newer") != std::string::npos);
    CHECK(r.error().message.find(dir.string()) != std::string::npos);
    // Still refused on a second attempt: the failed open rewrote nothing.
    const auto again = flotilla::manager::open_rocksdb_store(dir);
    REQUIRE_FALSE(again.ok());
    CHECK(again.error().code == Errc::invalid_argument);
  }

  SUBCASE("a version that is not a number is corruption") {
    set_version("one");
    const auto r = flotilla::manager::open_rocksdb_store(dir);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::corruption);
  }

  SUBCASE("data without a version is another kind of database") {
    set_version(std::nullopt);
    const auto r = flotilla::manager::open_rocksdb_store(dir);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().code == Errc::invalid_argument);
  }

  SUBCASE("an empty store without a version is adopted") {
    {
      auto store = open_ok(dir);
      Batch batch;
      batch.erase(Space::meta, "store.schema_version");
      write_ok(*store, batch, true);
    }
    auto store = open_ok(dir);
    CHECK(get_ok(*store, Space::meta, "store.schema_version") == "1");
  }
}

TEST_CASE("rocksdb store: every batch acknowledged with sync=true survives SIGKILL") {
  constexpr int kBatches = 1000;
  constexpr std::uint32_t kKillAfter = 200;
  TempDir tmp;
  const auto dir = tmp.path() / "db";

  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    write_batches_then_wait(dir, kBatches, fds[1]);
  }
  ::close(fds[1]);
  ChildGuard child(pid);

  std::uint32_t reported = read_reports(fds[0], kKillAfter);
  bool killed = false;
  if (reported >= kKillAfter) {
    // Another process holds the store: this one is told so.
    const auto busy = flotilla::manager::open_rocksdb_store(dir);
    CHECK_FALSE(busy.ok());
    if (!busy.ok()) {
      CHECK(busy.error().code == Errc::unavailable);
      CHECK(busy.error().message.find("in use by another process") != std::string::npos);
    }
    killed = ::kill(pid, SIGKILL) == 0;
  }
  const int wstatus = child.reap();
  // Reports written between the last read and the kill count too.
  const std::uint32_t rest = read_reports(fds[0], 0);
  if (rest > reported) reported = rest;
  ::close(fds[0]);

  REQUIRE_MESSAGE(killed, fmt::format("the child exited early with status {:#x}", wstatus));
  REQUIRE(WIFSIGNALED(wstatus));
  CHECK(WTERMSIG(wstatus) == SIGKILL);
  MESSAGE(fmt::format("child acknowledged {} of {} batches before SIGKILL", reported, kBatches));

  auto store = open_ok(dir);
  // Batches are applied in order and atomically: the survivors are a prefix of the sequence,
  // holding every acknowledged batch and at most one more whose acknowledgement was cut off.
  int present = 0;
  while (present < kBatches && !missing(*store, Space::devices, batch_key(present))) ++present;
  CHECK(static_cast<std::uint32_t>(present) >= reported);
  CHECK(static_cast<std::uint32_t>(present) <= reported + 1);
  for (int i = 0; i < present; ++i) {
    CHECK(get_ok(*store, Space::devices, batch_key(i)) == fmt::format("record {}", i));
    CHECK(get_ok(*store, Space::inventory, batch_key(i)) == fmt::format("inventory {}", i));
  }
  for (int i = present; i < kBatches; ++i) {
    CHECK(missing(*store, Space::devices, batch_key(i)));
    CHECK(missing(*store, Space::inventory, batch_key(i)));
  }
  if (present > 0) CHECK(get_ok(*store, Space::meta, "crash.last") == std::to_string(present - 1));
}
