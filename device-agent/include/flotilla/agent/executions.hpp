#pragma once
// Durable execution store of the device agent: which job attempts this device has started and
// how they ended, so that each attempt runs at most once across redeliveries, agent restarts,
// kill -9 and power loss, and a redelivery is answered with the stored outcome
// (docs/jobs.md, "Delivery and execution").
//
// On-disk format (integers little-endian, CRC = CRC32C as in the outbox), in
// ExecutionStoreOptions::dir:
//
//   executions.lock  empty; flock()ed while a store is open, so two processes never share it.
//   executions.log   header, then records back to back. Written only by appending, or replaced
//                    whole (executions.log.tmp + fdatasync + rename + fsync of the directory).
//     header, 32 bytes, written once per file:
//       [0,8)   magic "FLTEXLOG"
//       [8,12)  format version (1)
//       [12,16) CRC of [16,32)
//       [16,24) horizon_ms (int64): no document issued before it can be recognised as a replay
//       [24,32) reserved (0)
//     record:
//       [0,4)   magic "FLX1"
//       [4,8)   CRC of (the record's file offset as 8 bytes) + bytes [8, 12 + len); the offset
//               makes a copy of a record inside another record's result unusable for recovery
//       [8,12)  len: bytes that follow this field (the whole record is at most kMaxRecordBytes)
//       [12]    kind: 1 started, 2 finished, 3 horizon
//       [13,17) attempt (>= 1; 0 in a horizon record)
//       [17,25) updated_ms (int64; the horizon in a horizon record)
//       [25,33) expires_ms (int64)
//       [33]    job id length j (1..kMaxJobIdBytes; 0 in a horizon record)
//       [34,34+j) job id, then the result (the rest of len; empty unless finished)
//
// Every execution record carries the whole state of one execution; replaying the log keeps, per
// job, the record of the highest (attempt, state). A mark_*() call returns after its record is
// appended and fdatasync()ed. The horizon is the highest of the header's and of any horizon
// record's: pruning appends one when it raises the horizon, so the horizon never moves back,
// across restarts too.
//
// Recovery on open: a record that fails its checks starts a damaged region. If an intact record
// follows (found by scanning for the record magic), the region is skipped, counted in
// corrupt_records_skipped(), the horizon is raised past every instant recorded in the log (the
// lost record may have been any execution up to then) and the log is compacted at once. If none
// follows, the region is a torn tail -- an append that never completed, so its mark_*() never
// returned -- and is truncated away (torn_bytes_truncated()).
//
// Pruning (in memory; the records leave the file at the next compaction): finished records whose job expired
// and whose last update is older than `retention` are forgotten; beyond max_records, the oldest
// finished records whose job expired are forgotten too. A started record, or one whose job has not
// expired, is never forgotten, even if max_records cannot be kept (a warning is logged). Each
// forgotten record raises the horizon past its last update. Compaction rewrites the live records
// and the horizon into a new file when the log exceeds twice the live bytes (and
// compact_min_bytes).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::agent {

enum class ExecState : std::uint8_t { started = 1, finished = 2 };

struct ExecRecord {
  std::string job_id;
  std::uint32_t attempt = 0;
  ExecState state = ExecState::started;
  std::int64_t updated_ms = 0;  // when the device last recorded this execution (device clock)
  std::int64_t expires_ms = 0;  // the job's expiry; the record is kept at least until then
  std::string result;           // opaque bytes (an encoded result) once finished
};

struct ExecutionStoreOptions {
  std::filesystem::path dir;  // created if missing (mode 0700)
  // Bound on the records kept; only finished records of expired jobs are dropped to keep it.
  std::size_t max_records = 10000;
  // Finished records of expired jobs are kept this long after their last update; documents older
  // than what the store forgets are refused as possible replays (horizon_ms()).
  std::chrono::milliseconds retention = std::chrono::hours(24 * 30);
  // Compaction waits until the log holds more than this many bytes as well as twice the live
  // bytes, so a small store is not rewritten on every write. Bytes.
  std::uint64_t compact_min_bytes = 256 * 1024;
  // fdatasync after each write and fsync of the directory after each rename; off only for tests
  // and benchmarks (a process crash then loses nothing, a power loss may).
  bool sync = true;
};

// Owns the files in ExecutionStoreOptions::dir. Not thread-safe: owned and called by the agent's
// reactor thread only. Pointers it returns stay valid until the next non-const call.
class ExecutionStore {
 public:
  static constexpr std::size_t kMaxJobIdBytes = 128;
  // Bound on one record (framing, job id and result).
  static constexpr std::size_t kMaxRecordBytes = 1 << 20;

  // Opens (creating if needed) the store in options.dir and recovers it.
  // Errors: invalid_argument (empty dir, max_records 0, negative retention), io_error (dir not
  // creatable, read/write/sync failure; the message names the path), unavailable (another store
  // holds the dir), corruption (executions.log is not a version-1 execution log or its header is
  // damaged; the file is left untouched).
  [[nodiscard]] static Result<std::unique_ptr<ExecutionStore>> open(const ExecutionStoreOptions& options);

  ExecutionStore(const ExecutionStore&) = delete;
  ExecutionStore& operator=(const ExecutionStore&) = delete;
  ~ExecutionStore();

  // The record of the job's highest attempt, nullptr if none.
  [[nodiscard]] const ExecRecord* find(std::string_view job_id) const;

  // Durably records that (job_id, attempt) starts; returns only once the record is on disk
  // (fdatasync; see ExecutionStoreOptions::sync).
  // Errors: invalid_argument (job id empty or over kMaxJobIdBytes, attempt 0), already_exists
  // (this attempt or a later one of the job is already recorded: it must not run again),
  // io_error (nothing was recorded).
  [[nodiscard]] Status mark_started(std::string_view job_id, std::uint32_t attempt, std::int64_t expires_ms,
                                    std::int64_t now_ms);
  // Durably records the outcome of a started attempt.
  // Errors: not_found (no record of the job), invalid_argument (the recorded attempt differs),
  // already_exists (already finished), too_large (the record would exceed kMaxRecordBytes),
  // io_error (nothing was recorded; the attempt stays started).
  [[nodiscard]] Status mark_finished(std::string_view job_id, std::uint32_t attempt, std::string result,
                                     std::int64_t now_ms);

  // Forgets what the pruning rules (above) allow at `now_ms`; mark_*() call it too. Errors:
  // io_error from a compaction it triggers (the log stays valid; the store keeps working).
  [[nodiscard]] Status prune(std::int64_t now_ms);

  // Executions found started and unfinished at open (the agent stopped while they ran) and still
  // unfinished: the agent reports them as interrupted instead of running them again.
  [[nodiscard]] std::vector<const ExecRecord*> interrupted() const;

  [[nodiscard]] std::size_t size() const { return records_.size(); }
  // Documents issued before this instant must be refused as possible replays: the executions
  // they could have caused may have been forgotten.
  [[nodiscard]] std::int64_t horizon_ms() const { return horizon_ms_; }

  // Figures of the store and of the last open(), for logs and tests.
  [[nodiscard]] std::uint64_t corrupt_records_skipped() const { return corrupt_records_skipped_; }
  [[nodiscard]] std::uint64_t torn_bytes_truncated() const { return torn_bytes_truncated_; }
  [[nodiscard]] std::uint64_t log_file_bytes() const { return log_end_; }
  [[nodiscard]] std::uint64_t live_bytes() const { return live_bytes_; }
  [[nodiscard]] std::uint64_t compactions() const { return compactions_; }
  [[nodiscard]] std::filesystem::path log_path() const;

 private:
  explicit ExecutionStore(ExecutionStoreOptions options);

  Status lock_dir();
  Status open_log();
  Status recover(int fd, std::uint64_t file_size);
  void apply(ExecRecord record);
  Status append(const ExecRecord& record, bool horizon = false);
  Status write_new_log();
  Status maybe_compact();
  void note_finished(const ExecRecord& record);

  ExecutionStoreOptions options_;
  int lock_fd_ = -1;
  int log_fd_ = -1;
  std::uint64_t log_end_ = 0;
  std::map<std::string, ExecRecord, std::less<>> records_;
  std::vector<std::pair<std::string, std::uint32_t>> interrupted_;  // (job id, attempt) found at open
  std::uint64_t live_bytes_ = 0;                                    // framed bytes of the records kept
  std::int64_t horizon_ms_ = 0;
  // No finished record becomes prunable by time before this instant, nor by the bound before
  // next_bound_prune_ms_; prune() does not scan before then.
  std::int64_t next_time_prune_ms_ = 0;
  std::int64_t next_bound_prune_ms_ = 0;
  bool bound_warned_ = false;
  std::uint64_t compact_retry_bytes_ = 0;  // after a failed compaction, wait for the log to reach this
  std::uint64_t corrupt_records_skipped_ = 0;
  std::uint64_t torn_bytes_truncated_ = 0;
  std::uint64_t compactions_ = 0;
  std::string frame_buf_;
};

}  // namespace flotilla::agent
