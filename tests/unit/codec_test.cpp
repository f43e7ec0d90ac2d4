// Golden fixtures: canonical messages of every wire and storage schema, encoded once and kept
// under tests/fixtures/golden. Decoding the stored bytes must give back the same message, so a
// schema change that breaks old payloads fails here. FLOTILLA_UPDATE_GOLDEN=1 rewrites them.

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

#include <google/protobuf/util/message_differencer.h>

#include "flotilla/core/codec.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/manager.pb.h"
#include "flotilla/v1/record.pb.h"

using namespace flotilla;

namespace {

std::filesystem::path golden_dir() { return std::filesystem::path(FLOTILLA_SOURCE_DIR) / "tests/fixtures/golden"; }

v1::Inventory sample_inventory() {
  v1::Inventory inv;
  *inv.mutable_header() = codec::make_header(DeviceId::parse("golden-pc-1").value(), 1700000000000, 0, 1700000000123);
  inv.mutable_hardware()->set_vendor("Dell Inc.");
  inv.mutable_hardware()->set_model("OptiPlex 7090");
  inv.mutable_hardware()->set_serial("SN0001");
  inv.mutable_hardware()->set_firmware_version("1.2.3");
  inv.mutable_hardware()->set_architecture("x86_64");
  inv.mutable_cpu()->set_model("Intel(R) Core(TM) i7");
  inv.mutable_cpu()->set_logical_cores(8);
  inv.set_memory_total_bytes(16ull << 30);
  inv.mutable_os()->set_name("Debian GNU/Linux");
  inv.mutable_os()->set_id("debian");
  inv.mutable_os()->set_version("12");
  inv.mutable_os()->set_kernel("6.1.0-26-amd64");
  auto* m = inv.add_mounts();
  m->set_mount_point("/");
  m->set_fs_type("ext4");
  m->set_total_bytes(256ull << 30);
  auto* nic = inv.add_interfaces();
  nic->set_name("eth0");
  nic->set_mac("02:00:00:00:00:01");
  nic->add_addresses("10.0.0.1");
  auto* p = inv.add_packages();
  p->set_name("openssl");
  p->set_version("3.0.11-1~deb12u2");
  p->set_architecture("amd64");
  return inv;
}

struct Golden {
  std::string name;
  std::function<std::unique_ptr<google::protobuf::Message>()> make;
};

std::vector<Golden> goldens() {
  const auto id = DeviceId::parse("golden-pc-1").value();
  return {
      {"birth",
       [=] {
         auto b = std::make_unique<v1::Birth>();
         *b->mutable_header() = codec::make_header(id, 1700000000000, 0, 1700000000123);
         b->set_kind(v1::DEVICE_KIND_COMPUTER);
         b->set_agent_version("0.1.0");
         *b->mutable_inventory() = sample_inventory();
         b->set_keepalive_s(30);
         b->set_telemetry_interval_s(30);
         b->set_tenant("acme");
         b->set_site("hq");
         b->add_tags("lab");
         b->set_outbox_dropped(3);
         b->set_stream_id(77);
         b->set_stream_acked_seq(41);
         return b;
       }},
      {"inventory", [] { return std::make_unique<v1::Inventory>(sample_inventory()); }},
      {"telemetry",
       [=] {
         auto t = std::make_unique<v1::Telemetry>();
         *t->mutable_header() = codec::make_header(id, 1700000000000, 5, 1700000030000);
         t->set_cpu_percent(12.5);
         t->set_load1(0.5);
         t->set_memory_total_bytes(16ull << 30);
         t->set_memory_available_bytes(8ull << 30);
         auto* mu = t->add_mounts();
         mu->set_mount_point("/");
         mu->set_total_bytes(256ull << 30);
         mu->set_used_bytes(100ull << 30);
         t->set_uptime_s(3600);
         auto* temp = t->add_temperatures();
         temp->set_sensor("cpu");
         temp->set_celsius(48.5);
         return t;
       }},
      {"death",
       [=] {
         auto d = std::make_unique<v1::Death>();
         *d->mutable_header() = codec::make_header(id, 1700000000000, 0, 1700000000123);
         d->set_reason(v1::Death::REASON_CONNECTION_LOST);
         return d;
       }},
      {"command",
       [=] {
         auto c = std::make_unique<v1::Command>();
         *c->mutable_header() = codec::make_header(id, 0, 1, 1700000000123);
         c->set_command_id("manager-1-rebirth-1-1");
         c->set_type("rebirth");
         c->set_expires_at_ms(1700000300123);
         return c;
       }},
      {"command_result",
       [=] {
         auto r = std::make_unique<v1::CommandResult>();
         *r->mutable_header() = codec::make_header(id, 1700000000000, 9, 1700000000200);
         r->set_command_id("manager-1-rebirth-1-1");
         r->set_status(v1::CommandResult::STATUS_SUCCEEDED);
         r->set_message("birth sent");
         return r;
       }},
      {"manager_state",
       [] {
         auto s = std::make_unique<v1::ManagerState>();
         s->set_schema_version(1);
         s->set_instance_id("manager-1");
         s->set_online(true);
         s->set_since_ms(1700000000000);
         s->set_version("0.1.0");
         return s;
       }},
      {"rpc_request",
       [] {
         auto r = std::make_unique<v1::RpcRequest>();
         r->set_schema_version(1);
         r->mutable_count_devices()->set_by("firmware.version");
         return r;
       }},
      {"device_record",
       [] {
         auto r = std::make_unique<v1::DeviceRecord>();
         r->set_device_id("golden-pc-1");
         r->set_kind(v1::DEVICE_KIND_COMPUTER);
         r->set_online(true);
         r->set_session_epoch(1700000000000);
         r->set_last_seq(5);
         r->set_stream_id(77);
         r->set_readings(5);
         r->set_os_name("Debian GNU/Linux");
         r->set_firmware_version("1.2.3");
         r->set_first_seen_ms(1700000000100);
         r->set_last_seen_ms(1700000030100);
         return r;
       }},
  };
}

std::string read_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace

TEST_CASE("golden fixtures decode to the canonical messages") {
  const bool update = std::getenv("FLOTILLA_UPDATE_GOLDEN") != nullptr;
  for (const auto& g : goldens()) {
    CAPTURE(g.name);
    auto expected = g.make();
    const auto path = golden_dir() / (g.name + ".bin");
    if (update) {
      std::filesystem::create_directories(golden_dir());
      std::ofstream(path, std::ios::binary) << codec::encode(*expected);
    }
    REQUIRE(std::filesystem::exists(path));
    const std::string bytes = read_bytes(path);
    auto decoded = std::unique_ptr<google::protobuf::Message>(expected->New());
    REQUIRE(codec::decode_into(bytes, codec::max_inventory_bytes, *decoded));
    CHECK(google::protobuf::util::MessageDifferencer::Equals(*decoded, *expected));
  }
}

TEST_CASE("hostile bytes: truncated and corrupted fixtures never crash and never decode to the original") {
  for (const auto& g : goldens()) {
    CAPTURE(g.name);
    auto expected = g.make();
    const std::string bytes = read_bytes(golden_dir() / (g.name + ".bin"));
    REQUIRE(bytes.size() > 4);
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      auto m = std::unique_ptr<google::protobuf::Message>(expected->New());
      if (codec::decode_into(std::string_view(bytes).substr(0, cut), codec::max_inventory_bytes, *m)) {
        CHECK_FALSE(google::protobuf::util::MessageDifferencer::Equals(*m, *expected));
      }
    }
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      std::string corrupt = bytes;
      corrupt[i] = static_cast<char>(corrupt[i] ^ 0xff);
      auto m = std::unique_ptr<google::protobuf::Message>(expected->New());
      (void)codec::decode_into(corrupt, codec::max_inventory_bytes, *m);
    }
  }
}

TEST_CASE("size limit is checked before parsing") {
  const std::string big(codec::max_telemetry_bytes + 1, '\0');
  auto t = codec::decode<v1::Telemetry>(big, codec::max_telemetry_bytes);
  REQUIRE_FALSE(t);
  CHECK(t.error().code == Errc::too_large);
  auto garbage = codec::decode<v1::Telemetry>("\xff\xff\xff\xff\xff\xff", codec::max_telemetry_bytes);
  REQUIRE_FALSE(garbage);
  CHECK(garbage.error().code == Errc::parse_error);
}

TEST_CASE("header checks: schema version range and device id binding") {
  const auto id = DeviceId::parse("dev-a").value();
  auto h = codec::make_header(id, 1, 0, 0);
  CHECK(codec::check_header(h, id));
  CHECK_FALSE(codec::check_header(h, DeviceId::parse("dev-b").value()));
  h.set_schema_version(0);
  CHECK_FALSE(codec::check_header(h, id));
  h.set_schema_version(codec::schema_version + 1);
  CHECK_FALSE(codec::check_header(h, id));
}
