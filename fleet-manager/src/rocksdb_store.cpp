// The RocksDB-backed Store: the only file in Flotilla that includes RocksDB headers. Every
// rocksdb::Status is converted here into a flotilla::Error naming the operation and the path.
//
// Layout: one column family per Space ("devices", "inventory", "telemetry", "meta", "groups",
// "labels", "jobs", "scripts", "policies", "audit"; families missing from an older store are created on open), plus
// RocksDB's mandatory "default", which stays empty. The meta key "store.schema_version" holds
// the on-disk schema version; a directory written by a newer Flotilla is refused before this
// build changes anything in it.

#include <array>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <rocksdb/cache.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/transaction_log.h>
#include <rocksdb/write_batch.h>

#include "flotilla/manager/store.hpp"

namespace flotilla::manager {
namespace {

constexpr std::string_view kSchemaKey = "store.schema_version";
constexpr int kSchemaVersion = 1;

// Column family names, indexed by Space.
constexpr std::array<std::string_view, static_cast<std::size_t>(Space::count)> kSpaceNames = {
    "devices", "inventory", "telemetry", "meta", "groups", "labels", "jobs", "scripts", "policies", "audit"};

std::optional<std::size_t> space_index(Space space) {
  const auto index = static_cast<std::size_t>(space);
  if (index >= kSpaceNames.size()) return std::nullopt;
  return index;
}

std::string_view space_name(Space space) {
  const auto index = space_index(space);
  return index ? kSpaceNames[*index] : std::string_view("<invalid space>");
}

rocksdb::Slice to_slice(std::string_view s) { return {s.data(), s.size()}; }
std::string_view to_view(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

// RocksDB reports a held LOCK file as a plain IOError; only the message tells it apart:
// "lock hold by current process" (same process) or "While lock file: <dir>/LOCK: Resource
// temporarily unavailable" (fcntl lock held by another process).
bool is_lock_error(const rocksdb::Status& s) {
  if (!s.IsIOError()) return false;
  const std::string text = s.ToString();
  return text.find("lock hold by current process") != std::string::npos ||
         text.find("While lock file") != std::string::npos;
}

Error to_error(const rocksdb::Status& s, std::string_view operation, const std::filesystem::path& dir) {
  const std::string& path = dir.native();
  if (is_lock_error(s)) {
    return make_error(Errc::unavailable,
                      "{} {}: the store is in use by another process (or already open in this one): {}", operation,
                      path, s.ToString());
  }
  Errc code = Errc::io_error;
  if (s.IsNotFound()) {
    code = Errc::not_found;
  } else if (s.IsCorruption()) {
    code = Errc::corruption;
  } else if (s.IsInvalidArgument() || s.IsNotSupported()) {
    code = Errc::invalid_argument;
  } else if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) {
    code = Errc::unavailable;
  }
  return make_error(code, "{} {}: {}", operation, path, s.ToString());
}

// The smallest key greater than every key that starts with `prefix`, or nullopt when there is
// none (empty prefix, or a prefix of only 0xff bytes): drop trailing 0xff bytes, then add one
// to the last byte.
std::optional<std::string> prefix_successor(std::string_view prefix) {
  std::string bound(prefix);
  while (!bound.empty() && static_cast<unsigned char>(bound.back()) == 0xff) bound.pop_back();
  if (bound.empty()) return std::nullopt;
  bound.back() = static_cast<char>(static_cast<unsigned char>(bound.back()) + 1);
  return bound;
}

rocksdb::CompressionType pick_compression() {
  for (const auto type : rocksdb::GetSupportedCompressions()) {
    if (type == rocksdb::kLZ4Compression) return type;
  }
  return rocksdb::kNoCompression;
}

rocksdb::DBOptions make_db_options(const StoreOptions& options) {
  rocksdb::DBOptions db;
  db.create_if_missing = options.create_if_missing;
  // Missing column families are created by hand after the schema version has been checked,
  // so a directory written by a newer Flotilla is refused before anything is added to it.
  db.create_missing_column_families = false;
  // Flushes and compactions share two threads: the target machine has two cores, and the
  // reactor thread needs one of them.
  db.max_background_jobs = 2;
  // A write with WriteOptions::sync fdatasyncs the WAL before returning; writers that arrive
  // together are group-committed under one sync. Point-in-time recovery (the default) replays
  // the WAL up to the first torn record after kill -9 or power loss, so every synced write
  // survives.
  db.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  // The rarely written "meta" family would otherwise pin old WAL files forever: past this
  // total, RocksDB flushes the families that hold the oldest WAL so it can be deleted.
  db.max_total_wal_size = 256ull << 20;
  // One budget for the memtables of all families (bytes), instead of 4 x write_buffer_size x 2.
  db.db_write_buffer_size = 128ull << 20;
  // Write back SST files in 1 MiB steps rather than one large burst at the end of a flush.
  db.bytes_per_sync = 1ull << 20;
  // RocksDB's info LOG in the store directory: bounded to 5 files of 16 MiB.
  db.max_log_file_size = 16ull << 20;
  db.keep_log_file_num = 5;
  return db;
}

rocksdb::ColumnFamilyOptions make_cf_options(const StoreOptions& options) {
  rocksdb::BlockBasedTableOptions table;
  // Lookups are mostly by full device id: a 10 bits/key Bloom filter (~1% false positives)
  // skips SST files that cannot hold the key.
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  if (options.block_cache_bytes == 0) {
    table.no_block_cache = true;
  } else {
    // One LRU cache shared by all column families.
    table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
    // Index and filter blocks live in (and are bounded by) the block cache instead of
    // growing with the fleet; those of L0 files stay pinned because every read consults them.
    table.cache_index_and_filter_blocks = true;
    table.pin_l0_filter_and_index_blocks_in_cache = true;
  }

  rocksdb::ColumnFamilyOptions cf;
  // Level compaction: read- and space-friendly for a point-lookup index that is overwritten
  // in place (latest inventory / telemetry per device). Dynamic level sizes keep space
  // amplification near 1.1 whatever the database size.
  cf.compaction_style = rocksdb::kCompactionStyleLevel;
  cf.level_compaction_dynamic_level_bytes = true;
  cf.write_buffer_size = 32ull << 20;
  // LZ4 is cheap enough for two cores; without it in this librocksdb build, store plain.
  cf.compression = pick_compression();
  cf.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  return cf;
}

// Owns one open RocksDB instance. Thread-safe as RocksDB is.
class RocksStore final : public Store {
 public:
  RocksStore(std::filesystem::path dir, std::unique_ptr<rocksdb::DB> db, rocksdb::ColumnFamilyOptions cf_options,
             std::vector<rocksdb::ColumnFamilyHandle*> handles)
      : dir_(std::move(dir)), db_(std::move(db)), cf_options_(std::move(cf_options)), handles_(std::move(handles)) {
    for (auto* handle : handles_) {
      for (std::size_t i = 0; i < kSpaceNames.size(); ++i) {
        if (handle->GetName() == kSpaceNames[i]) spaces_[i] = handle;
      }
    }
  }

  RocksStore(const RocksStore&) = delete;
  RocksStore& operator=(const RocksStore&) = delete;

  ~RocksStore() override {
    // Close() does not sync the WAL: sync here so that writes made with sync=false also
    // reach stable storage on a clean shutdown.
    if (auto s = db_->SyncWAL(); !s.ok()) report_close_problem("sync WAL of", s);
    for (auto* handle : handles_) {
      if (auto s = db_->DestroyColumnFamilyHandle(handle); !s.ok()) report_close_problem("release column family of", s);
    }
    if (auto s = db_->Close(); !s.ok()) report_close_problem("close", s);
  }

  Result<std::string> get(Space space, std::string_view key) const override {
    auto* cf = handle(space);
    if (cf == nullptr) return invalid_space(space);
    std::string value;
    const auto s = db_->Get(rocksdb::ReadOptions(), cf, to_slice(key), &value);
    if (s.IsNotFound()) {
      return make_error(Errc::not_found, "{}: no key {:?} in {}", dir_.native(), key, space_name(space));
    }
    if (!s.ok()) return to_error(s, fmt::format("get {:?} from {} in", key, space_name(space)), dir_);
    return value;
  }

  Status write(const Batch& batch, bool sync) override {
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops) {
      auto* cf = handle(op.space);
      if (cf == nullptr) return invalid_space(op.space);
      const auto s = op.value ? wb.Put(cf, to_slice(op.key), to_slice(*op.value)) : wb.Delete(cf, to_slice(op.key));
      if (!s.ok()) return to_error(s, "build write batch for", dir_);
    }
    rocksdb::WriteOptions write_options;
    // An empty batch with sync=true still syncs the WAL, which makes earlier unsynced writes
    // durable too.
    write_options.sync = sync;
    if (const auto s = db_->Write(write_options, &wb); !s.ok()) return to_error(s, "write", dir_);
    return {};
  }

  Status scan(Space space, std::string_view prefix,
              const std::function<bool(std::string_view key, std::string_view value)>& visit) const override {
    auto* cf = handle(space);
    if (cf == nullptr) return invalid_space(space);
    rocksdb::ReadOptions read_options;
    // Declared before the iterator: the bound must outlive it.
    const auto upper = prefix_successor(prefix);
    rocksdb::Slice upper_slice;
    if (upper) {
      upper_slice = to_slice(*upper);
      read_options.iterate_upper_bound = &upper_slice;
    }
    // The iterator reads an implicit snapshot taken here, so `visit` may write to the store.
    const std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf));
    for (it->Seek(to_slice(prefix)); it->Valid(); it->Next()) {
      if (!visit(to_view(it->key()), to_view(it->value()))) break;
    }
    if (const auto s = it->status(); !s.ok()) {
      return to_error(s, fmt::format("scan {} with prefix {:?} in", space_name(space), prefix), dir_);
    }
    return {};
  }

  Status scan_reverse(Space space, std::string_view prefix,
                      const std::function<bool(std::string_view key, std::string_view value)>& visit) const override {
    auto* cf = handle(space);
    if (cf == nullptr) return invalid_space(space);
    rocksdb::ReadOptions read_options;
    const rocksdb::Slice lower = to_slice(prefix);  // the prefix outlives the iterator
    read_options.iterate_lower_bound = &lower;
    const std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(read_options, cf));
    // The last key with the prefix: the one before the prefix's successor (or the last key of all).
    if (const auto upper = prefix_successor(prefix)) {
      it->SeekForPrev(to_slice(*upper));
      if (it->Valid() && it->key() == to_slice(*upper)) it->Prev();
    } else {
      it->SeekToLast();
    }
    for (; it->Valid() && to_view(it->key()).starts_with(prefix); it->Prev()) {
      if (!visit(to_view(it->key()), to_view(it->value()))) break;
    }
    if (const auto s = it->status(); !s.ok()) {
      return to_error(s, fmt::format("reverse scan {} with prefix {:?} in", space_name(space), prefix), dir_);
    }
    return {};
  }

  std::uint64_t disk_bytes() const override {
    std::uint64_t total = 0;
    std::uint64_t sst = 0;
    if (db_->GetAggregatedIntProperty(rocksdb::DB::Properties::kTotalSstFilesSize, &sst)) total += sst;
    rocksdb::VectorLogPtr wal_files;
    if (db_->GetSortedWalFiles(wal_files).ok()) {
      for (const auto& file : wal_files) total += file->SizeFileBytes();
    }
    return total;
  }

  std::string state_token() const override {
    std::string identity;
    if (!db_->GetDbIdentity(identity).ok() || identity.empty()) return {};
    return fmt::format("{}/{}", identity, db_->GetLatestSequenceNumber());
  }

  // Checks the schema version, creates missing column families, records the version.
  // Errors: invalid_argument (newer schema, or not a Flotilla store), corruption, io_error.
  Status prepare() {
    std::optional<std::string> version;
    auto* meta = spaces_[static_cast<std::size_t>(Space::meta)];
    if (meta != nullptr) {
      std::string value;
      const auto s = db_->Get(rocksdb::ReadOptions(), meta, to_slice(kSchemaKey), &value);
      if (s.ok()) {
        version = std::move(value);
      } else if (!s.IsNotFound()) {
        return to_error(s, "read store.schema_version from", dir_);
      }
    }

    if (version) {
      int number = 0;
      const char* end = version->data() + version->size();
      const auto [ptr, ec] = std::from_chars(version->data(), end, number);
      if (ec != std::errc() || ptr != end || number < 1) {
        return make_error(Errc::corruption, "{}: meta {} is {:?}, not a schema version", dir_.native(), kSchemaKey,
                          *version);
      }
      if (number > kSchemaVersion) {
        return make_error(Errc::invalid_argument,
                          "{}: store schema version is {}, this build reads up to {}; it was written by a newer "
                          "Flotilla",
                          dir_.native(), number, kSchemaVersion);
      }
    } else if (auto status = check_adoptable(); !status) {
      return status;
    }

    for (std::size_t i = 0; i < kSpaceNames.size(); ++i) {
      if (spaces_[i] != nullptr) continue;
      rocksdb::ColumnFamilyHandle* created = nullptr;
      const std::string name(kSpaceNames[i]);
      if (const auto s = db_->CreateColumnFamily(cf_options_, name, &created); !s.ok()) {
        return to_error(s, fmt::format("create column family {} in", name), dir_);
      }
      handles_.push_back(created);
      spaces_[i] = created;
    }

    if (!version) {
      Batch batch;
      batch.put(Space::meta, std::string(kSchemaKey), std::to_string(kSchemaVersion));
      if (auto status = write(batch, /*sync=*/true); !status) return status;
    }
    return {};
  }

 private:
  rocksdb::ColumnFamilyHandle* handle(Space space) const {
    const auto index = space_index(space);
    return index ? spaces_[*index] : nullptr;
  }

  Error invalid_space(Space space) const {
    return make_error(Errc::invalid_argument, "{}: invalid space {}", dir_.native(), static_cast<int>(space));
  }

  // A database without a schema version is adopted only when it is empty and holds no
  // column family of its own: a fresh store, or one whose creation was interrupted before
  // the version was written. Anything else is another application's RocksDB.
  Status check_adoptable() const {
    for (auto* cf : handles_) {
      const std::string& name = cf->GetName();
      bool known = name == rocksdb::kDefaultColumnFamilyName;
      for (const auto space : kSpaceNames) known = known || name == space;
      if (!known) {
        return make_error(Errc::invalid_argument,
                          "{}: holds another kind of database (column family {:?}, no {}); not a Flotilla store",
                          dir_.native(), name, kSchemaKey);
      }
      const std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf));
      it->SeekToFirst();
      if (!it->status().ok()) return to_error(it->status(), fmt::format("read column family {} of", name), dir_);
      if (it->Valid()) {
        return make_error(Errc::invalid_argument,
                          "{}: holds another kind of database (data in column family {:?}, no {}); not a Flotilla "
                          "store",
                          dir_.native(), name, kSchemaKey);
      }
    }
    return {};
  }

  void report_close_problem(std::string_view operation, const rocksdb::Status& s) const noexcept {
    try {
      fmt::print(stderr, "flotilla store: {}\n", to_error(s, operation, dir_));
    } catch (...) {  // NOLINT(bugprone-empty-catch): nothing left to report to from a destructor
    }
  }

  std::filesystem::path dir_;
  std::unique_ptr<rocksdb::DB> db_;
  rocksdb::ColumnFamilyOptions cf_options_;
  // Every column family opened or created, default included; released before Close().
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;
  std::array<rocksdb::ColumnFamilyHandle*, kSpaceNames.size()> spaces_{};
};

}  // namespace

Result<std::unique_ptr<Store>> open_rocksdb_store(const std::filesystem::path& dir, const StoreOptions& options) {
  const auto db_options = make_db_options(options);
  const auto cf_options = make_cf_options(options);

  std::error_code ec;
  const bool exists = std::filesystem::exists(dir / "CURRENT", ec);
  if (ec) return make_error(Errc::io_error, "open {}: {}", dir.native(), ec.message());
  if (!exists && !options.create_if_missing) {
    return make_error(Errc::not_found, "open {}: no store there and create_if_missing is false", dir.native());
  }

  // RocksDB refuses to open a database unless every column family is named, so list them.
  std::vector<std::string> names{rocksdb::kDefaultColumnFamilyName};
  if (exists) {
    if (const auto s = rocksdb::DB::ListColumnFamilies(db_options, dir.native(), &names); !s.ok()) {
      return to_error(s, "list column families of", dir);
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> descriptors;
  descriptors.reserve(names.size());
  for (const auto& name : names) descriptors.emplace_back(name, cf_options);

  rocksdb::DB* raw = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  if (const auto s = rocksdb::DB::Open(db_options, dir.native(), descriptors, &handles, &raw); !s.ok()) {
    return to_error(s, "open", dir);
  }
  auto store = std::make_unique<RocksStore>(dir, std::unique_ptr<rocksdb::DB>(raw), cf_options, std::move(handles));
  if (auto status = store->prepare(); !status) return std::move(status).error();
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace flotilla::manager
