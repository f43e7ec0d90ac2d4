#pragma once
// The manager's system of record. The only implementation over RocksDB lives in
// src/rocksdb_store.cpp (the one file that includes RocksDB headers); everything else sees this
// interface. Thread-safe as RocksDB is: concurrent reads, writes from the reactor thread.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::manager {

// Key spaces (RocksDB column families). Keys are device ids unless noted.
enum class Space {
  devices,    // DeviceRecord
  inventory,  // latest Inventory
  telemetry,  // latest Telemetry
  meta,       // store schema version; keys are names
  groups,     // "g/{name}": Group (with a static group's members); "m/{name}/{device}": a dynamic
              // group's member; "e/{seq:020}": MembershipEvent; "s/event_seq": last event number
  labels,     // operator tags and attributes of a device (DeviceLabels)
  jobs,       // "j/{job}": JobRecord; "x/{job}/{device}": Execution; "s/job_seq": last job number
  scripts,    // "{name}": Script (the script library)
  policies,   // "{level}/{name}": Policy document attached at a level
  audit,      // "{unix_ms:020}/{seq:010}": AuditEntry
  count,      // number of spaces (not a space)
};

// A set of writes applied atomically.
struct Batch {
  struct Op {
    Space space;
    std::string key;
    std::optional<std::string> value;  // nullopt: delete
  };
  std::vector<Op> ops;

  void put(Space space, std::string key, std::string value) {
    ops.push_back({space, std::move(key), std::move(value)});
  }
  void erase(Space space, std::string key) { ops.push_back({space, std::move(key), std::nullopt}); }
  bool empty() const { return ops.empty(); }
  void clear() { ops.clear(); }
};

struct StoreOptions {
  // Creates the database when missing.
  bool create_if_missing = true;
  // RocksDB block cache, bytes.
  std::uint64_t block_cache_bytes = 64ull << 20;
};

class Store {
 public:
  virtual ~Store() = default;

  // Errors: not_found for a missing key, io_error / corruption from the engine.
  virtual Result<std::string> get(Space space, std::string_view key) const = 0;

  // Applies the batch atomically. With sync, returns only after the WAL is on stable storage,
  // so the write survives kill -9 and power loss. Errors: io_error.
  virtual Status write(const Batch& batch, bool sync) = 0;

  // Visits keys with the given prefix in key order until visit returns false.
  // Errors: io_error / corruption.
  virtual Status scan(Space space, std::string_view prefix,
                      const std::function<bool(std::string_view key, std::string_view value)>& visit) const = 0;
  // The same in reverse key order (newest first for time-ordered keys), reading only what is
  // visited. Errors: io_error / corruption.
  virtual Status scan_reverse(Space space, std::string_view prefix,
                              const std::function<bool(std::string_view key, std::string_view value)>& visit) const = 0;

  // Approximate on-disk size in bytes (SST + WAL), for stats.
  virtual std::uint64_t disk_bytes() const = 0;

  // Names the exact state of the store: two equal non-empty tokens mean no write happened in
  // between (RocksDB: the database identity and the sequence number of the last write). Empty
  // when the store cannot tell (then nothing may be cached across restarts).
  virtual std::string state_token() const { return {}; }
};

// Opens (creating when allowed) a RocksDB store in `dir`. Errors: io_error naming the path,
// corruption, invalid_argument (e.g. the directory holds another kind of database).
Result<std::unique_ptr<Store>> open_rocksdb_store(const std::filesystem::path& dir, const StoreOptions& options = {});

// An in-memory Store for fast unit tests of flows.
std::unique_ptr<Store> make_memory_store();

}  // namespace flotilla::manager
