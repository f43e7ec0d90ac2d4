// Unit tests of the `flotilla` CLI: pure renderers on hand-built records, and run() paths that
// need no broker (usage errors, help, version, an unreachable broker, config file errors).

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>
#include <google/protobuf/util/json_util.h>

#include "flotilla/cli/cli.hpp"
#include "flotilla/cli/render.hpp"
#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/version.hpp"

namespace fs = std::filesystem;
using namespace flotilla;

namespace {

constexpr std::int64_t kNow = 1'700'000'000'000;
constexpr std::uint64_t kGiB = 1024ULL * 1024 * 1024;

struct RunResult {
  int code;
  std::string out;
  std::string err;
};

RunResult run_cli(std::vector<std::string> args) {
  args.insert(args.begin(), "flotilla");
  std::vector<char*> argv;
  argv.reserve(argv.size() + args.size());
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::ostringstream out;
  std::ostringstream err;
  const int code = cli::run(static_cast<int>(args.size()), argv.data(), out, err);
  return {code, out.str(), err.str()};
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Checks that an error is one line "flotilla: ...".
void check_one_error_line(const std::string& err) {
  CHECK(err.starts_with("flotilla: "));
  CHECK(err.ends_with("\n"));
  CHECK(err.find('\n') == err.size() - 1);
}

// A temporary file removed at scope exit.
class TempFile {
 public:
  explicit TempFile(const std::string& text)
      : path_(fs::temp_directory_path() / ("flotilla-cli-test-" + cli::random_hex(8) + ".toml")) {
    std::ofstream(path_) << text;
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }

 private:
  fs::path path_;
};

v1::DeviceRecord make_record(std::string id, v1::DeviceKind kind, bool online, std::int64_t last_seen_ms) {
  v1::DeviceRecord r;
  r.set_device_id(std::move(id));
  r.set_kind(kind);
  r.set_online(online);
  r.set_last_seen_ms(last_seen_ms);
  return r;
}

}  // namespace

TEST_SUITE("cli.render") {
TEST_CASE("format_bytes uses binary units with one decimal") {
  CHECK(cli::format_bytes(0) == "0 B");
  CHECK(cli::format_bytes(1023) == "1023 B");
  CHECK(cli::format_bytes(1024) == "1.0 KiB");
  CHECK(cli::format_bytes(1536) == "1.5 KiB");
  CHECK(cli::format_bytes(16'750'372'454ULL) == "15.6 GiB");
  CHECK(cli::format_bytes(1024ULL * 1024 - 1) == "1.0 MiB");  // never "1024.0 KiB"
  CHECK(cli::format_bytes(3 * kGiB * 1024) == "3.0 TiB");
}

TEST_CASE("format_age is relative in the largest whole unit") {
  CHECK(cli::format_age(kNow - 4'000, kNow) == "4s ago");
  CHECK(cli::format_age(kNow - 4'999, kNow) == "4s ago");
  CHECK(cli::format_age(kNow - 3 * 60'000 - 59'000, kNow) == "3m ago");
  CHECK(cli::format_age(kNow - 2 * 3'600'000, kNow) == "2h ago");
  CHECK(cli::format_age(kNow - 5 * 86'400'000LL, kNow) == "5d ago");
  CHECK(cli::format_age(0, kNow) == "never");
  CHECK(cli::format_age(kNow + 10'000, kNow) == "0s ago");
}

TEST_CASE("format_uptime shows two units") {
  CHECK(cli::format_uptime(45) == "45s");
  CHECK(cli::format_uptime(7 * 60 + 12) == "7m 12s");
  CHECK(cli::format_uptime(2 * 3600 + 5 * 60 + 9) == "2h 5m");
  CHECK(cli::format_uptime(3 * 86400 + 4 * 3600 + 59) == "3d 4h");
}

TEST_CASE("devices table aligns columns and shows relative ages") {
  auto pc = make_record("pc-0001", v1::DEVICE_KIND_COMPUTER, true, kNow - 4'000);
  pc.set_os_name("Debian GNU/Linux");
  pc.set_os_version("12");
  pc.set_firmware_version("1.21.0");
  pc.set_hardware_model("OptiPlex 7090");
  auto printer = make_record("printer-lobby-2", v1::DEVICE_KIND_PRINTER, false, kNow - 180'000);
  const auto table = cli::render_devices_table({pc, printer}, kNow);
  const auto lines = lines_of(table);
  REQUIRE(lines.size() == 3);
  CHECK(lines[0].starts_with("ID"));
  for (const char* column : {"KIND", "STATUS", "OS", "FIRMWARE", "MODEL", "LAST SEEN"}) {
    CHECK(lines[0].find(column) != std::string::npos);
  }
  // Each column starts at the same offset on every line.
  const auto kind_col = lines[0].find("KIND");
  CHECK(lines[1].find("computer") == kind_col);
  CHECK(lines[2].find("printer ") == kind_col);
  const auto status_col = lines[0].find("STATUS");
  CHECK(lines[1].find("online") == status_col);
  CHECK(lines[2].find("offline") == status_col);
  const auto seen_col = lines[0].find("LAST SEEN");
  CHECK(lines[1].substr(seen_col) == "4s ago");
  CHECK(lines[2].substr(seen_col) == "3m ago");
  CHECK(lines[1].find("Debian GNU/Linux 12") == lines[0].find("OS "));
  CHECK(lines[1].find("OptiPlex 7090") == lines[0].find("MODEL"));
  // Missing values read "-".
  CHECK(lines[2].find(" - ") != std::string::npos);
  for (const auto& line : lines) CHECK_FALSE(line.ends_with(" "));
}

TEST_CASE("devices table of no devices is the header") {
  CHECK(cli::render_devices_table({}, kNow) == "ID  KIND  STATUS  OS  FIRMWARE  MODEL  LAST SEEN\n");
}

TEST_CASE("count table has buckets and a total, counts right-aligned") {
  v1::CountDevicesResponse counts;
  counts.set_by("kind");
  auto* b = counts.add_buckets();
  b->set_value("computer");
  b->set_count(1200);
  b = counts.add_buckets();
  b->set_value("sensor");
  b->set_count(7);
  b = counts.add_buckets();
  b->set_count(1);
  counts.set_total(1208);
  const auto lines = lines_of(cli::render_count_table(counts));
  REQUIRE(lines.size() == 5);
  CHECK(lines[0] == "VALUE     COUNT");
  CHECK(lines[1] == "computer   1200");
  CHECK(lines[2] == "sensor        7");
  CHECK(lines[3] == "(empty)       1");
  CHECK(lines[4] == "TOTAL      1208");
}

TEST_CASE("device detail summarises inventory and telemetry") {
  v1::DeviceDetail detail;
  auto* r = detail.mutable_record();
  *r = make_record("pc-0001", v1::DEVICE_KIND_COMPUTER, true, kNow - 4'000);
  r->set_connected_since_ms(kNow - 2 * 3'600'000);
  r->set_tenant("acme");
  r->add_tags("lab");
  r->add_tags("floor-2");

  auto* inv = detail.mutable_inventory();
  inv->mutable_hardware()->set_vendor("Dell Inc.");
  inv->mutable_hardware()->set_model("OptiPlex 7090");
  inv->mutable_cpu()->set_model("Intel(R) Core(TM) i7-10700");
  inv->mutable_cpu()->set_logical_cores(16);
  inv->set_memory_total_bytes(16'750'372'454ULL);
  inv->mutable_os()->set_pretty_name("Debian GNU/Linux 12 (bookworm)");
  inv->mutable_os()->set_kernel("6.1.0-18-amd64");
  auto* mount = inv->add_mounts();
  mount->set_mount_point("/");
  mount->set_device("/dev/nvme0n1p2");
  mount->set_fs_type("ext4");
  mount->set_total_bytes(100 * kGiB);
  auto* nic = inv->add_interfaces();
  nic->set_name("eth0");
  nic->set_mac("aa:bb:cc:dd:ee:ff");
  nic->add_addresses("10.0.0.7");
  nic->add_addresses("fe80::1");
  for (const char* name : {"bash", "coreutils", "openssl-secret-package-name"}) inv->add_packages()->set_name(name);

  auto* t = detail.mutable_telemetry();
  t->mutable_header()->set_timestamp_ms(kNow - 10'000);
  t->set_cpu_percent(12.5);
  t->set_load1(0.5);
  t->set_load5(0.25);
  t->set_load15(0.125);
  t->set_memory_total_bytes(16 * kGiB);
  t->set_memory_available_bytes(12 * kGiB);
  t->set_uptime_s(3 * 86400 + 4 * 3600);
  auto* usage = t->add_mounts();
  usage->set_mount_point("/");
  usage->set_total_bytes(100 * kGiB);
  usage->set_used_bytes(25 * kGiB);
  usage->set_available_bytes(75 * kGiB);
  auto* temp = t->add_temperatures();
  temp->set_sensor("Package id 0");
  temp->set_celsius(48.0);

  const auto text = cli::render_device_detail(detail, kNow);
  for (const char* expected : {"pc-0001",
                               "computer",
                               "online (connected 2h ago)",
                               "acme",
                               "lab, floor-2",
                               "4s ago",
                               "Dell Inc. OptiPlex 7090",
                               "Intel(R) Core(TM) i7-10700 (16 logical cores)",
                               "15.6 GiB",
                               "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64",
                               "/dev/nvme0n1p2",
                               "100.0 GiB",
                               "eth0",
                               "10.0.0.7, fe80::1",
                               "Telemetry (sampled 10s ago)",
                               "12.5%",
                               "0.50 0.25 0.12",
                               "4.0 GiB used of 16.0 GiB (25.0%)",
                               "3d 4h",
                               "25.0 GiB",
                               "Package id 0",
                               "48.0"}) {
    CHECK_MESSAGE(text.find(expected) != std::string::npos, expected);
  }
  CHECK(text.find("Packages:") != std::string::npos);
  CHECK(text.find("openssl-secret-package-name") == std::string::npos);  // only the count in table mode
  bool packages_line = false;
  for (const auto& line : lines_of(text)) {
    if (line.find("Packages:") != std::string::npos) packages_line = line.ends_with(" 3");
  }
  CHECK(packages_line);
}

TEST_CASE("device detail falls back to the record's package count") {
  v1::DeviceDetail detail;
  *detail.mutable_record() = make_record("pc-2", v1::DEVICE_KIND_COMPUTER, true, kNow);
  detail.mutable_record()->set_package_count(1523);
  detail.mutable_inventory()->set_memory_total_bytes(kGiB);
  CHECK(cli::render_device_detail(detail, kNow).find("Packages:  1523") != std::string::npos);
}

TEST_CASE("device detail without inventory or telemetry says so") {
  v1::DeviceDetail detail;
  *detail.mutable_record() = make_record("sensor-9", v1::DEVICE_KIND_SENSOR, false, 0);
  const auto text = cli::render_device_detail(detail, kNow);
  CHECK(text.find("Inventory: none received") != std::string::npos);
  CHECK(text.find("Telemetry: none received") != std::string::npos);
  CHECK(text.find("never") != std::string::npos);
}

TEST_CASE("manager stats list counters sorted by reason") {
  v1::ManagerStats stats;
  stats.set_instance_id("mgr-a");
  stats.set_version("0.1.0");
  stats.set_started_at_ms(kNow - (2 * 3600 + 5 * 60) * 1000LL);
  stats.set_devices(1000);
  stats.set_devices_online(998);
  stats.set_messages_ingested(123456);
  stats.set_batches_written(789);
  (*stats.mutable_dropped())["parse_error"] = 3;
  (*stats.mutable_dropped())["bad_topic"] = 12;
  const auto text = cli::render_manager_stats(stats, kNow);
  for (const char* expected : {"mgr-a", "0.1.0", "2h 5m", "1000 (998 online)", "123456", "789", "Events: none"}) {
    CHECK_MESSAGE(text.find(expected) != std::string::npos, expected);
  }
  const auto bad_topic = text.find("bad_topic");
  const auto parse_error = text.find("parse_error");
  REQUIRE(bad_topic != std::string::npos);
  REQUIRE(parse_error != std::string::npos);
  CHECK(bad_topic < parse_error);
}

TEST_CASE("JSON uses proto field names, prints defaults and parses back") {
  auto record = make_record("pc-0001", v1::DEVICE_KIND_COMPUTER, true, kNow);
  record.set_os_name("Debian GNU/Linux");
  record.add_tags("lab");
  auto json = cli::to_json(record);
  REQUIRE(json.ok());
  CHECK(json->find("\"device_id\":\"pc-0001\"") != std::string::npos);
  CHECK(json->find("\"last_seen_ms\"") != std::string::npos);
  CHECK(json->find("\"os_name\"") != std::string::npos);
  CHECK(json->find("\"seq_gaps\"") != std::string::npos);  // zero, printed anyway
  CHECK(json->find("\"kind\":\"DEVICE_KIND_COMPUTER\"") != std::string::npos);
  CHECK(json->find("deviceId") == std::string::npos);
  CHECK(json->find('\n') == std::string::npos);

  v1::DeviceRecord back;
  REQUIRE(google::protobuf::util::JsonStringToMessage(*json, &back).ok());
  CHECK(back.SerializeAsString() == record.SerializeAsString());

  v1::CountDevicesResponse counts;
  counts.set_by("kind");
  auto* b = counts.add_buckets();
  b->set_value("computer");
  b->set_count(2);
  counts.set_total(2);
  auto counts_json = cli::to_json(counts);
  REQUIRE(counts_json.ok());
  CHECK(counts_json->find("\"buckets\":[{\"value\":\"computer\"") != std::string::npos);
  v1::CountDevicesResponse counts_back;
  REQUIRE(google::protobuf::util::JsonStringToMessage(*counts_json, &counts_back).ok());
  CHECK(counts_back.SerializeAsString() == counts.SerializeAsString());
}
}  // TEST_SUITE("cli.render")

TEST_SUITE("cli.run") {
TEST_CASE("--help prints usage and exits 0") {
  const auto r = run_cli({"--help"});
  CHECK(r.code == 0);
  CHECK(r.out.find("Usage: flotilla") != std::string::npos);
  CHECK(r.out.find("devices") != std::string::npos);
  CHECK(r.out.find("--output") != std::string::npos);
  CHECK(r.err.empty());
}

TEST_CASE("subcommand --help exits 0") {
  const auto r = run_cli({"devices", "count", "--help"});
  CHECK(r.code == 0);
  CHECK(r.out.find("--by") != std::string::npos);
}

TEST_CASE("--version prints the version and exits 0") {
  const auto r = run_cli({"--version"});
  CHECK(r.code == 0);
  CHECK(r.out == std::string("flotilla ") + flotilla::version + "\n");
}

TEST_CASE("usage errors exit 2 with one line on stderr") {
  SUBCASE("unknown flag") {
    const auto r = run_cli({"devices", "list", "--bogus"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--bogus") != std::string::npos);
    check_one_error_line(r.err);
  }
  SUBCASE("no command") {
    const auto r = run_cli({});
    CHECK(r.code == cli::exit_usage);
    check_one_error_line(r.err);
  }
  SUBCASE("no subcommand") {
    const auto r = run_cli({"devices"});
    CHECK(r.code == cli::exit_usage);
    check_one_error_line(r.err);
  }
  SUBCASE("bad device id for show") {
    const auto r = run_cli({"devices", "show", "bad/id", "--broker", "mqtt://127.0.0.1:1"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("bad/id") != std::string::npos);
    check_one_error_line(r.err);
  }
  SUBCASE("bad device id for rebirth") {
    const auto r = run_cli({"devices", "rebirth", "#"});
    CHECK(r.code == cli::exit_usage);
    check_one_error_line(r.err);
  }
  SUBCASE("-o yaml") {
    const auto r = run_cli({"-o", "yaml", "devices", "list"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("yaml") != std::string::npos);
    check_one_error_line(r.err);
  }
  SUBCASE("bad timeout") {
    const auto r = run_cli({"devices", "list", "--timeout", "soon"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--timeout") != std::string::npos);
  }
  SUBCASE("zero limit") {
    const auto r = run_cli({"devices", "list", "--limit", "0"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--limit") != std::string::npos);
  }
  SUBCASE("count without --by") {
    const auto r = run_cli({"devices", "count"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--by") != std::string::npos);
  }
  SUBCASE("bad broker URI") {
    const auto r = run_cli({"devices", "list", "--broker", "http://example.org"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--broker") != std::string::npos);
  }
  SUBCASE("username that cannot be a topic level") {
    const auto r = run_cli({"devices", "list", "--username", "ops/+"});
    CHECK(r.code == cli::exit_usage);
    check_one_error_line(r.err);
  }
  SUBCASE("missing config file") {
    const auto r = run_cli({"--config", "/nonexistent/flotilla.toml", "manager", "status"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("/nonexistent/flotilla.toml") != std::string::npos);
  }
}

TEST_CASE("unreachable broker exits 3 quickly") {
  const auto start = std::chrono::steady_clock::now();
  const auto r = run_cli({"devices", "list", "--broker", "mqtt://127.0.0.1:1", "--timeout", "1s"});
  const auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(r.code == cli::exit_unreachable);
  CHECK(r.err.find("broker") != std::string::npos);
  CHECK(r.err.find("mqtt://127.0.0.1:1") != std::string::npos);
  CHECK(r.out.empty());
  check_one_error_line(r.err);
  CHECK(elapsed < std::chrono::seconds(5));
}

TEST_CASE("global options work before the subcommand too") {
  const auto r = run_cli({"--timeout", "1s", "--broker", "mqtt://127.0.0.1:1", "-o", "json", "manager", "status"});
  CHECK(r.code == cli::exit_unreachable);
}

TEST_CASE("config file with an unknown key exits 2 naming the key") {
  TempFile file("output = \"json\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1\"\nbrokr_port = 1883\n");
  const auto r = run_cli({"--config", file.path(), "devices", "list"});
  CHECK(r.code == cli::exit_usage);
  CHECK(r.err.find("mqtt.brokr_port") != std::string::npos);
  CHECK(r.err.find(file.path()) != std::string::npos);
  check_one_error_line(r.err);
}

TEST_CASE("config file output must be table or json") {
  TempFile file("output = \"yaml\"\n");
  const auto r = run_cli({"--config", file.path(), "devices", "list"});
  CHECK(r.code == cli::exit_usage);
  CHECK(r.err.find("output") != std::string::npos);
}

TEST_CASE("config file that is not TOML exits 2") {
  TempFile file("[mqtt\nbroker = \n");
  const auto r = run_cli({"--config", file.path(), "devices", "list"});
  CHECK(r.code == cli::exit_usage);
  check_one_error_line(r.err);
}

TEST_CASE("flags override the environment, which overrides the file") {
  TempFile file("output = \"table\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:1\"\n");
  const char* saved = std::getenv("FLOTILLA_BROKER");
  const std::string saved_value = saved != nullptr ? saved : "";
  ::unsetenv("FLOTILLA_BROKER");

  auto r = run_cli({"--config", file.path(), "--timeout", "1s", "devices", "list"});
  CHECK(r.code == cli::exit_unreachable);
  CHECK(r.err.find("mqtt://127.0.0.1:1:") != std::string::npos);

  ::setenv("FLOTILLA_BROKER", "mqtt://127.0.0.1:2", 1);
  r = run_cli({"--config", file.path(), "--timeout", "1s", "devices", "list"});
  CHECK(r.code == cli::exit_unreachable);
  CHECK(r.err.find("mqtt://127.0.0.1:2:") != std::string::npos);

  r = run_cli({"--config", file.path(), "--timeout", "1s", "devices", "list", "--broker", "mqtt://127.0.0.1:3"});
  CHECK(r.code == cli::exit_unreachable);
  CHECK(r.err.find("mqtt://127.0.0.1:3:") != std::string::npos);

  if (saved != nullptr) ::setenv("FLOTILLA_BROKER", saved_value.c_str(), 1);
  else ::unsetenv("FLOTILLA_BROKER");
}

TEST_CASE("exit codes of manager reply codes and client errors") {
  CHECK(cli::exit_code_for(v1::RpcResponse::CODE_OK) == 0);
  CHECK(cli::exit_code_for(v1::RpcResponse::CODE_NOT_FOUND) == 4);
  CHECK(cli::exit_code_for(v1::RpcResponse::CODE_INVALID_ARGUMENT) == 5);
  CHECK(cli::exit_code_for(v1::RpcResponse::CODE_UNAVAILABLE) == 3);
  CHECK(cli::exit_code_for(v1::RpcResponse::CODE_INTERNAL) == 1);
  CHECK(cli::exit_code_for(Error{Errc::timeout, ""}) == 3);
  CHECK(cli::exit_code_for(Error{Errc::unavailable, ""}) == 3);
  CHECK(cli::exit_code_for(Error{Errc::permission_denied, ""}) == 3);
  CHECK(cli::exit_code_for(Error{Errc::parse_error, ""}) == 1);
}

TEST_CASE("random_hex has the requested length") {
  const auto a = cli::random_hex(8);
  CHECK(a.size() == 16);
  CHECK(a.find_first_not_of("0123456789abcdef") == std::string::npos);
  CHECK(a != cli::random_hex(8));
}
}  // TEST_SUITE("cli.run")

TEST_CASE("devices delete: exact ids, at most 500, and --yes unless a terminal confirms") {
  SUBCASE("no id") {
    const auto r = run_cli({"devices", "delete", "--yes"});
    CHECK(r.code == cli::exit_usage);
    check_one_error_line(r.err);
  }
  SUBCASE("a pattern is not an id") {
    for (const std::string pattern : {"*", "sim-*", "pc-000?", "a/b", "#"}) {
      CAPTURE(pattern);
      const auto r = run_cli({"devices", "delete", "pc-0001", pattern, "--yes", "--broker", "mqtt://127.0.0.1:1"});
      CHECK(r.code == cli::exit_usage);
      CHECK(r.err.find("invalid device id") != std::string::npos);
      check_one_error_line(r.err);
    }
  }
  SUBCASE("too many ids") {
    std::vector<std::string> args{"devices", "delete", "--yes"};
    for (int i = 0; i < 501; ++i) args.push_back("dev-" + std::to_string(i));
    const auto r = run_cli(args);
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("at most 500") != std::string::npos);
  }
  SUBCASE("without --yes and no terminal: refused before connecting") {
    const auto r = run_cli({"devices", "delete", "pc-0001", "--broker", "mqtt://127.0.0.1:1", "--timeout", "1s"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--yes") != std::string::npos);
    CHECK(r.err.find("nothing was deleted") != std::string::npos);
    CHECK(r.out.empty());
    check_one_error_line(r.err);
  }
  SUBCASE("with --yes it goes to the manager") {
    const auto r = run_cli({"devices", "delete", "pc-0001", "pc-0002", "--yes", "--force", "--broker",
                            "mqtt://127.0.0.1:1", "--timeout", "1s"});
    CHECK(r.code == cli::exit_unreachable);
  }
}

TEST_CASE("groups events: options are checked before connecting") {
  SUBCASE("--limit out of range") {
    for (const std::string limit : {"0", "100001", "many"}) {
      const auto r = run_cli({"groups", "events", "--limit", limit});
      CHECK(r.code == cli::exit_usage);
      CHECK(r.err.find("--limit") != std::string::npos);
    }
  }
  SUBCASE("bad --since") {
    const auto r = run_cli({"groups", "events", "--since", "yesterday", "--broker", "mqtt://127.0.0.1:1"});
    CHECK(r.code == cli::exit_usage);
    CHECK(r.err.find("--since") != std::string::npos);
    check_one_error_line(r.err);
  }
  SUBCASE("bad --device") {
    const auto r = run_cli({"groups", "events", "--device", "a/b"});
    CHECK(r.code == cli::exit_usage);
  }
  SUBCASE("--cursor 0") {
    const auto r = run_cli({"groups", "events", "hq", "--cursor", "0"});
    CHECK(r.code == cli::exit_usage);
  }
  SUBCASE("good options reach the broker") {
    for (const std::string since : {"2h", "-90m", "2026-11-21T02:00:00Z", "now"}) {
      CAPTURE(since);
      const auto r = run_cli({"groups", "events", "hq", "--since", since, "--limit", "5", "--device", "pc-0001",
                              "--broker", "mqtt://127.0.0.1:1", "--timeout", "1s"});
      CHECK(r.code == cli::exit_unreachable);
    }
  }
}

TEST_CASE("deleted devices render with what they left and a note for those that were online") {
  v1::DeletedDevices deleted;
  auto* a = deleted.add_devices();
  *a->mutable_record() = make_record("pc-0001", v1::DEVICE_KIND_COMPUTER, false, kNow - 3 * 86'400'000LL);
  a->add_groups("lab");
  a->add_groups("vip");
  auto* b = deleted.add_devices();
  *b->mutable_record() = make_record("sensor-7", v1::DEVICE_KIND_SENSOR, true, kNow - 4000);
  const auto lines = lines_of(cli::render_deleted_devices(deleted, kNow));
  REQUIRE(lines.size() == 5);
  CHECK(lines[0] == "ID        KIND      WAS      LAST SEEN  GROUPS LEFT");
  CHECK(lines[1] == "pc-0001   computer  offline  3d ago     lab, vip");
  CHECK(lines[2] == "sensor-7  sensor    online   4s ago     -");
  CHECK(lines[3] == "2 devices deleted");
  CHECK(lines[4] == "sensor-7 was online: it registers again as a new device when it next sends a message");
}

TEST_CASE("group events render newest first as given, with the cursor of the next page") {
  v1::GroupEvents events;
  auto add = [&](std::uint64_t seq, std::int64_t at_ms, const std::string& group, const std::string& id, bool joined,
                 const std::string& reason) {
    auto* e = events.add_events();
    e->set_seq(seq);
    e->set_group(group);
    e->set_device_id(id);
    e->set_joined(joined);
    e->set_reason(reason);
    e->set_at_ms(at_ms);
  };
  add(1042, 1'795'230'318'500, "vip", "sim-pc-00003", false, "device deleted");
  add(7, 1'795'230'317'000, "hq", "sim-sensor-00002", true, "query");
  events.set_next_cursor(7);
  const auto lines = lines_of(cli::render_group_events(events));
  REQUIRE(lines.size() == 4);
  CHECK(lines[0] == " SEQ  TIME                  GROUP  DEVICE            CHANGE  REASON");
  CHECK(lines[1] == "1042  2026-11-21T03:05:18Z  vip    sim-pc-00003      left    device deleted");
  CHECK(lines[2] == "   7  2026-11-21T03:05:17Z  hq     sim-sensor-00002  joined  query");
  CHECK(lines[3] == "next page: --cursor 7");
  events.set_next_cursor(0);
  CHECK(lines_of(cli::render_group_events(events)).size() == 3);
  CHECK(lines_of(cli::render_group_events(v1::GroupEvents{})).size() == 1);
}
