#include "flotilla/manager/index_load.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "flotilla/core/version.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/v1/device.pb.h"

namespace flotilla::manager {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

constexpr std::string_view kSnapshotHeader = "flotilla index snapshot\n";

// Owns a FILE*.
struct File {
  std::FILE* f = nullptr;
  File() = default;
  File(const File&) = delete;
  File& operator=(const File&) = delete;
  ~File() {
    if (f != nullptr) std::fclose(f);
  }
};

bool write_text(std::FILE* f, std::string_view text) {
  const std::uint64_t n = text.size();
  return std::fwrite(&n, sizeof n, 1, f) == 1 && std::fwrite(text.data(), 1, text.size(), f) == text.size();
}

std::optional<std::string> read_text(std::FILE* f, std::uint64_t& left) {
  std::uint64_t n = 0;
  if (left < sizeof n || std::fread(&n, sizeof n, 1, f) != 1 || n > left - sizeof n || n > 4096) return std::nullopt;
  std::string text(n, '\0');
  if (n > 0 && std::fread(text.data(), 1, n, f) != n) return std::nullopt;
  left -= sizeof n + n;
  return text;
}

// The index of the snapshot in `file` when it may stand for the store now (see load_index);
// otherwise nullopt and `note` says why. The file is gone afterwards either way.
std::optional<FleetIndex> read_snapshot(const Store& store, const Registry& registry, const std::filesystem::path& file,
                                        std::string& note) {
  std::error_code ignored;
  std::filesystem::remove(file.native() + ".tmp", ignored);  // left by a save that did not finish
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    note = errno == ENOENT ? "no snapshot" : fmt::format("snapshot {}: {}", file.native(), std::strerror(errno));
    return std::nullopt;
  }
  File in;
  in.f = ::fdopen(fd, "rb");
  if (in.f == nullptr) {
    ::close(fd);
    note = fmt::format("snapshot {}: {}", file.native(), std::strerror(errno));
    return std::nullopt;
  }
  // One start-up only: gone before it is used (reading goes on through the open descriptor).
  if (::unlink(file.c_str()) != 0) {
    note = fmt::format("snapshot {} cannot be removed ({}), so it is not used", file.native(), std::strerror(errno));
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    note = fmt::format("snapshot {}: {}", file.native(), std::strerror(errno));
    return std::nullopt;
  }
  std::uint64_t left = static_cast<std::uint64_t>(st.st_size);
  std::string header(kSnapshotHeader.size(), '\0');
  if (left < header.size() || std::fread(header.data(), 1, header.size(), in.f) != header.size() ||
      header != kSnapshotHeader) {
    note = "not an index snapshot";
    return std::nullopt;
  }
  left -= header.size();
  const auto version = read_text(in.f, left);
  const auto token = read_text(in.f, left);
  if (!version || !token) {
    note = "a damaged snapshot header";
    return std::nullopt;
  }
  if (*version != flotilla::version) {
    note = fmt::format("a snapshot of Flotilla {} (this is {})", *version, flotilla::version);
    return std::nullopt;
  }
  const std::string now = store.state_token();
  if (token->empty() || now.empty() || *token != now) {
    note = "the store changed since the snapshot was saved";
    return std::nullopt;
  }
  auto index = FleetIndex::read_snapshot(in.f, left);
  if (!index) {
    note = index.error().message;
    return std::nullopt;
  }
  const auto& devices = registry.devices();
  if (index->size() != devices.size()) {
    note = fmt::format("a snapshot of {} devices for a registry of {}", index->size(), devices.size());
    return std::nullopt;
  }
  for (const auto& [id, record] : devices) {
    if (!index->contains(id)) {
      note = fmt::format("device {} missing from the snapshot", id);
      return std::nullopt;
    }
  }
  return std::move(index).value();
}

// Reads the stored inventories, then the stored telemetry, of the registry's devices and decodes
// them on a thread of its own, handing them over in batches: indexing, on the caller's thread,
// overlaps with reading and decoding (and with the record part, indexed while the first batches
// are read).
class StoredParts {
 public:
  struct Batch {
    bool inventory = true;
    std::size_t size = 0;
    std::vector<const std::string*> ids;
    std::vector<v1::Inventory> inventories;
    std::vector<v1::Telemetry> telemetries;
  };

  StoredParts(const Store& store, const std::map<std::string, v1::DeviceRecord, std::less<>>& devices)
      : store_(store), devices_(devices), pool_(kBatches) {
    for (auto& b : pool_) free_.push_back(&b);
    thread_ = std::thread([this] { run(); });
  }
  StoredParts(const StoredParts&) = delete;
  StoredParts& operator=(const StoredParts&) = delete;
  ~StoredParts() {
    {
      const std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  // The next batch, or nullptr after the last (then status() says whether all went well).
  Batch* next() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !ready_.empty() || finished_; });
    if (ready_.empty()) return nullptr;
    Batch* b = ready_.front();
    ready_.pop_front();
    return b;
  }
  void release(Batch* b) {
    {
      const std::lock_guard lock(mutex_);
      free_.push_back(b);
    }
    changed_.notify_all();
  }
  Status status() {
    const std::lock_guard lock(mutex_);
    return status_;
  }
  double busy_ms() {
    const std::lock_guard lock(mutex_);
    return busy_ms_;
  }

 private:
  static constexpr std::size_t kBatches = 4;
  static constexpr std::size_t kBatchSize = 256;

  Batch* take_free() {
    std::unique_lock lock(mutex_);
    changed_.wait(lock, [&] { return !free_.empty() || stop_; });
    if (stop_) return nullptr;
    Batch* b = free_.back();
    free_.pop_back();
    return b;
  }
  void hand_over(Batch* b) {
    {
      const std::lock_guard lock(mutex_);
      ready_.push_back(b);
    }
    changed_.notify_all();
  }

  void run() {
    const auto t0 = Clock::now();
    Status st;
    for (const bool inventory : {true, false}) {
      if (!st) break;
      auto next = devices_.begin();
      Batch* b = nullptr;
      Status bad;
      auto scanned = store_.scan(
          inventory ? Space::inventory : Space::telemetry, "", [&](std::string_view key, std::string_view value) {
            while (next != devices_.end() && std::string_view(next->first) < key) ++next;
            if (next == devices_.end() || next->first != key) return true;  // unknown device
            if (b == nullptr) {
              b = take_free();
              if (b == nullptr) return false;  // stopped
              b->inventory = inventory;
              b->size = 0;
            }
            const std::size_t i = b->size;
            if (b->ids.size() <= i) b->ids.resize(i + 1);
            b->ids[i] = &next->first;
            bool ok = false;
            if (inventory) {
              if (b->inventories.size() <= i) b->inventories.resize(i + 1);
              ok = b->inventories[i].ParseFromArray(value.data(), static_cast<int>(value.size()));
            } else {
              if (b->telemetries.size() <= i) b->telemetries.resize(i + 1);
              ok = b->telemetries[i].ParseFromArray(value.data(), static_cast<int>(value.size()));
            }
            if (!ok) {
              bad = make_error(Errc::corruption, "stored {} of {} does not decode",
                               inventory ? "inventory" : "telemetry", key);
              return false;
            }
            if (++b->size == kBatchSize) {
              hand_over(b);
              b = nullptr;
            }
            return true;
          });
      if (b != nullptr && b->size > 0) {
        hand_over(b);
      } else if (b != nullptr) {
        release(b);
      }
      st = !scanned ? std::move(scanned) : std::move(bad);
    }
    {
      const std::lock_guard lock(mutex_);
      status_ = std::move(st);
      finished_ = true;
      busy_ms_ = ms_since(t0);
    }
    changed_.notify_all();
  }

  const Store& store_;
  const std::map<std::string, v1::DeviceRecord, std::less<>>& devices_;
  std::vector<Batch> pool_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<Batch*> free_;
  std::deque<Batch*> ready_;
  bool stop_ = false, finished_ = false;
  Status status_;
  double busy_ms_ = 0;
  std::thread thread_;
};

// Passes facts on to another sink, counting them.
class Counting final : public FactSink {
 public:
  explicit Counting(std::uint64_t& n) : n_(n) {}
  void add(std::string_view field, std::string_view value) override {
    ++n_;
    to->add(field, value);
  }
  void add_package(std::string_view package, std::string_view version) override {
    ++n_;
    to->add_package(package, version);
  }
  FactSink* to = nullptr;

 private:
  std::uint64_t& n_;
};

}  // namespace

Result<LoadedIndex> load_index(const Store& store, const Registry& registry, const Groups& groups,
                               const std::filesystem::path* snapshot) {
  LoadedIndex out;
  Status bad;
  auto t0 = Clock::now();
  auto scanned = store.scan(Space::labels, "", [&](std::string_view key, std::string_view value) {
    v1::DeviceLabels l;
    if (!l.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "labels of {} do not decode", key);
      return false;
    }
    out.labels.emplace(std::string(key), std::move(l));
    return true;
  });
  if (!scanned) return std::move(scanned).error();
  if (!bad) return std::move(bad).error();
  out.read_ms += ms_since(t0);

  if (snapshot != nullptr) {
    t0 = Clock::now();
    auto index = read_snapshot(store, registry, *snapshot, out.snapshot_note);
    out.read_ms += ms_since(t0);
    if (index) {
      out.index = std::move(*index);
      out.from_snapshot = true;
      return out;
    }
  }

  // The record part of every device, in id order (so slots follow ids), with its labels (the
  // two maps are joined in key order) and group memberships, while the first inventories are
  // read.
  t0 = Clock::now();
  const auto& devices = registry.devices();
  StoredParts parts(store, devices);
  Counting counting(out.facts);
  auto label = out.labels.begin();
  for (const auto& device : devices) {
    const std::string& id = device.first;
    const v1::DeviceRecord& record = device.second;
    while (label != out.labels.end() && label->first < id) ++label;
    const v1::DeviceLabels* labels = label != out.labels.end() && label->first == id ? &label->second : nullptr;
    const auto groups_of = groups.groups_of(id);
    out.index.update(id, std::nullopt, [&](FactSink& sink) {
      counting.to = &sink;
      add_record_facts(record, counting);
      if (labels != nullptr) add_label_facts(*labels, record, counting);
      for (const auto& g : groups_of) counting.add("group", g);
    });
  }

  // Then the inventory and telemetry parts as they arrive.
  while (StoredParts::Batch* b = parts.next()) {
    for (std::size_t i = 0; i < b->size; ++i) {
      out.index.update(*b->ids[i], b->inventory ? FactPart::inventory : FactPart::telemetry, [&](FactSink& sink) {
        counting.to = &sink;
        if (b->inventory) {
          add_inventory_facts(b->inventories[i], counting);
        } else {
          add_telemetry_facts(b->telemetries[i], counting);
        }
      });
    }
    (b->inventory ? out.inventories : out.telemetries) += b->size;
    parts.release(b);
  }
  if (auto st = parts.status(); !st) return std::move(st).error();
  out.read_ms += parts.busy_ms();
  out.index_ms += ms_since(t0);
  t0 = Clock::now();
  out.index.finish_load();
  out.index_ms += ms_since(t0);
  return out;
}

Status save_index_snapshot(Store& store, const FleetIndex& index, const std::filesystem::path& file) {
  // An empty synced batch makes every earlier write durable, so the state named below cannot be
  // lost to a crash while the snapshot survives it.
  if (auto st = store.write(Batch{}, true); !st) return st;
  const std::string token = store.state_token();
  if (token.empty()) return make_error(Errc::invalid_argument, "index snapshot: the store cannot name its state");
  const std::string tmp = file.native() + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(Errc::io_error, "index snapshot {}: {}", tmp, std::strerror(errno));
  File out;
  out.f = ::fdopen(fd, "wb");
  if (out.f == nullptr) {
    ::close(fd);
    return make_error(Errc::io_error, "index snapshot {}: {}", tmp, std::strerror(errno));
  }
  auto failed = [&](std::string_view what) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return make_error(Errc::io_error, "index snapshot {}: {}", tmp, what);
  };
  if (std::fwrite(kSnapshotHeader.data(), 1, kSnapshotHeader.size(), out.f) != kSnapshotHeader.size() ||
      !write_text(out.f, flotilla::version) || !write_text(out.f, token)) {
    return failed("write failed");
  }
  if (auto st = index.write_snapshot(out.f); !st) return failed(st.error().message);
  if (std::fflush(out.f) != 0 || ::fsync(fd) != 0) return failed(std::strerror(errno));
  const int closed = std::fclose(out.f);
  out.f = nullptr;
  if (closed != 0) return failed(std::strerror(errno));
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) return failed(ec.message());
  return {};
}

}  // namespace flotilla::manager
