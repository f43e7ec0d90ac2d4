#include "flotilla/core/signing.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <system_error>
#include <utility>
#include <vector>

#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

namespace flotilla::signing {

namespace {

constexpr std::size_t kRawPublicKeyBytes = 32;
constexpr std::size_t kReadChunk = 64 * 1024;

struct BioFree {
  void operator()(BIO* b) const noexcept { BIO_free_all(b); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct MdCtxFree {
  void operator()(EVP_MD_CTX* c) const noexcept { EVP_MD_CTX_free(c); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, MdCtxFree>;

// The reason of the oldest queued OpenSSL error; empties the thread's queue so that a stale
// error cannot be picked up later by another OpenSSL user on this thread (e.g. the TLS code).
std::string take_openssl_error() {
  const unsigned long code = ERR_get_error();
  const char* reason = code != 0 ? ERR_reason_error_string(code) : nullptr;
  ERR_clear_error();
  return reason != nullptr ? std::string(reason) : std::string("unknown OpenSSL error");
}

// Passphrase callback that refuses: an encrypted key fails to load instead of prompting on the
// terminal.
int no_passphrase(char* /*buf*/, int /*size*/, int /*rwflag*/, void* /*user*/) { return -1; }

BioPtr bio_over(std::string_view text) { return BioPtr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size()))); }

std::string bio_contents(BIO* bio) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(bio, &data);
  if (n <= 0 || data == nullptr) return {};
  return {data, static_cast<std::size_t>(n)};
}

std::string raw_public_key(EVP_PKEY* pkey) {
  std::array<unsigned char, kRawPublicKeyBytes> raw{};
  std::size_t len = raw.size();
  if (EVP_PKEY_get_raw_public_key(pkey, raw.data(), &len) != 1 || len != raw.size()) {
    ERR_clear_error();
    return {};
  }
  return {reinterpret_cast<const char*>(raw.data()), len};
}

std::string type_name(EVP_PKEY* pkey) {
  const char* name = EVP_PKEY_get0_type_name(pkey);
  return name != nullptr ? std::string(name) : std::string("unknown");
}

struct PemBlock {
  std::string_view label;
  std::string_view text;  // from "-----BEGIN" through the END line's closing dashes
};

// Splits PEM text into its blocks; text outside blocks (comments) is ignored.
Result<std::vector<PemBlock>> pem_blocks(std::string_view text) {
  constexpr std::string_view kBegin = "-----BEGIN ";
  constexpr std::string_view kDashes = "-----";
  std::vector<PemBlock> blocks;
  std::size_t pos = 0;
  while ((pos = text.find(kBegin, pos)) != std::string_view::npos) {
    const std::size_t label_start = pos + kBegin.size();
    const std::size_t label_end = text.find(kDashes, label_start);
    const std::size_t eol = text.find('\n', label_start);
    if (label_end == std::string_view::npos || (eol != std::string_view::npos && eol < label_end)) {
      return make_error(Errc::invalid_argument, "PEM block {}: malformed BEGIN line", blocks.size() + 1);
    }
    const std::string_view label = text.substr(label_start, label_end - label_start);
    const std::string end_line = fmt::format("-----END {}-----", label);
    const std::size_t end = text.find(end_line, label_end);
    if (end == std::string_view::npos) {
      return make_error(Errc::invalid_argument, "PEM block {} ({}) has no END line", blocks.size() + 1, label);
    }
    blocks.push_back(PemBlock{label, text.substr(pos, end + end_line.size() - pos)});
    pos = end + end_line.size();
  }
  return blocks;
}

Error sys_error(const std::filesystem::path& path, std::string_view what, int err) {
  const Errc code = err == ENOENT                     ? Errc::not_found
                    : (err == EACCES || err == EPERM) ? Errc::permission_denied
                                                      : Errc::io_error;
  return make_error(code, "{}: {}: {}", path.string(), what, std::generic_category().message(err));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  [[nodiscard]] int get() const { return fd_; }

 private:
  int fd_;
};

// Reads a key file of at most kMaxPemBytes. With `secret`, refuses a file readable by group or
// others.
Result<std::string> read_key_file(const std::filesystem::path& path, bool secret) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (fd.get() < 0) return sys_error(path, "open", errno);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return sys_error(path, "stat", errno);
  if (!S_ISREG(st.st_mode)) return make_error(Errc::invalid_argument, "{}: not a regular file", path.string());
  if (secret && (st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
    return make_error(Errc::permission_denied,
                      "{}: private key file is readable by group or others (mode {:04o}); chmod 600 it", path.string(),
                      st.st_mode & 07777);
  }
  if (static_cast<std::uint64_t>(st.st_size) > kMaxPemBytes) {
    return make_error(Errc::invalid_argument, "{}: {} bytes, more than the {} a key file may have", path.string(),
                      st.st_size, kMaxPemBytes);
  }
  std::string text(kMaxPemBytes + 1, '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    const ssize_t n = ::read(fd.get(), text.data() + got, text.size() - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      OPENSSL_cleanse(text.data(), text.size());
      return sys_error(path, "read", err);
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got > kMaxPemBytes) {
    OPENSSL_cleanse(text.data(), text.size());
    return make_error(Errc::invalid_argument, "{}: grew past {} bytes while being read", path.string(), kMaxPemBytes);
  }
  if (secret) {
    // Scrub the tail the resize drops; the caller scrubs the rest.
    OPENSSL_cleanse(text.data() + got, text.size() - got);
  }
  text.resize(got);
  return text;
}

bool is_key_id(std::string_view id) {
  return id.size() == kKeyIdHexChars &&
         std::all_of(id.begin(), id.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

std::string to_hex(std::string_view bytes) {
  constexpr std::string_view kDigits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char ch : bytes) {
    const auto b = static_cast<unsigned char>(ch);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0x0F]);
  }
  return out;
}

std::string sha256(std::string_view data) {
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_Digest(data.data(), data.size(), md.data(), &len, EVP_sha256(), nullptr) != 1) {
    // Only on allocation failure inside OpenSSL; an empty digest never matches a real one.
    ERR_clear_error();
    return {};
  }
  return {reinterpret_cast<const char*>(md.data()), len};
}

std::string sha256_hex(std::string_view data) { return to_hex(sha256(data)); }

Result<std::string> sha256_file_hex(const std::filesystem::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (fd.get() < 0) return sys_error(path, "open", errno);
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return make_error(Errc::internal, "sha256: {}", take_openssl_error());
  }
  std::vector<char> buf(kReadChunk);
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return sys_error(path, "read", errno);
    }
    if (n == 0) break;
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n)) != 1) {
      return make_error(Errc::internal, "sha256: {}", take_openssl_error());
    }
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md.data(), &len) != 1) {
    return make_error(Errc::internal, "sha256: {}", take_openssl_error());
  }
  return to_hex(std::string_view(reinterpret_cast<const char*>(md.data()), len));
}

std::string key_id_of(std::string_view raw_public_key) { return sha256_hex(raw_public_key).substr(0, kKeyIdHexChars); }

Result<KeyPair> generate_key() {
  PkeyPtr pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"));
  if (!pkey) return make_error(Errc::internal, "Ed25519 key generation failed: {}", take_openssl_error());
  BioPtr priv(BIO_new(BIO_s_mem()));
  BioPtr pub(BIO_new(BIO_s_mem()));
  if (!priv || !pub || PEM_write_bio_PrivateKey(priv.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1 ||
      PEM_write_bio_PUBKEY(pub.get(), pkey.get()) != 1) {
    return make_error(Errc::internal, "cannot encode the new key as PEM: {}", take_openssl_error());
  }
  KeyPair pair{bio_contents(priv.get()), bio_contents(pub.get())};
  // The memory BIO's buffer held the private key; scrub it before it is freed.
  char* data = nullptr;
  if (const long n = BIO_get_mem_data(priv.get(), &data); n > 0 && data != nullptr) {
    OPENSSL_cleanse(data, static_cast<std::size_t>(n));
  }
  return pair;
}

// ---- Signer

struct Signer::Key {
  PkeyPtr pkey;
};

Signer::Signer(std::unique_ptr<Key> key, std::string key_id) : key_(std::move(key)), key_id_(std::move(key_id)) {}
Signer::Signer(Signer&& other) noexcept = default;
Signer& Signer::operator=(Signer&& other) noexcept = default;
Signer::~Signer() = default;

Result<Signer> Signer::from_pem(std::string_view private_pem) {
  if (private_pem.size() > kMaxPemBytes) {
    return make_error(Errc::invalid_argument, "private key PEM of {} bytes exceeds {}", private_pem.size(),
                      kMaxPemBytes);
  }
  auto blocks = pem_blocks(private_pem);
  if (!blocks) return std::move(blocks).error();
  if (blocks->size() != 1) {
    return make_error(Errc::invalid_argument, "expected one PEM private key, found {} PEM blocks", blocks->size());
  }
  const PemBlock& block = blocks->front();
  if (block.label == "ENCRYPTED PRIVATE KEY") {
    return make_error(Errc::invalid_argument,
                      "encrypted private keys are not supported (store it unencrypted, mode 0600)");
  }
  if (block.label.find("PRIVATE KEY") == std::string_view::npos) {
    return make_error(Errc::invalid_argument, "the PEM block is a {:?}, not a private key", block.label);
  }
  BioPtr bio = bio_over(block.text);
  if (!bio) return make_error(Errc::internal, "out of memory: {}", take_openssl_error());
  PkeyPtr pkey(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!pkey) return make_error(Errc::invalid_argument, "unparsable private key: {}", take_openssl_error());
  if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
    return make_error(Errc::invalid_argument, "the private key is {}, not Ed25519", type_name(pkey.get()));
  }
  const std::string raw = raw_public_key(pkey.get());
  if (raw.size() != kRawPublicKeyBytes) return make_error(Errc::internal, "cannot derive the public key");
  auto key = std::make_unique<Key>();
  key->pkey = std::move(pkey);
  return Signer(std::move(key), key_id_of(raw));
}

Result<Signer> Signer::from_file(const std::filesystem::path& path) {
  auto text = read_key_file(path, true);
  if (!text) return std::move(text).error();
  auto signer = from_pem(*text);
  OPENSSL_cleanse(text->data(), text->size());
  if (!signer) {
    const Error& e = signer.error();
    return make_error(e.code, "{}: {}", path.string(), e.message);
  }
  return signer;
}

std::string Signer::public_pem() const {
  if (!key_) return {};
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PUBKEY(bio.get(), key_->pkey.get()) != 1) {
    ERR_clear_error();
    return {};
  }
  return bio_contents(bio.get());
}

std::string Signer::sign(std::string_view message) const {
  if (!key_) return {};
  MdCtxPtr ctx(EVP_MD_CTX_new());
  std::string sig(kSignatureBytes, '\0');
  std::size_t len = sig.size();
  if (!ctx || EVP_DigestSignInit(ctx.get(), nullptr, nullptr, nullptr, key_->pkey.get()) != 1 ||
      EVP_DigestSign(ctx.get(), reinterpret_cast<unsigned char*>(sig.data()), &len,
                     reinterpret_cast<const unsigned char*>(message.data()), message.size()) != 1 ||
      len != kSignatureBytes) {
    ERR_clear_error();
    return {};
  }
  return sig;
}

// ---- TrustStore

struct TrustStore::Key {
  PkeyPtr pkey;
  std::string raw;  // 32-byte public key, to tell a repeated key from a key id collision
};

void TrustStore::KeyDeleter::operator()(Key* key) const noexcept { delete key; }

TrustStore::TrustStore() = default;
TrustStore::TrustStore(TrustStore&& other) noexcept = default;
TrustStore& TrustStore::operator=(TrustStore&& other) noexcept = default;
TrustStore::~TrustStore() = default;

namespace {

// Parses every block of `text` as an Ed25519 public key into `out`, by key id.
template <typename KeyMap, typename MakeKey>
Status parse_public_keys(std::string_view text, KeyMap& out, MakeKey make_key) {
  if (text.size() > kMaxPemBytes) {
    return make_error(Errc::invalid_argument, "public key PEM of {} bytes exceeds {}", text.size(), kMaxPemBytes);
  }
  auto blocks = pem_blocks(text);
  if (!blocks) return std::move(blocks).error();
  if (blocks->empty()) return make_error(Errc::invalid_argument, "no PEM public key found");
  for (std::size_t i = 0; i < blocks->size(); ++i) {
    const PemBlock& block = (*blocks)[i];
    if (block.label.find("PRIVATE KEY") != std::string_view::npos) {
      return make_error(Errc::invalid_argument,
                        "PEM block {} is a private key: trusted keys are public keys only (openssl pkey -pubout)",
                        i + 1);
    }
    if (block.label != "PUBLIC KEY") {
      return make_error(Errc::invalid_argument, "PEM block {} is a {:?}, not a \"PUBLIC KEY\"", i + 1, block.label);
    }
    BioPtr bio = bio_over(block.text);
    if (!bio) return make_error(Errc::internal, "out of memory: {}", take_openssl_error());
    PkeyPtr pkey(PEM_read_bio_PUBKEY(bio.get(), nullptr, no_passphrase, nullptr));
    if (!pkey) {
      return make_error(Errc::invalid_argument, "PEM block {}: unparsable public key: {}", i + 1, take_openssl_error());
    }
    if (EVP_PKEY_get_id(pkey.get()) != EVP_PKEY_ED25519) {
      return make_error(Errc::invalid_argument, "PEM block {}: the key is {}, not Ed25519", i + 1,
                        type_name(pkey.get()));
    }
    std::string raw = raw_public_key(pkey.get());
    if (raw.size() != kRawPublicKeyBytes) {
      return make_error(Errc::invalid_argument, "PEM block {}: no raw Ed25519 public key", i + 1);
    }
    std::string id = key_id_of(raw);
    auto [it, inserted] = out.try_emplace(std::move(id));
    if (inserted) {
      it->second = make_key(std::move(pkey), std::move(raw));
    } else if (it->second->raw != raw) {
      return make_error(Errc::invalid_argument, "PEM block {}: key id {} collides with another key", i + 1, it->first);
    }
  }
  return {};
}

}  // namespace

Status TrustStore::merge(std::map<std::string, KeyPtr, std::less<>> keys) {
  for (const auto& [id, key] : keys) {
    if (auto it = keys_.find(id); it != keys_.end() && it->second->raw != key->raw) {
      return make_error(Errc::invalid_argument, "key id {} collides with a key already trusted", id);
    }
  }
  keys_.merge(keys);  // entries whose id is already present stay behind in `keys`
  return {};
}

Status TrustStore::add_pem(std::string_view public_pem) {
  std::map<std::string, KeyPtr, std::less<>> staged;
  auto make_key = [](PkeyPtr pkey, std::string raw) { return KeyPtr(new Key{std::move(pkey), std::move(raw)}); };
  if (auto st = parse_public_keys(public_pem, staged, make_key); !st) return st;
  return merge(std::move(staged));
}

Status TrustStore::load_file(const std::filesystem::path& path) {
  auto text = read_key_file(path, false);
  if (!text) return std::move(text).error();
  std::map<std::string, KeyPtr, std::less<>> staged;
  auto make_key = [](PkeyPtr pkey, std::string raw) { return KeyPtr(new Key{std::move(pkey), std::move(raw)}); };
  if (auto st = parse_public_keys(*text, staged, make_key); !st) {
    return make_error(st.error().code, "{}: {}", path.string(), st.error().message);
  }
  if (auto st = merge(std::move(staged)); !st) {
    return make_error(st.error().code, "{}: {}", path.string(), st.error().message);
  }
  return {};
}

Status TrustStore::load_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    const Errc code = ec == std::errc::no_such_file_or_directory ? Errc::not_found : Errc::io_error;
    return make_error(code, "{}: {}", dir.string(), ec.message());
  }
  std::vector<std::filesystem::path> files;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    const auto ext = it->path().extension();
    if (ext != ".pub" && ext != ".pem") continue;
    std::error_code type_ec;
    if (!it->is_regular_file(type_ec)) continue;  // follows symlinks; directories and dangling links are skipped
    files.push_back(it->path());
  }
  if (ec) return make_error(Errc::io_error, "{}: {}", dir.string(), ec.message());
  std::sort(files.begin(), files.end());
  std::map<std::string, KeyPtr, std::less<>> staged;
  auto make_key = [](PkeyPtr pkey, std::string raw) { return KeyPtr(new Key{std::move(pkey), std::move(raw)}); };
  for (const auto& path : files) {
    auto text = read_key_file(path, false);
    if (!text) return std::move(text).error();
    if (auto st = parse_public_keys(*text, staged, make_key); !st) {
      return make_error(st.error().code, "{}: {}", path.string(), st.error().message);
    }
  }
  if (auto st = merge(std::move(staged)); !st)
    return make_error(st.error().code, "{}: {}", dir.string(), st.error().message);
  return {};
}

Status TrustStore::verify(std::string_view key_id, std::string_view message, std::string_view signature) const {
  if (!is_key_id(key_id)) {
    return make_error(Errc::invalid_argument, "malformed key id {:?}: expected {} lowercase hex digits",
                      key_id.substr(0, 64), kKeyIdHexChars);
  }
  if (signature.size() != kSignatureBytes) {
    return make_error(Errc::invalid_argument, "malformed signature: {} bytes, expected {}", signature.size(),
                      kSignatureBytes);
  }
  const auto it = keys_.find(key_id);
  if (it == keys_.end()) return make_error(Errc::permission_denied, "unknown key id {}", key_id);
  MdCtxPtr ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestVerifyInit(ctx.get(), nullptr, nullptr, nullptr, it->second->pkey.get()) != 1) {
    return make_error(Errc::internal, "signature check could not start: {}", take_openssl_error());
  }
  const int rc = EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(signature.data()), signature.size(),
                                  reinterpret_cast<const unsigned char*>(message.data()), message.size());
  if (rc != 1) {
    ERR_clear_error();
    return make_error(Errc::permission_denied, "bad signature (key {})", key_id);
  }
  return {};
}

}  // namespace flotilla::signing
