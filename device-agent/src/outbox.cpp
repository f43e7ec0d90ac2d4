#include "flotilla/agent/outbox.hpp"

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
#include <utility>

namespace flotilla::agent {

namespace {

constexpr std::string_view kLogFile = "outbox.log";
constexpr std::string_view kLogTmpFile = "outbox.log.tmp";
constexpr std::string_view kStateFile = "outbox.state";
constexpr std::string_view kStateTmpFile = "outbox.state.tmp";
constexpr std::string_view kLockFile = "outbox.lock";

constexpr std::string_view kLogMagic = "FLTOBXLG";
constexpr std::string_view kStateMagic = "FLTOBXST";
constexpr std::string_view kRecordMagic = "FLR1";
constexpr std::uint32_t kFormatVersion = 1;
constexpr std::uint64_t kLogHeaderSize = 24;
constexpr std::size_t kStateSize = 48;
// magic, crc and len precede the bytes that len counts.
constexpr std::uint64_t kFramePrefix = 12;
// Smallest valid record: framing plus a one-byte topic and an empty payload.
constexpr std::uint64_t kMinRecordSize = Outbox::kRecordOverhead + 1;
constexpr std::size_t kReadWindow = 1 << 20;
constexpr std::size_t kWriteChunk = 1 << 20;

constexpr std::array<std::uint32_t, 256> make_crc32c_table() {
  std::array<std::uint32_t, 256> table{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr auto kCrc32cTable = make_crc32c_table();

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

Error sys_error(const std::filesystem::path& path, std::string_view what, int err) {
  return make_error(Errc::io_error, "{}: {}: {}", path.string(), what, std::generic_category().message(err));
}

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  [[nodiscard]] int get() const { return fd_; }
  [[nodiscard]] int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
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

void remove_if_present(const std::filesystem::path& path) { (void)::unlink(path.c_str()); }

// Sequential reader over the log with a window buffer, so recovery does not issue a read per field.
class LogReader {
 public:
  LogReader(int fd, std::uint64_t file_size, const std::filesystem::path& path)
      : fd_(fd), file_size_(file_size), path_(path) {}

  // Pointer to n bytes at off (off + n <= file size), valid until the next call.
  Result<const char*> at(std::uint64_t off, std::size_t n) {
    if (off >= window_off_ && off + n <= window_off_ + window_.size()) {
      return window_.data() + (off - window_off_);
    }
    const std::size_t want = static_cast<std::size_t>(
        std::min<std::uint64_t>(std::max(n, kReadWindow), file_size_ - off));
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

struct FrameView {
  std::uint64_t id;
  std::uint32_t size;
  std::string_view topic;  // into the reader's window
  std::string_view payload;
};

// A valid record at off, nullopt if the bytes there are not one (torn, corrupt, out of order),
// or an error if the file cannot be read.
Result<std::optional<FrameView>> parse_frame(LogReader& reader, std::uint64_t off, std::uint64_t file_size,
                                             std::uint64_t prev_id) {
  const std::optional<FrameView> bad;
  if (file_size - off < Outbox::kRecordOverhead) return bad;
  auto head = reader.at(off, Outbox::kRecordOverhead);
  if (!head) return std::move(head).error();
  if (std::memcmp(*head, kRecordMagic.data(), kRecordMagic.size()) != 0) return bad;
  const std::uint32_t crc = get_u32(*head + 4);
  const std::uint64_t len = get_u32(*head + 8);
  if (len < kMinRecordSize - kFramePrefix || len > file_size - off - kFramePrefix) return bad;
  const std::uint64_t size = kFramePrefix + len;
  if (size > std::numeric_limits<std::uint32_t>::max()) return bad;
  auto whole = reader.at(off, static_cast<std::size_t>(size));
  if (!whole) return std::move(whole).error();
  const char* p = *whole;
  if (detail::crc32c(std::string_view(p + 8, static_cast<std::size_t>(4 + len))) != crc) return bad;
  const std::uint64_t id = get_u64(p + 12);
  const std::uint64_t topic_len = get_u32(p + 20);
  if (id == 0 || id <= prev_id) return bad;
  if (topic_len == 0 || topic_len > Outbox::kMaxTopicBytes || topic_len > len - 12) return bad;
  const auto payload_len = static_cast<std::size_t>(len - 12 - topic_len);
  return std::optional<FrameView>(FrameView{id, static_cast<std::uint32_t>(size),
                                            std::string_view(p + 24, static_cast<std::size_t>(topic_len)),
                                            std::string_view(p + 24 + topic_len, payload_len)});
}

void encode_frame(std::string& out, std::uint64_t id, std::string_view topic, std::string_view payload) {
  const std::size_t start = out.size();
  const std::size_t size = Outbox::kRecordOverhead + topic.size() + payload.size();
  out.resize(start + Outbox::kRecordOverhead);
  char* p = out.data() + start;
  std::memcpy(p, kRecordMagic.data(), kRecordMagic.size());
  put_u32(p + 8, static_cast<std::uint32_t>(size - kFramePrefix));
  put_u64(p + 12, id);
  put_u32(p + 20, static_cast<std::uint32_t>(topic.size()));
  out.append(topic);
  out.append(payload);
  p = out.data() + start;
  put_u32(p + 4, detail::crc32c(std::string_view(p + 8, size - 8)));
}

}  // namespace

namespace detail {

std::uint32_t crc32c(std::string_view data, std::uint32_t crc) noexcept {
  crc = ~crc;
  for (const char ch : data) {
    crc = kCrc32cTable[(crc ^ static_cast<unsigned char>(ch)) & 0xFFu] ^ (crc >> 8);
  }
  return ~crc;
}

}  // namespace detail

Outbox::Outbox(OutboxOptions options) : options_(std::move(options)) {}

Outbox::~Outbox() {
  if (state_dirty_ && log_fd_ >= 0) (void)persist_state();
  if (log_fd_ >= 0) ::close(log_fd_);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

std::filesystem::path Outbox::log_path() const { return options_.dir / kLogFile; }

std::uint64_t Outbox::head_id() const { return entries_.empty() ? next_id_ : entries_.front().id; }

Result<std::unique_ptr<Outbox>> Outbox::open(OutboxOptions options) {
  if (options.dir.empty()) return make_error(Errc::invalid_argument, "outbox dir: must not be empty");
  if (options.max_bytes < kMinRecordSize) {
    return make_error(Errc::invalid_argument, "outbox max_bytes: {} is below the smallest record ({} bytes)",
                      options.max_bytes, kMinRecordSize);
  }
  options.dir = options.dir.lexically_normal();
  if (!options.dir.has_filename()) options.dir = options.dir.parent_path();

  const std::filesystem::path& dir = options.dir;
  if (const auto parent = dir.parent_path(); !parent.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(parent, ec);
    if (ec) return sys_error(dir, fmt::format("create parent directory {}", parent.string()), ec.value());
  }
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return sys_error(dir, "create directory", errno);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) return sys_error(dir, "stat", errno);
  if (!S_ISDIR(st.st_mode)) return sys_error(dir, "outbox dir", ENOTDIR);

  std::unique_ptr<Outbox> box(new Outbox(std::move(options)));
  if (auto s = box->lock_dir(); !s) return std::move(s).error();
  remove_if_present(box->options_.dir / kLogTmpFile);
  remove_if_present(box->options_.dir / kStateTmpFile);

  std::uint64_t head = 0;
  std::uint64_t next = 1;
  bool state_present = false;
  if (auto s = box->load_state(head, next, state_present); !s) return std::move(s).error();
  if (auto s = box->open_log(head, next, state_present); !s) return std::move(s).error();

  while (box->live_bytes_ > box->options_.max_bytes) box->drop_front();
  // Always written: records the recovered head, next id (including ids skipped past a corrupt
  // tail) and drop count, and proves the directory is writable.
  if (auto s = box->persist_state(); !s) return std::move(s).error();
  box->maybe_compact();
  return box;
}

Status Outbox::lock_dir() {
  const auto path = options_.dir / kLockFile;
  lock_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) return sys_error(path, "open", errno);
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    if (errno == EWOULDBLOCK) {
      return make_error(Errc::unavailable, "{}: outbox is in use by another Outbox or process", options_.dir.string());
    }
    return sys_error(path, "flock", errno);
  }
  return {};
}

Status Outbox::load_state(std::uint64_t& head, std::uint64_t& next, bool& present) {
  const auto path = options_.dir / kStateFile;
  present = false;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT) return {};
    return sys_error(path, "open", errno);
  }
  std::array<char, kStateSize + 1> buf{};
  const ssize_t n = read_full(fd.get(), buf.data(), buf.size(), 0);
  if (n < 0) return sys_error(path, "read", static_cast<int>(-n));
  const char* p = buf.data();
  const bool valid = static_cast<std::size_t>(n) == kStateSize &&
                     std::memcmp(p, kStateMagic.data(), kStateMagic.size()) == 0 && get_u32(p + 8) == kFormatVersion &&
                     get_u32(p + 12) == detail::crc32c(std::string_view(p + 16, kStateSize - 16)) &&
                     get_u64(p + 24) != 0 && get_u64(p + 16) <= get_u64(p + 24);
  if (!valid) {
    state_was_reset_ = true;
    return {};
  }
  head = get_u64(p + 16);
  next = get_u64(p + 24);
  dropped_unreported_ = get_u64(p + 32);
  present = true;
  return {};
}

Status Outbox::open_log(std::uint64_t head, std::uint64_t next, bool state_present) {
  const auto path = log_path();
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (fd.get() < 0 && errno != ENOENT) return sys_error(path, "open", errno);
  std::uint64_t file_size = 0;
  if (fd.get() >= 0) {
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return sys_error(path, "stat", errno);
    file_size = static_cast<std::uint64_t>(st.st_size);
  }
  if (fd.get() < 0 || file_size < kLogHeaderSize) {
    // No log, or one whose creation never completed (the header is written before the rename,
    // so this only follows a crash with sync off): nothing to recover from it.
    if (fd.get() < 0 && state_present && head < next) corrupt_records_skipped_ += next - head;
    next_id_ = next;
    return write_new_log();
  }

  std::array<char, kLogHeaderSize> header{};
  const ssize_t n = read_full(fd.get(), header.data(), header.size(), 0);
  if (n < 0) return sys_error(path, "read", static_cast<int>(-n));
  if (static_cast<std::size_t>(n) != header.size()) {
    return make_error(Errc::io_error, "{}: short read of the header", path.string());
  }
  if (std::memcmp(header.data(), kLogMagic.data(), kLogMagic.size()) != 0) {
    return make_error(Errc::corruption, "{}: not a Flotilla outbox log (bad magic)", path.string());
  }
  if (const auto version = get_u32(header.data() + 8); version != kFormatVersion) {
    return make_error(Errc::corruption, "{}: unsupported outbox log version {}", path.string(), version);
  }
  if (get_u32(header.data() + 12) != detail::crc32c(std::string_view(header.data() + 16, 8))) {
    return make_error(Errc::corruption, "{}: log header checksum mismatch", path.string());
  }
  const std::uint64_t id_floor = get_u64(header.data() + 16);
  if (auto s = recover_log(fd.get(), file_size, head, std::max(next, id_floor)); !s) return s;
  log_fd_ = fd.release();
  return {};
}

Status Outbox::recover_log(int fd, std::uint64_t file_size, std::uint64_t head, std::uint64_t min_next) {
  const auto path = log_path();
  LogReader reader(fd, file_size, path);
  std::uint64_t off = kLogHeaderSize;
  std::uint64_t last_id = 0;
  while (off < file_size) {
    auto frame = parse_frame(reader, off, file_size, last_id);
    if (!frame) return std::move(frame).error();
    if (!frame->has_value()) break;
    const FrameView& f = **frame;
    if (f.id >= head) {
      entries_.push_back(Entry{f.id, f.size, false, std::string(f.topic), std::string(f.payload)});
      live_bytes_ += f.size;
      ++unacked_count_;
    }
    last_id = f.id;
    off += f.size;
  }

  std::uint64_t id_skip = 0;
  std::uint64_t max_id = last_id;
  if (off < file_size) {
    // Count what is lost: the bad record plus any intact records behind it, found by scanning
    // for the record magic. Their ids and the bytes nobody can parse bound the ids the previous
    // run may have handed out, so none of them is given out again.
    const std::uint64_t good_end = off;
    std::uint64_t unparsed = 0;
    corrupt_records_skipped_ = 1;
    std::uint64_t pos = good_end;
    std::uint64_t region_start = good_end;
    ++pos;
    while (pos + kMinRecordSize <= file_size) {
      auto magic = reader.at(pos, kRecordMagic.size());
      if (!magic) return std::move(magic).error();
      if (std::memcmp(*magic, kRecordMagic.data(), kRecordMagic.size()) != 0) {
        ++pos;
        continue;
      }
      auto frame = parse_frame(reader, pos, file_size, max_id);
      if (!frame) return std::move(frame).error();
      if (!frame->has_value()) {
        ++pos;
        continue;
      }
      ++corrupt_records_skipped_;
      unparsed += pos - region_start;
      max_id = (*frame)->id;
      pos += (*frame)->size;
      region_start = pos;
    }
    unparsed += file_size - std::min(region_start, file_size);
    id_skip = (unparsed + kMinRecordSize - 1) / kMinRecordSize;
    corrupt_bytes_truncated_ = file_size - good_end;

    if (::ftruncate(fd, static_cast<off_t>(good_end)) != 0) return sys_error(path, "truncate corrupt tail", errno);
    if (options_.sync && ::fdatasync(fd) != 0) return sys_error(path, "fdatasync", errno);
  }
  log_end_ = off;
  next_id_ = std::max(min_next, max_id + 1) + id_skip;
  return {};
}

Status Outbox::write_new_log() {
  const auto tmp = options_.dir / kLogTmpFile;
  const auto path = log_path();
  UniqueFd fd(::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return sys_error(tmp, "create", errno);

  std::string buf;
  buf.reserve(kWriteChunk + 64 * 1024);
  buf.resize(kLogHeaderSize);
  std::memcpy(buf.data(), kLogMagic.data(), kLogMagic.size());
  put_u32(buf.data() + 8, kFormatVersion);
  put_u64(buf.data() + 16, next_id_);
  put_u32(buf.data() + 12, detail::crc32c(std::string_view(buf.data() + 16, 8)));

  std::uint64_t written = 0;
  auto flush = [&]() -> int {
    const int err = write_all(fd.get(), buf.data(), buf.size(), written);
    written += buf.size();
    buf.clear();
    return err;
  };
  int err = 0;
  for (const Entry& e : entries_) {
    if (e.acked) continue;
    encode_frame(buf, e.id, e.topic, e.payload);
    if (buf.size() >= kWriteChunk && (err = flush()) != 0) break;
  }
  if (err == 0) err = flush();
  if (err == 0 && options_.sync && ::fdatasync(fd.get()) != 0) err = errno;
  if (err != 0) {
    remove_if_present(tmp);
    return sys_error(tmp, "write", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    remove_if_present(tmp);
    return sys_error(path, "rename", err);
  }
  // The new file is the log now, whatever happens to the directory sync.
  if (log_fd_ >= 0) ::close(log_fd_);
  log_fd_ = fd.release();
  log_end_ = written;
  if (options_.sync) return fsync_dir(options_.dir);
  return {};
}

Status Outbox::persist_state() {
  std::array<char, kStateSize> buf{};
  std::memcpy(buf.data(), kStateMagic.data(), kStateMagic.size());
  put_u32(buf.data() + 8, kFormatVersion);
  put_u64(buf.data() + 16, head_id());
  put_u64(buf.data() + 24, next_id_);
  put_u64(buf.data() + 32, dropped_unreported_);
  put_u32(buf.data() + 12, detail::crc32c(std::string_view(buf.data() + 16, kStateSize - 16)));

  state_dirty_ = true;
  const auto tmp = options_.dir / kStateTmpFile;
  const auto path = options_.dir / kStateFile;
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (fd.get() < 0) return sys_error(tmp, "create", errno);
  int err = write_all(fd.get(), buf.data(), buf.size(), 0);
  if (err == 0 && options_.sync && ::fdatasync(fd.get()) != 0) err = errno;
  if (err == 0 && ::close(fd.release()) != 0) err = errno;
  if (err != 0) {
    remove_if_present(tmp);
    return sys_error(tmp, "write", err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    remove_if_present(tmp);
    return sys_error(path, "rename", err);
  }
  if (options_.sync) {
    if (auto s = fsync_dir(options_.dir); !s) return s;
  }
  state_dirty_ = false;
  return {};
}

Result<std::uint64_t> Outbox::append(std::string_view topic, std::string_view payload) {
  if (topic.empty() || topic.size() > kMaxTopicBytes) {
    return make_error(Errc::invalid_argument, "outbox append: topic length {} is outside 1..{}", topic.size(),
                      kMaxTopicBytes);
  }
  if (payload.size() > options_.max_bytes || kRecordOverhead + topic.size() + payload.size() > options_.max_bytes ||
      kRecordOverhead + topic.size() + payload.size() > std::numeric_limits<std::uint32_t>::max()) {
    return make_error(Errc::too_large, "outbox append: record of {} bytes exceeds the outbox bound of {} bytes",
                      kRecordOverhead + topic.size() + payload.size(), options_.max_bytes);
  }
  const std::uint64_t id = next_id_;
  frame_buf_.clear();
  encode_frame(frame_buf_, id, topic, payload);

  int err = write_all(log_fd_, frame_buf_.data(), frame_buf_.size(), log_end_);
  if (err == 0 && options_.sync && ::fdatasync(log_fd_) != 0) err = errno;
  if (err != 0) {
    // Best effort: cut a partial frame off. Should that fail too, the next append overwrites it
    // at the same offset, and recovery treats any leftover as a torn tail.
    (void)::ftruncate(log_fd_, static_cast<off_t>(log_end_));
    return sys_error(log_path(), "append", err);
  }

  const auto size = static_cast<std::uint32_t>(frame_buf_.size());
  ++next_id_;
  log_end_ += size;
  entries_.push_back(Entry{id, size, false, std::string(topic), std::string(payload)});
  live_bytes_ += size;
  ++unacked_count_;

  // Drops are not written to the state file here: with the log durable, open() re-applies the
  // bound to the last persisted head and counts the same drops again. Writing the state on every
  // append of a full outbox would triple the syncs exactly when the device is offline.
  while (live_bytes_ > options_.max_bytes) {
    drop_front();
    state_dirty_ = true;
  }
  maybe_compact();
  return id;
}

std::vector<OutboxRecord> Outbox::pending(std::uint64_t after_id, std::size_t max_count) const {
  std::vector<OutboxRecord> out;
  if (max_count == 0) return out;
  out.reserve(std::min(max_count, unacked_count_));
  auto it = std::upper_bound(entries_.begin(), entries_.end(), after_id,
                             [](std::uint64_t id, const Entry& e) { return id < e.id; });
  for (; it != entries_.end() && out.size() < max_count; ++it) {
    if (!it->acked) out.push_back(OutboxRecord{it->id, it->topic, it->payload});
  }
  return out;
}

bool Outbox::mark_acked(std::uint64_t id) {
  if (entries_.empty() || id < entries_.front().id || id > entries_.back().id) return false;
  auto it = std::lower_bound(entries_.begin(), entries_.end(), id,
                             [](const Entry& e, std::uint64_t value) { return e.id < value; });
  if (it == entries_.end() || it->id != id || it->acked) return false;
  it->acked = true;
  live_bytes_ -= it->size;
  --unacked_count_;
  std::string().swap(it->topic);
  std::string().swap(it->payload);
  if (it != entries_.begin()) return false;
  pop_acked_prefix();
  return true;
}

Status Outbox::ack(std::uint64_t id) { return ack_batch(std::span<const std::uint64_t>(&id, 1)); }

Status Outbox::ack_batch(std::span<const std::uint64_t> ids) {
  bool head_moved = false;
  for (const std::uint64_t id : ids) head_moved = mark_acked(id) || head_moved;
  if (!head_moved) return {};
  Status s = persist_state();
  maybe_compact();
  return s;
}

Status Outbox::mark_dropped_reported(std::uint64_t n) {
  if (n == 0) return {};
  dropped_unreported_ = n >= dropped_unreported_ ? 0 : dropped_unreported_ - n;
  return persist_state();
}

void Outbox::pop_acked_prefix() {
  while (!entries_.empty() && entries_.front().acked) entries_.pop_front();
}

void Outbox::drop_front() {
  const Entry& e = entries_.front();
  live_bytes_ -= e.size;
  --unacked_count_;
  ++dropped_unreported_;
  entries_.pop_front();
  pop_acked_prefix();
}

void Outbox::maybe_compact() {
  const std::uint64_t dead = log_end_ - kLogHeaderSize - live_bytes_;
  if (dead <= live_bytes_ || dead <= options_.compact_min_dead_bytes || dead < compact_retry_dead_bytes_) return;
  // The state must be durable first: the new log no longer holds the dropped records from which
  // open() could otherwise recount the drops.
  if ((!state_dirty_ || persist_state()) && write_new_log()) {
    compact_retry_dead_bytes_ = 0;
  } else {
    // Compaction is an optimisation; the old log stays valid. Do not rewrite on every call while
    // the disk is failing (often full): wait until the dead bytes have doubled.
    compact_retry_dead_bytes_ = 2 * dead;
  }
}

}  // namespace flotilla::agent
