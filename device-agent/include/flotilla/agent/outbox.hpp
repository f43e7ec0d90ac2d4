#pragma once
// Durable outbox of the device agent: readings wait here, on disk, until the broker acknowledges
// them, across broker outages, agent restarts, kill -9 and power loss.
//
// On-disk format (all integers little-endian, CRC = CRC32C/Castagnoli), inside OutboxOptions::dir:
//
//   outbox.lock   empty; flock()ed for the lifetime of an Outbox so two processes never share a dir.
//   outbox.log    append-only record log.
//     file header, 24 bytes, written once (new file via temp + fsync + rename + fsync dir):
//       [0,8)   magic "FLTOBXLG"
//       [8,12)  format version (1)
//       [12,16) CRC of bytes [16,24)
//       [16,24) id floor: the next id was at least this when the file was written, so ids stay
//               unique even if compaction left no record and the state file is lost.
//     then records, back to back:
//       [0,4)   magic 0x46 0x4C 0x52 0x31 ("FLR1")
//       [4,8)   CRC of bytes [8, 12 + len)
//       [8,12)  len: bytes that follow this field
//       [12,20) id (> 0, strictly increasing along the file)
//       [20,24) topic length t (1..65535)
//       [24,24+t) topic, then payload (the rest of len)
//     A record costs Outbox::kRecordOverhead (24) bytes plus topic and payload.
//   outbox.state  48 bytes, replaced atomically (outbox.state.tmp + fsync + rename + fsync dir):
//       [0,8) magic "FLTOBXST", [8,12) version (1), [12,16) CRC of [16,48),
//       [16,24) head id (first unacknowledged id), [24,32) next id, [32,40) dropped_unreported,
//       [40,48) reserved (0).
//
// Records with id < head are dead. Appends write only the log (one fdatasync); the state file is
// rewritten when an ack moves the head, when mark_dropped_reported() changes the count, before a
// compaction, on open and on destruction. Drops made by append() are not written at once: they
// follow from the durable log and the bound, and open() re-applies the bound to the persisted head,
// counting the same drops again (a crash loses no count; before a compaction the state is written
// because the rewritten log no longer holds the dropped records). Out-of-order acks above the head
// live only in memory: after a restart those records are delivered again (at least once).
//
// Recovery on open: the log is scanned; the first record whose magic, length, CRC or id order is
// wrong ends the log (a torn write or corruption): it and everything after it is truncated away
// and counted in corrupt_records_skipped(); ids are then advanced past any id the discarded bytes
// could have held, so no id is reused. A missing or invalid state file resets the head to the
// start of the log (records are redelivered, never lost). The size bound is enforced again on
// open. Compaction rewrites the live records into outbox.log.tmp, fsyncs and renames it over the
// log when dead bytes exceed both live bytes and OutboxOptions::compact_min_dead_bytes.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla::agent {

struct OutboxOptions {
  std::filesystem::path dir;              // created if missing (mode 0700)
  std::uint64_t max_bytes = 64ull << 20;  // bound on live (unacknowledged) record bytes incl. framing
  bool sync = true;                       // fdatasync after each append / head update (off only for tests/bench)
  // Compaction waits until dead bytes exceed this as well as the live bytes, so that a small
  // outbox is not rewritten on every ack. Bytes.
  std::uint64_t compact_min_dead_bytes = 1ull << 20;
};

struct OutboxRecord {
  std::uint64_t id;  // strictly increasing, never reused, survives restarts
  std::string topic;
  std::string payload;
};

// Durable FIFO of messages awaiting broker acknowledgement; owns the files in OutboxOptions::dir.
// Not thread-safe: owned and called by the agent's reactor thread only.
class Outbox {
 public:
  // Framing bytes per record, counted against max_bytes with the topic and the payload.
  static constexpr std::uint64_t kRecordOverhead = 24;
  static constexpr std::size_t kMaxTopicBytes = 65535;

  // Opens (creating if needed) the outbox in options.dir and recovers it.
  // Errors: io_error (dir not creatable/writable, read or sync failure; message names the path),
  // unavailable (another Outbox holds the dir), corruption (outbox.log is not a version-1 outbox
  // log; the file is left untouched), invalid_argument (empty dir or max_bytes too small).
  [[nodiscard]] static Result<std::unique_ptr<Outbox>> open(OutboxOptions options);

  Outbox(const Outbox&) = delete;
  Outbox& operator=(const Outbox&) = delete;
  ~Outbox();

  // Appends durably (when sync) and returns the record id. Drops oldest records first if the bound
  // would be exceeded; a single record larger than max_bytes is rejected with Errc::too_large.
  // Errors: too_large, invalid_argument (empty topic or topic over kMaxTopicBytes), io_error
  // (nothing was appended and nothing was dropped).
  [[nodiscard]] Result<std::uint64_t> append(std::string_view topic, std::string_view payload);

  // Up to max_count unacknowledged records with id > after_id, oldest first (after_id = 0: from the head).
  [[nodiscard]] std::vector<OutboxRecord> pending(std::uint64_t after_id, std::size_t max_count) const;

  // Marks a record delivered. Acks may arrive out of order; the head advances over the contiguous
  // acknowledged prefix and is persisted. Unknown or already-acked ids are ignored (returns ok).
  // Errors: io_error if the new head could not be persisted (the ack still holds in memory and
  // the write is retried by the next state change).
  [[nodiscard]] Status ack(std::uint64_t id);
  // ack() for several ids with at most one state write: a sync'd state write costs three syncs
  // (file, rename, directory), so the reactor should ack what arrived in one turn together.
  [[nodiscard]] Status ack_batch(std::span<const std::uint64_t> ids);

  [[nodiscard]] std::size_t size() const { return unacked_count_; }  // unacknowledged records
  [[nodiscard]] std::uint64_t bytes() const { return live_bytes_; }  // live bytes counted against max_bytes

  // Records dropped because of the bound and not yet reported; survives restarts.
  [[nodiscard]] std::uint64_t dropped_unreported() const { return dropped_unreported_; }
  // Called after a report of n dropped records was acknowledged by the broker: subtracts n
  // (saturating), persisted. Errors: io_error as for ack().
  [[nodiscard]] Status mark_dropped_reported(std::uint64_t n);

  // Recovery figures of the last open(), for the agent to log or report; not persisted.
  // Records (or unreadable fragments) discarded because of a torn or corrupt log.
  [[nodiscard]] std::uint64_t corrupt_records_skipped() const { return corrupt_records_skipped_; }
  [[nodiscard]] std::uint64_t corrupt_bytes_truncated() const { return corrupt_bytes_truncated_; }
  // True if outbox.state was present but invalid and the head was reset to the start of the log.
  [[nodiscard]] bool state_was_reset() const { return state_was_reset_; }

  [[nodiscard]] std::uint64_t head_id() const;                      // first unacknowledged id
  [[nodiscard]] std::uint64_t next_id() const { return next_id_; }  // id the next append gets
  [[nodiscard]] std::uint64_t log_file_bytes() const { return log_end_; }
  [[nodiscard]] std::filesystem::path log_path() const;

 private:
  struct Entry {
    std::uint64_t id;
    std::uint32_t size;  // framed bytes
    bool acked;          // acknowledged out of order, waiting for the head to pass it (no payload kept)
    std::string topic;
    std::string payload;
  };

  explicit Outbox(OutboxOptions options);

  Status lock_dir();
  Status load_state(std::uint64_t& head, std::uint64_t& next, bool& present);
  Status open_log(std::uint64_t head, std::uint64_t next, bool state_present);
  Status recover_log(int fd, std::uint64_t file_size, std::uint64_t head, std::uint64_t min_next);
  Status write_new_log();  // header + unacknowledged entries, atomically replacing outbox.log
  Status persist_state();
  void maybe_compact();
  bool mark_acked(std::uint64_t id);  // true if the head moved
  void pop_acked_prefix();
  void drop_front();

  OutboxOptions options_;
  int lock_fd_ = -1;
  int log_fd_ = -1;
  std::uint64_t log_end_ = 0;  // offset where the next record goes
  std::deque<Entry> entries_;  // front is the head; ids strictly increasing
  std::size_t unacked_count_ = 0;
  std::uint64_t live_bytes_ = 0;  // framed bytes of unacknowledged entries
  std::uint64_t next_id_ = 1;
  std::uint64_t dropped_unreported_ = 0;
  bool state_dirty_ = false;                    // in-memory state newer than outbox.state (drops, or a failed write)
  std::uint64_t compact_retry_dead_bytes_ = 0;  // after a failed compaction, wait for this much dead
  std::uint64_t corrupt_records_skipped_ = 0;
  std::uint64_t corrupt_bytes_truncated_ = 0;
  bool state_was_reset_ = false;
  std::string frame_buf_;
};

namespace detail {
// CRC32C (Castagnoli, reflected 0x82F63B78), table-driven; `crc` continues a previous call.
[[nodiscard]] std::uint32_t crc32c(std::string_view data, std::uint32_t crc = 0) noexcept;
}  // namespace detail

}  // namespace flotilla::agent
