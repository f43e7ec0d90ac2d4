#include "flotilla/agent/executions.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <system_error>
#include <tuple>
#include <utility>

#include "flotilla/agent/outbox.hpp"
#include "flotilla/core/log.hpp"

namespace flotilla::agent {

namespace {

constexpr std::string_view kLogFile = "executions.log";
constexpr std::string_view kLogTmpFile = "executions.log.tmp";
constexpr std::string_view kLockFile = "executions.lock";

constexpr std::string_view kLogMagic = "FLTEXLOG";
constexpr std::string_view kRecordMagic = "FLX1";
constexpr std::uint32_t kFormatVersion = 1;
constexpr std::uint64_t kHeaderSize = 32;
// magic, CRC and len precede the bytes len counts.
constexpr std::uint64_t kFramePrefix = 12;
// kind, attempt, updated_ms, expires_ms, job id length.
constexpr std::uint64_t kFixedBody = 22;
constexpr std::uint64_t kMinFrame = kFramePrefix + kFixedBody;
// Record kinds: ExecState values, and a horizon record.
constexpr std::uint8_t kHorizonKind = 3;
constexpr std::size_t kReadWindow = 1 << 20;
constexpr std::size_t kWriteChunk = 1 << 20;
constexpr std::int64_t kNever = std::numeric_limits<std::int64_t>::max();

void put_u32(char* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}
void put_u64(char* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFFu);
}
std::uint32_t get_u32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
std::uint64_t get_u64(const char* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::int64_t saturating_add(std::int64_t a, std::int64_t b) {
  if (b > 0 && a > kNever - b) return kNever;
  if (b < 0 && a < std::numeric_limits<std::int64_t>::min() - b) return std::numeric_limits<std::int64_t>::min();
  return a + b;
}

std::uint64_t frame_size(const ExecRecord& r) { return kFramePrefix + kFixedBody + r.job_id.size() + r.result.size(); }

// A decoded record: an execution, or a horizon (in record.updated_ms).
struct Frame {
  bool horizon = false;
  ExecRecord record;
};

// CRC of a record: its file offset, then the bytes after the len field's position 8.
std::uint32_t frame_crc(std::uint64_t offset, std::string_view covered) {
  std::array<char, 8> off{};
  put_u64(off.data(), offset);
  return detail::crc32c(covered, detail::crc32c(std::string_view(off.data(), off.size())));
}

// Appends the frame of `r` (a horizon record if `horizon`), to be written at file offset
// `offset`, to `buf`.
void encode_frame(std::string& buf, std::uint64_t offset, const ExecRecord& r, bool horizon = false) {
  const std::size_t start = buf.size();
  const std::uint64_t size = frame_size(r);
  buf.resize(start + size);
  char* p = buf.data() + start;
  std::memcpy(p, kRecordMagic.data(), kRecordMagic.size());
  put_u32(p + 8, static_cast<std::uint32_t>(size - kFramePrefix));
  p[12] = static_cast<char>(horizon ? kHorizonKind : static_cast<std::uint8_t>(r.state));
  put_u32(p + 13, r.attempt);
  put_u64(p + 17, static_cast<std::uint64_t>(r.updated_ms));
  put_u64(p + 25, static_cast<std::uint64_t>(r.expires_ms));
  p[33] = static_cast<char>(r.job_id.size());
  std::copy(r.job_id.begin(), r.job_id.end(), p + 34);
  std::copy(r.result.begin(), r.result.end(), p + 34 + r.job_id.size());
  put_u32(p + 4, frame_crc(offset, std::string_view(p + 8, size - 8)));
}

Error sys_error(const std::filesystem::path& path, std::string_view what, int err) {
  return make_error(Errc::io_error, "{}: {}: {}", path.string(), what, std::generic_category().message(err));
}

class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Returns 0 or an errno value.
int write_all(int fd, const char* data, std::size_t size, std::uint64_t offset) {
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, data, size, static_cast<off_t>(offset));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    data += n;
    size -= static_cast<std::size_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
  return 0;
}

// Reads until size bytes or end of file; returns the count, or -errno.
ssize_t read_full(int fd, char* data, std::size_t size, std::uint64_t offset) {
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = ::pread(fd, data + done, size - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) break;
    done += static_cast<std::size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

Status fsync_dir(const std::filesystem::path& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0) return sys_error(dir, "open directory", errno);
  if (::fsync(fd.get()) != 0) return sys_error(dir, "fsync directory", errno);
  return {};
}

// Sequential reads over the log through a window, so recovery does not read per field.
class Reader {
 public:
  Reader(int fd, std::uint64_t file_size, const std::filesystem::path& path)
      : fd_(fd), file_size_(file_size), path_(path) {}

  // n bytes at off (off + n <= file size), valid until the next call.
  Result<const char*> at(std::uint64_t off, std::size_t n) {
    if (off >= window_off_ && off + n <= window_off_ + window_.size()) return window_.data() + (off - window_off_);
    const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(std::max(n, kReadWindow), file_size_ - off));
    window_.resize(want);
    const ssize_t got = read_full(fd_, window_.data(), want, off);
    if (got < 0) return sys_error(path_, "read", static_cast<int>(-got));
    if (static_cast<std::size_t>(got) < n) {
      window_.clear();
      return make_error(Errc::io_error, "{}: file shrank while reading at offset {}", path_.string(), off);
    }
    window_.resize(static_cast<std::size_t>(got));
    window_off_ = off;
    return window_.data();
  }

 private:
  int fd_;
  std::uint64_t file_size_;
  const std::filesystem::path& path_;
  std::string window_;
  std::uint64_t window_off_ = 0;
};

// The record at `off`, or nullopt if the bytes there are not an intact record.
Result<std::optional<Frame>> parse_frame(Reader& reader, std::uint64_t off, std::uint64_t file_size) {
  if (off + kMinFrame > file_size) return std::optional<Frame>();
  auto prefix = reader.at(off, kFramePrefix);
  if (!prefix) return std::move(prefix).error();
  if (std::memcmp(*prefix, kRecordMagic.data(), kRecordMagic.size()) != 0) return std::optional<Frame>();
  const std::uint32_t crc = get_u32(*prefix + 4);
  const std::uint64_t len = get_u32(*prefix + 8);
  if (len < kFixedBody || len + kFramePrefix > ExecutionStore::kMaxRecordBytes ||
      off + kFramePrefix + len > file_size) {
    return std::optional<Frame>();
  }
  auto bytes = reader.at(off, static_cast<std::size_t>(kFramePrefix + len));
  if (!bytes) return std::move(bytes).error();
  const char* p = *bytes;
  if (frame_crc(off, std::string_view(p + 8, static_cast<std::size_t>(len + 4))) != crc) {
    return std::optional<Frame>();
  }
  const auto kind = static_cast<std::uint8_t>(p[12]);
  const std::uint32_t attempt = get_u32(p + 13);
  const std::size_t id_len = static_cast<unsigned char>(p[33]);
  Frame f;
  f.record.updated_ms = static_cast<std::int64_t>(get_u64(p + 17));
  f.record.expires_ms = static_cast<std::int64_t>(get_u64(p + 25));
  if (kind == kHorizonKind) {
    if (attempt != 0 || id_len != 0 || len != kFixedBody) return std::optional<Frame>();
    f.horizon = true;
    return std::optional<Frame>(std::move(f));
  }
  if ((kind != static_cast<std::uint8_t>(ExecState::started) &&
       kind != static_cast<std::uint8_t>(ExecState::finished)) ||
      attempt == 0 || id_len == 0 || id_len > ExecutionStore::kMaxJobIdBytes || kFixedBody + id_len > len) {
    return std::optional<Frame>();
  }
  ExecRecord& r = f.record;
  r.state = static_cast<ExecState>(kind);
  r.attempt = attempt;
  r.job_id.assign(p + 34, id_len);
  r.result.assign(p + 34 + id_len, static_cast<std::size_t>(len - kFixedBody - id_len));
  if (r.state == ExecState::started && !r.result.empty()) return std::optional<Frame>();
  return std::optional<Frame>(std::move(f));
}

}  // namespace

ExecutionStore::ExecutionStore(ExecutionStoreOptions options) : options_(std::move(options)) {}

ExecutionStore::~ExecutionStore() {
  if (log_fd_ >= 0) ::close(log_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::filesystem::path ExecutionStore::log_path() const { return options_.dir / kLogFile; }

Result<std::unique_ptr<ExecutionStore>> ExecutionStore::open(const ExecutionStoreOptions& options) {
  if (options.dir.empty()) return make_error(Errc::invalid_argument, "execution store: dir is empty");
  if (options.max_records == 0) return make_error(Errc::invalid_argument, "execution store: max_records is 0");
  if (options.retention.count() < 0) return make_error(Errc::invalid_argument, "execution store: negative retention");
  ExecutionStoreOptions o = options;
  o.dir = o.dir.lexically_normal();
  if (!o.dir.has_filename()) o.dir = o.dir.parent_path();
  const std::filesystem::path& dir = o.dir;
  if (const auto parent = dir.parent_path(); !parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return sys_error(dir, fmt::format("create parent directory {}", parent.string()), ec.value());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return sys_error(dir, "create directory", errno);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return sys_error(dir, "stat", errno);
  if (!S_ISDIR(st.st_mode)) return sys_error(dir, "execution store dir", ENOTDIR);

  std::unique_ptr<ExecutionStore> store(new ExecutionStore(std::move(o)));
  if (auto s = store->lock_dir(); !s) return std::move(s).error();
  (void)::unlink((store->options_.dir / kLogTmpFile).c_str());
  if (auto s = store->open_log(); !s) return std::move(s).error();
  for (const auto& [id, rec] : store->records_) {
    if (rec.state == ExecState::started) store->interrupted_.emplace_back(id, rec.attempt);
  }
  (void)store->maybe_compact();
  return store;
}

Status ExecutionStore::lock_dir() {
  const auto path = options_.dir / kLockFile;
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return sys_error(path, "open", errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return make_error(Errc::unavailable, "{}: the execution store is in use by another process",
                        options_.dir.string());
    }
    return sys_error(path, "flock", errno);
  }
  return {};
}

Status ExecutionStore::open_log() {
  const auto path = log_path();
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno != ENOENT) return sys_error(path, "open", errno);
    return write_new_log();  // a new store (a log is only ever created whole, by rename)
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error(path, "stat", errno);
  const auto file_size = static_cast<std::uint64_t>(st.st_size);
  if (file_size < kHeaderSize) {
    return make_error(Errc::corruption, "{}: {} bytes, shorter than the log header", path.string(), file_size);
  }
  std::array<char, kHeaderSize> header{};
  const ssize_t n = read_full(fd.get(), header.data(), header.size(), 0);
  if (n < 0) return sys_error(path, "read", static_cast<int>(-n));
  if (static_cast<std::size_t>(n) != header.size()) {
    return make_error(Errc::io_error, "{}: short read of the header", path.string());
  }
  if (std::memcmp(header.data(), kLogMagic.data(), kLogMagic.size()) != 0) {
    return make_error(Errc::corruption, "{}: not a Flotilla execution log (bad magic)", path.string());
  }
  if (const auto version = get_u32(header.data() + 8); version != kFormatVersion) {
    return make_error(Errc::corruption, "{}: unsupported execution log version {}", path.string(), version);
  }
  if (get_u32(header.data() + 12) != detail::crc32c(std::string_view(header.data() + 16, kHeaderSize - 16))) {
    return make_error(Errc::corruption,
                      "{}: log header checksum mismatch (the replay horizon is lost; move the directory away to "
                      "start afresh)",
                      path.string());
  }
  horizon_ms_ = static_cast<std::int64_t>(get_u64(header.data() + 16));
  log_fd_ = fd.release();
  return recover(log_fd_, file_size);
}

Status ExecutionStore::recover(int fd, std::uint64_t file_size) {
  const auto path = log_path();
  Reader reader(fd, file_size, path);
  std::uint64_t off = kHeaderSize;
  std::optional<std::int64_t> latest;  // the latest instant any intact record names
  bool damaged = false;
  while (off < file_size) {
    auto frame = parse_frame(reader, off, file_size);
    if (!frame) return std::move(frame).error();
    if (frame->has_value()) {
      ExecRecord& r = (*frame)->record;
      off += frame_size(r);
      if ((*frame)->horizon) {
        horizon_ms_ = std::max(horizon_ms_, r.updated_ms);
      } else {
        latest = std::max(latest.value_or(r.updated_ms), r.updated_ms);
        apply(std::move(r));
      }
      continue;
    }
    // Look for an intact record after the bad bytes: if there is one, they are damage inside
    // the log; if not, an append that never completed.
    std::optional<std::uint64_t> next;
    for (std::uint64_t pos = off + 1; pos + kMinFrame <= file_size; ++pos) {
      auto magic = reader.at(pos, kRecordMagic.size());
      if (!magic) return std::move(magic).error();
      if (std::memcmp(*magic, kRecordMagic.data(), kRecordMagic.size()) != 0) continue;
      auto candidate = parse_frame(reader, pos, file_size);
      if (!candidate) return std::move(candidate).error();
      if (candidate->has_value()) {
        next = pos;
        break;
      }
    }
    if (!next) {
      torn_bytes_truncated_ = file_size - off;
      if (::ftruncate(fd, static_cast<off_t>(off)) != 0) return sys_error(path, "truncate torn tail", errno);
      if (options_.sync && ::fdatasync(fd) != 0) return sys_error(path, "fdatasync", errno);
      log::warn("{}: truncated a torn tail of {} bytes at offset {}", path.string(), torn_bytes_truncated_, off);
      break;
    }
    log::error("{}: skipped {} damaged bytes at offset {}", path.string(), *next - off, off);
    ++corrupt_records_skipped_;
    damaged = true;
    off = *next;
  }
  log_end_ = std::min(off, file_size);
  if (damaged) {
    // The lost bytes held executions recorded no later than the latest intact record (the log
    // is appended in time order), so a replay of one of them is a document issued before then.
    if (latest) horizon_ms_ = std::max(horizon_ms_, saturating_add(*latest, 1));
    log::error("{}: {} damaged region(s); documents issued before {} ms are now refused", path.string(),
               corrupt_records_skipped_, horizon_ms_);
    if (auto s = write_new_log(); !s) {
      // The log stays readable: the damage is skipped again at the next open.
      log::error("{}: cannot rewrite the log without the damage: {}", path.string(), s.error().message);
    }
  }
  return {};
}

void ExecutionStore::apply(ExecRecord record) {
  auto it = records_.find(record.job_id);
  if (it == records_.end()) {
    live_bytes_ += frame_size(record);
    std::string id = record.job_id;
    records_.emplace(std::move(id), std::move(record));
    return;
  }
  ExecRecord& cur = it->second;
  if (record.attempt < cur.attempt || (record.attempt == cur.attempt && record.state < cur.state)) return;
  live_bytes_ -= frame_size(cur);
  live_bytes_ += frame_size(record);
  cur = std::move(record);
}

Status ExecutionStore::append(const ExecRecord& record, bool horizon) {
  frame_buf_.clear();
  encode_frame(frame_buf_, log_end_, record, horizon);
  int err = write_all(log_fd_, frame_buf_.data(), frame_buf_.size(), log_end_);
  if (err == 0 && options_.sync && ::fdatasync(log_fd_) != 0) err = errno;
  if (err != 0) {
    // Best effort: cut off a partial frame. Should that fail too, the next append overwrites it
    // at the same offset, and recovery treats any leftover as a torn tail.
    (void)::ftruncate(log_fd_, static_cast<off_t>(log_end_));
    return sys_error(log_path(), "append", err);
  }
  log_end_ += frame_buf_.size();
  return {};
}

Status ExecutionStore::write_new_log() {
  const auto tmp = options_.dir / kLogTmpFile;
  const auto path = log_path();
  UniqueFd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return sys_error(tmp, "create", errno);

  std::string buf;
  buf.reserve(kWriteChunk + 64 * 1024);
  buf.resize(kHeaderSize);
  std::memcpy(buf.data(), kLogMagic.data(), kLogMagic.size());
  put_u32(buf.data() + 8, kFormatVersion);
  put_u64(buf.data() + 16, static_cast<std::uint64_t>(horizon_ms_));
  put_u32(buf.data() + 12, detail::crc32c(std::string_view(buf.data() + 16, kHeaderSize - 16)));

  std::uint64_t written = 0;
  auto flush = [&]() -> int {
    const int e = write_all(fd.get(), buf.data(), buf.size(), written);
    written += buf.size();
    buf.clear();
    return e;
  };
  int err = 0;
  for (const auto& [id, rec] : records_) {
    encode_frame(buf, written + buf.size(), rec);
    if (buf.size() >= kWriteChunk && (err = flush()) != 0) break;
  }
  if (err == 0) err = flush();
  if (err == 0 && options_.sync && ::fdatasync(fd.get()) != 0) err = errno;
  if (err != 0) {
    (void)::unlink(tmp.c_str());
    return sys_error(tmp, "write", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    (void)::unlink(tmp.c_str());
    return sys_error(path, "rename", err);
  }
  // The new file is the log now, whatever happens to the directory sync.
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = fd.release();
  log_end_ = written;
  return options_.sync ? fsync_dir(options_.dir) : Status();
}

Status ExecutionStore::maybe_compact() {
  if (log_end_ <= options_.compact_min_bytes || log_end_ <= 2 * (live_bytes_ + kHeaderSize) ||
      log_end_ < compact_retry_bytes_) {
    return {};
  }
  if (auto s = write_new_log(); !s) {
    // Compaction is an optimisation; the old log stays valid. While the disk fails (often: is
    // full), do not rewrite on every call: wait until the log has doubled.
    compact_retry_bytes_ = 2 * log_end_;
    log::error("execution store compaction failed: {}", s.error().message);
    return s;
  }
  compact_retry_bytes_ = 0;
  ++compactions_;
  return {};
}

const ExecRecord* ExecutionStore::find(std::string_view job_id) const {
  const auto it = records_.find(job_id);
  return it == records_.end() ? nullptr : &it->second;
}

Status ExecutionStore::mark_started(std::string_view job_id, std::uint32_t attempt, std::int64_t expires_ms,
                                    std::int64_t now_ms) {
  if (job_id.empty() || job_id.size() > kMaxJobIdBytes) {
    return make_error(Errc::invalid_argument, "job id of {} bytes is outside 1..{}", job_id.size(), kMaxJobIdBytes);
  }
  if (attempt == 0) return make_error(Errc::invalid_argument, "job {:?}: attempt 0 (attempts start at 1)", job_id);
  if (const ExecRecord* cur = find(job_id); cur != nullptr && cur->attempt >= attempt) {
    return make_error(Errc::already_exists, "job {:?} attempt {} is already recorded (attempt {}, {})", job_id, attempt,
                      cur->attempt, cur->state == ExecState::started ? "started" : "finished");
  }
  ExecRecord rec{std::string(job_id), attempt, ExecState::started, now_ms, expires_ms, {}};
  if (auto s = append(rec); !s) return s;
  apply(std::move(rec));
  (void)prune(now_ms);
  return {};
}

Status ExecutionStore::mark_finished(std::string_view job_id, std::uint32_t attempt, std::string result,
                                     std::int64_t now_ms) {
  const ExecRecord* cur = find(job_id);
  if (cur == nullptr)
    return make_error(Errc::not_found, "job {:?}: no execution recorded", job_id.substr(0, kMaxJobIdBytes));
  if (cur->attempt != attempt) {
    return make_error(Errc::invalid_argument, "job {:?}: attempt {} is recorded, not attempt {}", job_id, cur->attempt,
                      attempt);
  }
  if (cur->state == ExecState::finished) {
    return make_error(Errc::already_exists, "job {:?} attempt {} is already finished", job_id, attempt);
  }
  ExecRecord rec{cur->job_id, attempt, ExecState::finished, now_ms, cur->expires_ms, std::move(result)};
  if (frame_size(rec) > kMaxRecordBytes) {
    return make_error(Errc::too_large, "job {:?}: a result of {} bytes exceeds the record bound of {} bytes", job_id,
                      rec.result.size(), kMaxRecordBytes);
  }
  if (auto s = append(rec); !s) return s;
  note_finished(rec);
  apply(std::move(rec));
  (void)prune(now_ms);
  return {};
}

void ExecutionStore::note_finished(const ExecRecord& record) {
  const std::int64_t by_time = std::max(
      record.expires_ms, saturating_add(record.updated_ms, static_cast<std::int64_t>(options_.retention.count())));
  next_time_prune_ms_ = std::min(next_time_prune_ms_, by_time);
  next_bound_prune_ms_ = std::min(next_bound_prune_ms_, record.expires_ms);
}

Status ExecutionStore::prune(std::int64_t now_ms) {
  const bool over = records_.size() > options_.max_records;
  if (now_ms < next_time_prune_ms_ && !(over && now_ms >= next_bound_prune_ms_)) return maybe_compact();

  const auto retention = static_cast<std::int64_t>(options_.retention.count());
  auto forget = [this](std::map<std::string, ExecRecord, std::less<>>::iterator it) {
    horizon_ms_ = std::max(horizon_ms_, saturating_add(it->second.updated_ms, 1));
    live_bytes_ -= frame_size(it->second);
    return records_.erase(it);
  };
  const std::int64_t horizon_before = horizon_ms_;
  std::int64_t next_time = kNever;
  std::int64_t next_bound = kNever;
  std::vector<std::map<std::string, ExecRecord, std::less<>>::iterator> expired;  // prunable by the bound
  for (auto it = records_.begin(); it != records_.end();) {
    const ExecRecord& r = it->second;
    if (r.state != ExecState::finished) {
      ++it;
      continue;
    }
    const std::int64_t by_time = std::max(r.expires_ms, saturating_add(r.updated_ms, retention));
    if (by_time <= now_ms) {
      it = forget(it);
      continue;
    }
    next_time = std::min(next_time, by_time);
    if (r.expires_ms <= now_ms) {
      expired.push_back(it);
    } else {
      next_bound = std::min(next_bound, r.expires_ms);
    }
    ++it;
  }
  if (records_.size() > options_.max_records) {
    std::sort(expired.begin(), expired.end(), [](const auto& a, const auto& b) {
      return std::tie(a->second.updated_ms, a->first) < std::tie(b->second.updated_ms, b->first);
    });
    std::size_t used = 0;
    while (records_.size() > options_.max_records && used < expired.size()) forget(expired[used++]);
    expired.erase(expired.begin(), expired.begin() + static_cast<std::ptrdiff_t>(used));
    if (records_.size() > options_.max_records) {
      if (!bound_warned_) {
        log::warn(
            "execution store: {} records exceed max_records {}; the rest are unfinished or not expired and are "
            "kept",
            records_.size(), options_.max_records);
      }
      bound_warned_ = true;
    } else {
      bound_warned_ = false;
    }
  }
  // Expired records still kept may be dropped as soon as the bound is exceeded.
  for (const auto& it : expired) next_bound = std::min(next_bound, it->second.expires_ms);
  next_time_prune_ms_ = next_time;
  next_bound_prune_ms_ = next_bound;
  const std::uint64_t compactions_before = compactions_;
  auto compacted = maybe_compact();
  if (horizon_ms_ != horizon_before && compactions_ == compactions_before) {
    // Until the next compaction the forgotten records are still in the log and would come back
    // at the next open; the horizon record keeps the horizon from moving back with them.
    ExecRecord h;
    h.updated_ms = horizon_ms_;
    if (auto s = append(h, true); !s) {
      log::error("execution store: cannot record the horizon: {}", s.error().message);
      return s;
    }
  }
  return compacted;
}

std::vector<const ExecRecord*> ExecutionStore::interrupted() const {
  std::vector<const ExecRecord*> out;
  for (const auto& [id, attempt] : interrupted_) {
    const ExecRecord* r = find(id);
    if (r != nullptr && r->attempt == attempt && r->state == ExecState::started) out.push_back(r);
  }
  return out;
}

}  // namespace flotilla::agent
