#pragma once
// Ed25519 signatures and SHA-256 digests for signed jobs (docs/jobs.md, "Security"). The only
// door to OpenSSL: no other file includes its headers, and its errors become Flotilla errors here
// (the OpenSSL error queue of the calling thread is left empty after every call).
//
// Keys travel as PEM: private keys as unencrypted PKCS#8 ("BEGIN PRIVATE KEY"), public keys as
// SubjectPublicKeyInfo ("BEGIN PUBLIC KEY"), the formats `openssl genpkey -algorithm ed25519` and
// `openssl pkey -pubout` write. A key is named by its key id: the first 16 hex digits of the
// SHA-256 of its raw 32-byte public key.
//
// Thread safety: a Signer or a filled TrustStore may be used from several threads at once
// through its const functions (each call uses its own OpenSSL context over the shared, unchanged
// key, as openssl-threads(7) allows); loading keys into a TrustStore is not synchronised.

#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "flotilla/core/result.hpp"

namespace flotilla::signing {

// Raw sizes, in bytes.
inline constexpr std::size_t kSignatureBytes = 64;
inline constexpr std::size_t kKeyIdHexChars = 16;
// Bound on a key file or PEM text; real Ed25519 PEMs are about 120 bytes.
inline constexpr std::size_t kMaxPemBytes = 64 * 1024;

struct KeyPair {
  std::string private_pem;  // PKCS#8, unencrypted: store it with mode 0600
  std::string public_pem;
};

// A fresh Ed25519 key pair. Errors: internal (OpenSSL failed, e.g. out of memory).
[[nodiscard]] Result<KeyPair> generate_key();

// The key id of a raw 32-byte Ed25519 public key.
[[nodiscard]] std::string key_id_of(std::string_view raw_public_key);

// Owns one Ed25519 private key; movable, not copyable. A moved-from Signer signs nothing.
class Signer {
 public:
  // Errors: invalid_argument (not PEM, not a private key, encrypted, not Ed25519, too large).
  [[nodiscard]] static Result<Signer> from_pem(std::string_view private_pem);
  // Reads a private key file. Refuses a file that its group or other users may read, or that
  // is not a regular file. Errors: not_found, permission_denied (mode, or not readable),
  // io_error, and those of from_pem(); messages name the file.
  [[nodiscard]] static Result<Signer> from_file(const std::filesystem::path& path);

  Signer(Signer&& other) noexcept;
  Signer& operator=(Signer&& other) noexcept;
  Signer(const Signer&) = delete;
  Signer& operator=(const Signer&) = delete;
  ~Signer();

  [[nodiscard]] const std::string& key_id() const { return key_id_; }
  // The matching public key, as PEM (what a TrustStore loads).
  [[nodiscard]] std::string public_pem() const;
  // The 64-byte raw Ed25519 signature of `message`; empty only if OpenSSL fails (out of
  // memory) or the Signer was moved from.
  [[nodiscard]] std::string sign(std::string_view message) const;

 private:
  struct Key;
  explicit Signer(std::unique_ptr<Key> key, std::string key_id);

  std::unique_ptr<Key> key_;
  std::string key_id_;
};

// The trusted Ed25519 public keys, by key id; movable, not copyable.
class TrustStore {
 public:
  TrustStore();
  TrustStore(TrustStore&& other) noexcept;
  TrustStore& operator=(TrustStore&& other) noexcept;
  TrustStore(const TrustStore&) = delete;
  TrustStore& operator=(const TrustStore&) = delete;
  ~TrustStore();

  // Adds every public key in `public_pem` (one or more PEM blocks; at least one). Adding a key
  // already present is not an error. Nothing is added unless every block is a valid key.
  // Errors: invalid_argument (unparsable, not Ed25519, a private key, too large, no key).
  [[nodiscard]] Status add_pem(std::string_view public_pem);
  // Loads every regular file named *.pub or *.pem in `dir` (not recursive), in name order.
  // Nothing is added unless every file loads. Errors: not_found, io_error, and those of
  // add_pem(); messages name the file.
  [[nodiscard]] Status load_dir(const std::filesystem::path& dir);
  // Errors: not_found, io_error, and those of add_pem(); messages name the file.
  [[nodiscard]] Status load_file(const std::filesystem::path& path);

  [[nodiscard]] std::size_t size() const { return keys_.size(); }
  [[nodiscard]] bool contains(std::string_view key_id) const { return keys_.find(key_id) != keys_.end(); }

  // Checks a raw 64-byte Ed25519 signature over `message` by the key named `key_id`.
  // Errors: invalid_argument (key id not 16 lowercase hex digits, signature not 64 bytes),
  // permission_denied ("unknown key id ...", "bad signature ...").
  [[nodiscard]] Status verify(std::string_view key_id, std::string_view message, std::string_view signature) const;

 private:
  struct Key;
  struct KeyDeleter {
    void operator()(Key* key) const noexcept;
  };
  using KeyPtr = std::unique_ptr<Key, KeyDeleter>;
  Status merge(std::map<std::string, KeyPtr, std::less<>> keys);

  std::map<std::string, KeyPtr, std::less<>> keys_;
};

// Raw 32-byte SHA-256 of `data`.
[[nodiscard]] std::string sha256(std::string_view data);
// Lowercase hex of sha256(data).
[[nodiscard]] std::string sha256_hex(std::string_view data);
// Lowercase hex SHA-256 of a file's contents, read in chunks. Errors: not_found, io_error.
[[nodiscard]] Result<std::string> sha256_file_hex(const std::filesystem::path& path);
// Lowercase hex of any bytes.
[[nodiscard]] std::string to_hex(std::string_view bytes);

}  // namespace flotilla::signing
