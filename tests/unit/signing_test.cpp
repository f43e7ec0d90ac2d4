#include "flotilla/core/signing.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <utility>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace fs = std::filesystem;
using flotilla::Errc;
using flotilla::signing::Signer;
using flotilla::signing::TrustStore;
namespace signing = flotilla::signing;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-signing-test.XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, std::string_view text,
                fs::perms mode = fs::perms::owner_read | fs::perms::owner_write) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    REQUIRE(out.good());
  }
  fs::permissions(path, mode, fs::perm_options::replace);
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::string from_hex(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::string base64(std::string_view bytes) {
  constexpr std::string_view kAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < bytes.size(); i += 3) {
    const auto v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8) |
                   static_cast<unsigned char>(bytes[i + 2]);
    for (int k = 3; k >= 0; --k) out.push_back(kAlphabet[(v >> (6 * k)) & 0x3F]);
  }
  if (i + 1 == bytes.size()) {
    const auto v = static_cast<unsigned char>(bytes[i]) << 16;
    out.push_back(kAlphabet[(v >> 18) & 0x3F]);
    out.push_back(kAlphabet[(v >> 12) & 0x3F]);
    out += "==";
  } else if (i + 2 == bytes.size()) {
    const auto v = (static_cast<unsigned char>(bytes[i]) << 16) | (static_cast<unsigned char>(bytes[i + 1]) << 8);
    out.push_back(kAlphabet[(v >> 18) & 0x3F]);
    out.push_back(kAlphabet[(v >> 12) & 0x3F]);
    out.push_back(kAlphabet[(v >> 6) & 0x3F]);
    out += "=";
  }
  return out;
}

std::string pem(std::string_view label, std::string_view der) {
  return fmt::format("-----BEGIN {0}-----\n{1}\n-----END {0}-----\n", label, base64(der));
}

template <typename T>
std::string error_text(const flotilla::Result<T>& r) {
  return r.ok() ? std::string("ok") : fmt::format("{}", r.error());
}

// RFC 8032, section 7.1, TEST 1 and TEST 2.
constexpr std::string_view kRfcSecret1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
constexpr std::string_view kRfcPublic1 = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
constexpr std::string_view kRfcSignature1 =
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24"
    "655141438e7a100b";
constexpr std::string_view kRfcSecret2 = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
constexpr std::string_view kRfcPublic2 = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
constexpr std::string_view kRfcMessage2 = "72";
constexpr std::string_view kRfcSignature2 =
    "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb0"
    "0d291612bb0c00";

// PKCS#8 and SubjectPublicKeyInfo DER for Ed25519 (RFC 8410) around raw key bytes.
std::string private_pem_of(std::string_view seed_hex) {
  return pem("PRIVATE KEY", from_hex("302e020100300506032b657004220420") + from_hex(seed_hex));
}
std::string public_pem_of(std::string_view public_hex) {
  return pem("PUBLIC KEY", from_hex("302a300506032b6570032100") + from_hex(public_hex));
}

bool have_openssl_cli() { return std::system("command -v openssl >/dev/null 2>&1") == 0; }

}  // namespace

TEST_SUITE("signing") {

TEST_CASE("signing: sha256 matches the FIPS 180-2 vectors, in memory and from a file") {
  CHECK(signing::sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(signing::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(signing::sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(signing::sha256("abc") == from_hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
  CHECK(signing::to_hex(std::string("\x00\x7f\x80\xff", 4)) == "007f80ff");

  TempDir tmp;
  write_file(tmp.path() / "abc", "abc");
  auto small = signing::sha256_file_hex(tmp.path() / "abc");
  REQUIRE_MESSAGE(small.ok(), error_text(small));
  CHECK(*small == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // FIPS 180-2 long vector: one million 'a', read in several chunks.
  write_file(tmp.path() / "million", std::string(1000000, 'a'));
  auto big = signing::sha256_file_hex(tmp.path() / "million");
  REQUIRE_MESSAGE(big.ok(), error_text(big));
  CHECK(*big == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");

  auto missing = signing::sha256_file_hex(tmp.path() / "nope");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::not_found);
  CHECK(missing.error().message.find("nope") != std::string::npos);
  auto dir = signing::sha256_file_hex(tmp.path());
  REQUIRE_FALSE(dir.ok());
  CHECK(dir.error().code == Errc::io_error);
}

TEST_CASE("signing: RFC 8032 keys sign to the published signatures and the key id is the SHA-256 prefix") {
  auto signer = Signer::from_pem(private_pem_of(kRfcSecret1));
  REQUIRE_MESSAGE(signer.ok(), error_text(signer));
  CHECK(signer->key_id() == signing::sha256_hex(from_hex(kRfcPublic1)).substr(0, 16));
  CHECK(signer->sign("") == from_hex(kRfcSignature1));
  CHECK(signer->public_pem() == public_pem_of(kRfcPublic1));

  auto signer2 = Signer::from_pem(private_pem_of(kRfcSecret2));
  REQUIRE(signer2.ok());
  CHECK(signer2->sign(from_hex(kRfcMessage2)) == from_hex(kRfcSignature2));

  TrustStore trust;
  REQUIRE(trust.add_pem(public_pem_of(kRfcPublic2)));
  CHECK(trust.verify(signer2->key_id(), from_hex(kRfcMessage2), from_hex(kRfcSignature2)));
  CHECK_FALSE(trust.verify(signer2->key_id(), "", from_hex(kRfcSignature2)));
}

TEST_CASE("signing: generated keys round trip; a flipped bit in message or signature fails") {
  auto pair = signing::generate_key();
  REQUIRE_MESSAGE(pair.ok(), error_text(pair));
  CHECK(pair->private_pem.rfind("-----BEGIN PRIVATE KEY-----", 0) == 0);
  CHECK(pair->public_pem.rfind("-----BEGIN PUBLIC KEY-----", 0) == 0);
  auto signer = Signer::from_pem(pair->private_pem);
  REQUIRE_MESSAGE(signer.ok(), error_text(signer));
  CHECK(signer->key_id().size() == 16);
  CHECK(signer->public_pem() == pair->public_pem);

  TrustStore trust;
  REQUIRE(trust.add_pem(pair->public_pem));
  CHECK(trust.size() == 1);
  CHECK(trust.contains(signer->key_id()));
  REQUIRE(trust.add_pem(pair->public_pem));  // the same key again: no error, no duplicate
  CHECK(trust.size() == 1);

  const std::string message = "flotilla-job-v1\nabc\ndevice-1";
  const std::string sig = signer->sign(message);
  REQUIRE(sig.size() == signing::kSignatureBytes);
  CHECK(trust.verify(signer->key_id(), message, sig));

  for (std::size_t bit : {0UL, 7UL, 8UL * message.size() - 1}) {
    std::string m = message;
    m[bit / 8] = static_cast<char>(m[bit / 8] ^ (1 << (bit % 8)));
    auto st = trust.verify(signer->key_id(), m, sig);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::permission_denied);
    CHECK(st.error().message.find("bad signature") != std::string::npos);
  }
  for (std::size_t bit : {0UL, 255UL, 256UL, 511UL}) {
    std::string s = sig;
    s[bit / 8] = static_cast<char>(s[bit / 8] ^ (1 << (bit % 8)));
    auto st = trust.verify(signer->key_id(), message, s);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::permission_denied);
  }
  CHECK_FALSE(trust.verify(signer->key_id(), message + "x", sig));

  // Malformed inputs are invalid_argument, not a denial.
  auto short_sig = trust.verify(signer->key_id(), message, sig.substr(0, 63));
  REQUIRE_FALSE(short_sig.ok());
  CHECK(short_sig.error().code == Errc::invalid_argument);
  auto bad_id = trust.verify("ABCDEF0123456789", message, sig);
  REQUIRE_FALSE(bad_id.ok());
  CHECK(bad_id.error().code == Errc::invalid_argument);
  CHECK(trust.verify(std::string(17, 'a'), message, sig).error().code == Errc::invalid_argument);
}

TEST_CASE("signing: a key id the store does not trust is refused") {
  auto a = signing::generate_key();
  auto b = signing::generate_key();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto signer_b = Signer::from_pem(b->private_pem);
  REQUIRE(signer_b.ok());
  TrustStore trust;
  REQUIRE(trust.add_pem(a->public_pem));
  auto st = trust.verify(signer_b->key_id(), "m", signer_b->sign("m"));
  REQUIRE_FALSE(st.ok());
  CHECK(st.error().code == Errc::permission_denied);
  CHECK(st.error().message.find("unknown key id " + signer_b->key_id()) != std::string::npos);

  TrustStore empty;
  CHECK(empty.verify(signer_b->key_id(), "m", signer_b->sign("m")).error().code == Errc::permission_denied);
}

TEST_CASE("signing: malformed PEM, private keys in the trust store and public keys as signers are refused") {
  auto pair = signing::generate_key();
  REQUIRE(pair.ok());
  TrustStore trust;
  for (const std::string& bad : {std::string(), std::string("not a key"), pair->private_pem,
                                 std::string("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
                                 std::string("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n"),
                                 pair->public_pem + pair->private_pem, std::string(signing::kMaxPemBytes + 1, 'x')}) {
    auto st = trust.add_pem(bad);
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::invalid_argument);
  }
  CHECK(trust.size() == 0);  // the valid first key of a mixed text was not added either
  auto priv_in_trust = trust.add_pem(pair->private_pem);
  CHECK(priv_in_trust.error().message.find("private key") != std::string::npos);

  for (const std::string& bad : {std::string(), pair->public_pem, pair->private_pem + pair->private_pem,
                                 std::string("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")}) {
    auto s = Signer::from_pem(bad);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::invalid_argument);
  }

  // Two keys in one text.
  auto other = signing::generate_key();
  REQUIRE(other.ok());
  REQUIRE(trust.add_pem("# operators\n" + pair->public_pem + "\n" + other->public_pem));
  CHECK(trust.size() == 2);
}

TEST_CASE("signing: keys of another type, and encrypted keys, are rejected") {
  if (!have_openssl_cli()) {
    MESSAGE("the openssl command is not installed: the RSA/EC key cases are skipped");
    return;
  }
  TempDir tmp;
  const auto p = [&](const char* name) { return (tmp.path() / name).string(); };
  const std::string cmd = fmt::format(
      "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out {0} 2>/dev/null && "
      "openssl pkey -in {0} -pubout -out {1} 2>/dev/null && "
      "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out {2} 2>/dev/null && "
      "openssl pkey -in {2} -pubout -out {3} 2>/dev/null && "
      "openssl genpkey -algorithm ed25519 -aes-256-cbc -pass pass:secret -out {4} 2>/dev/null && "
      "openssl pkey -in {0} -traditional -aes256 -passout pass:secret -out {5} 2>/dev/null && "
      "openssl genpkey -algorithm ed448 -out {6} 2>/dev/null",
      p("ec.pem"), p("ec.pub"), p("rsa.pem"), p("rsa.pub"), p("ed_enc.pem"), p("ec_enc.pem"), p("ed448.pem"));
  REQUIRE(std::system(cmd.c_str()) == 0);

  TrustStore trust;
  for (const char* name : {"ec.pub", "rsa.pub"}) {
    CAPTURE(name);
    auto st = trust.add_pem(read_file(tmp.path() / name));
    REQUIRE_FALSE(st.ok());
    CHECK(st.error().code == Errc::invalid_argument);
    CHECK(st.error().message.find("not Ed25519") != std::string::npos);
  }
  CHECK(trust.size() == 0);
  for (const char* name : {"ec.pem", "rsa.pem", "ed448.pem", "ed_enc.pem", "ec_enc.pem"}) {
    CAPTURE(name);
    auto s = Signer::from_pem(read_file(tmp.path() / name));
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::invalid_argument);
  }
  CHECK(Signer::from_pem(read_file(tmp.path() / "ed_enc.pem")).error().message.find("encrypted") != std::string::npos);

  // And the command line's own Ed25519 keys load, with the same key id on both sides.
  REQUIRE(std::system(fmt::format("openssl genpkey -algorithm ed25519 -out {0} 2>/dev/null && "
                                  "openssl pkey -in {0} -pubout -out {1} 2>/dev/null",
                                  p("ed.pem"), p("ed.pub"))
                          .c_str()) == 0);
  auto signer = Signer::from_pem(read_file(tmp.path() / "ed.pem"));
  REQUIRE_MESSAGE(signer.ok(), error_text(signer));
  REQUIRE(trust.add_pem(read_file(tmp.path() / "ed.pub")));
  CHECK(trust.verify(signer->key_id(), "hello", signer->sign("hello")));
}

TEST_CASE("signing: load_dir reads *.pub and *.pem, names a bad file, and adds nothing on error") {
  TempDir tmp;
  auto a = signing::generate_key();
  auto b = signing::generate_key();
  auto c = signing::generate_key();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  const fs::path keys = tmp.path() / "keys";
  fs::create_directory(keys);
  write_file(keys / "alice.pub", a->public_pem);
  write_file(keys / "bob.pem", b->public_pem + c->public_pem);
  write_file(keys / "README.txt", "not a key, and not loaded");
  fs::create_directory(keys / "sub.pub");  // a directory with a key-like name is skipped

  TrustStore trust;
  auto st = trust.load_dir(keys);
  REQUIRE_MESSAGE(st.ok(), (st.ok() ? "" : st.error().message));
  CHECK(trust.size() == 3);
  for (const auto* pair : {&*a, &*b, &*c}) {
    auto signer = Signer::from_pem(pair->private_pem);
    REQUIRE(signer.ok());
    CHECK(trust.verify(signer->key_id(), "m", signer->sign("m")));
  }

  write_file(keys / "mallory.pub", "-----BEGIN PUBLIC KEY-----\nZm9v\n-----END PUBLIC KEY-----\n");
  TrustStore second;
  auto bad = second.load_dir(keys);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().code == Errc::invalid_argument);
  CHECK(bad.error().message.find("mallory.pub") != std::string::npos);
  CHECK(second.size() == 0);

  write_file(keys / "mallory.pub", a->private_pem);
  auto priv = second.load_dir(keys);
  REQUIRE_FALSE(priv.ok());
  CHECK(priv.error().message.find("mallory.pub") != std::string::npos);
  CHECK(priv.error().message.find("private key") != std::string::npos);

  auto missing = second.load_dir(tmp.path() / "absent");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::not_found);

  TrustStore one;
  REQUIRE(one.load_file(keys / "bob.pem"));
  CHECK(one.size() == 2);
  auto missing_file = one.load_file(keys / "carol.pub");
  REQUIRE_FALSE(missing_file.ok());
  CHECK(missing_file.error().code == Errc::not_found);
  CHECK(missing_file.error().message.find("carol.pub") != std::string::npos);

  TrustStore moved(std::move(one));
  CHECK(moved.size() == 2);
}

TEST_CASE("signing: from_file refuses a private key readable by group or others") {
  TempDir tmp;
  auto pair = signing::generate_key();
  REQUIRE(pair.ok());
  const fs::path key = tmp.path() / "operator.key";
  for (const fs::perms mode :
       {fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read,
        fs::perms::owner_read | fs::perms::others_read,
        fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read}) {
    write_file(key, pair->private_pem, mode);
    auto s = Signer::from_file(key);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().code == Errc::permission_denied);
    CHECK(s.error().message.find("operator.key") != std::string::npos);
    CHECK(s.error().message.find("chmod 600") != std::string::npos);
  }
  fs::permissions(key, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::replace);
  auto ok = Signer::from_file(key);
  REQUIRE_MESSAGE(ok.ok(), error_text(ok));
  auto direct = Signer::from_pem(pair->private_pem);
  REQUIRE(direct.ok());
  CHECK(ok->key_id() == direct->key_id());

  auto missing = Signer::from_file(tmp.path() / "absent.key");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == Errc::not_found);

  write_file(key, pair->public_pem);
  auto wrong = Signer::from_file(key);
  REQUIRE_FALSE(wrong.ok());
  CHECK(wrong.error().code == Errc::invalid_argument);
  CHECK(wrong.error().message.find("operator.key") != std::string::npos);

  // Moving keeps the key; the moved-from signer signs nothing.
  Signer a = std::move(ok).value();
  Signer b = std::move(a);
  CHECK(b.sign("x").size() == signing::kSignatureBytes);
  CHECK(a.sign("x").empty());  // NOLINT(bugprone-use-after-move): documented moved-from state
}

}  // TEST_SUITE("signing")
