#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "flotilla/agent/collectors.hpp"

namespace flotilla::agent::detail {
namespace {

class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  ~FdGuard() { ::close(fd_); }

 private:
  int fd_;
};

Error errno_error(const std::filesystem::path& path, int err) {
  Errc code = Errc::io_error;
  if (err == ENOENT || err == ENOTDIR) code = Errc::not_found;
  if (err == EACCES || err == EPERM) code = Errc::permission_denied;
  return make_error(code, "{}: {}", path.string(), std::generic_category().message(err));
}

}  // namespace

Result<std::string> read_host_file(const std::filesystem::path& path, std::size_t max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return errno_error(path, errno);
  const FdGuard guard(fd);

  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_error(path, errno);
  if (!S_ISREG(st.st_mode)) return make_error(Errc::io_error, "{}: not a regular file", path.string());

  // procfs reports size 0 and sysfs 4096 whatever the content, so st_size is only a hint.
  std::string data;
  if (st.st_size > 0) data.reserve(std::min<std::size_t>(static_cast<std::size_t>(st.st_size), max_bytes) + 1);
  constexpr std::size_t kChunk = 64 * 1024;
  for (;;) {
    const std::size_t old_size = data.size();
    // One byte beyond the bound is enough to tell that the file exceeds it.
    const std::size_t want = std::min(kChunk, max_bytes + 1 - old_size);
    data.resize(old_size + want);
    const ssize_t n = ::read(fd, data.data() + old_size, want);
    if (n < 0) {
      const int err = errno;
      data.resize(old_size);
      if (err == EINTR) continue;
      return errno_error(path, err);
    }
    data.resize(old_size + static_cast<std::size_t>(n));
    if (n == 0) break;
    if (data.size() > max_bytes) {
      return make_error(Errc::too_large, "{}: larger than {} bytes", path.string(), max_bytes);
    }
  }
  return data;
}

std::string read_host_attribute(const std::filesystem::path& path) {
  auto text = read_host_file(path, kMaxAttributeBytes);
  if (!text) return {};
  const std::string& value = *text;
  const auto is_padding = [](char c) { return c == '\0' || c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  const auto first = std::find_if_not(value.begin(), value.end(), is_padding);
  const auto last = std::find_if_not(value.rbegin(), value.rend(), is_padding).base();
  return first < last ? std::string(first, last) : std::string();
}

std::vector<std::filesystem::path> list_host_directory(const std::filesystem::path& dir) {
  std::vector<std::filesystem::path> entries;
  std::error_code ec;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    entries.push_back(it->path());
  }
  std::sort(entries.begin(), entries.end(), [](const std::filesystem::path& a, const std::filesystem::path& b) {
    const std::string x = a.filename().string();
    const std::string y = b.filename().string();
    return x.size() != y.size() ? x.size() < y.size() : x < y;
  });
  return entries;
}

}  // namespace flotilla::agent::detail
