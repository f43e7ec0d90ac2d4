#include "support/fleet.hpp"

#include <sys/stat.h>

#include <fstream>
#include <stdexcept>

#include <fmt/format.h>

#include "flotilla/cli/rpc_client.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/signing.hpp"
#include "flotilla/sim/fleet_model.hpp"

namespace flotilla::testing {
namespace {

constexpr const char* kManager = "flotilla-manager";
constexpr const char* kOperator = "flotilla-operator";

void write_text(const std::filesystem::path& path, const std::string& text, mode_t mode = 0644) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  out.close();
  ::chmod(path.c_str(), mode);
}

}  // namespace

std::filesystem::path binary(const std::string& name) {
  const std::filesystem::path root(FLOTILLA_BINARY_DIR);
  if (name == "flotilla-manager") return root / "fleet-manager" / name;
  if (name == "flotilla-agent") return root / "device-agent" / name;
  if (name == "flotilla-sim") return root / "examples" / "sim" / name;
  if (name == "flotilla") return root / "cli" / name;
  throw std::runtime_error("unknown binary " + name);
}

Fleet::Fleet(FleetOptions options) {
  dir_ = make_temp_dir("flotilla-fleet");
  MosquittoOptions mo;
  mo.work_dir = dir_ / "mosquitto";
  std::vector<std::string> users{kManager, kOperator};
  users.insert(users.end(), options.devices.begin(), options.devices.end());
  for (const auto& u : users) mo.users.emplace_back(u, password(u));
  // Simulated devices all use the password in sim.password.
  for (std::size_t i = 0; i < options.sim_devices; ++i) mo.users.emplace_back(sim::device_id("sim", i), "pw-sim");
  broker_ = std::make_unique<MosquittoBroker>(std::move(mo));
  broker_->start();

  write_text(dir_ / "manager.toml",
             fmt::format("[mqtt]\nbroker = \"{}\"\npassword_file = \"{}\"\n[manager]\ndata_dir = \"{}\"\n{}",
                         broker_->service_uri(), write_secret(kManager).string(), manager_data_dir().string(),
                         options.manager_toml));
  std::filesystem::create_directories(trusted_keys_dir());
  write_text(dir_ / "cli.toml", fmt::format("[mqtt]\nbroker = \"{}\"\npassword_file = \"{}\"\n", broker_->service_uri(),
                                            write_secret(kOperator).string()));
  if (options.sim_devices > 0) write_secret("sim");
}

Fleet::~Fleet() {
  if (sim_) sim_->terminate(std::chrono::seconds(5));
  for (auto& [id, agent] : agents_) agent.terminate(std::chrono::seconds(5));
  if (manager_) manager_->terminate(std::chrono::seconds(5));
  broker_.reset();
  if (std::getenv("FLOTILLA_KEEP_TEST_DIRS") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::filesystem::path Fleet::write_secret(const std::string& user) {
  auto path = dir_ / (user + ".password");
  write_text(path, password(user) + "\n", 0600);
  return path;
}

ChildProcess& Fleet::start_manager() {
  if (manager_ && manager_->running()) throw std::runtime_error("manager already running");
  SpawnOptions so;
  so.log_path = dir_ / "manager.log";
  manager_.emplace(
      ChildProcess::spawn({binary("flotilla-manager").string(), "--config", (dir_ / "manager.toml").string()}, so));
  // Ready once it answers: its subscriptions then exist, so nothing devices publish is missed.
  if (!wait_until([&] { return !manager_->running() || stats().has_value(); }, std::chrono::seconds(20),
                  std::chrono::milliseconds(100)) ||
      !manager_->running()) {
    throw std::runtime_error("manager did not become ready:\n" + logs());
  }
  return *manager_;
}

ChildProcess& Fleet::start_agent(const std::string& device_id, AgentOptions options) {
  if (auto it = agents_.find(device_id); it != agents_.end() && it->second.running()) {
    throw std::runtime_error("agent already running: " + device_id);
  }
  const auto config = dir_ / (device_id + ".toml");
  write_text(config, fmt::format("[mqtt]\nbroker = \"{}\"\npassword_file = \"{}\"\nkeepalive = \"{}\"\n"
                                 "reconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n"
                                 "[agent]\ntelemetry_interval = \"{}\"\nsite = \"test-lab\"\ntags = [\"integration\"]\n"
                                 "tenant = \"{}\"\n[jobs]\ntrusted_keys = \"{}\"\n",
                                 broker_->device_uri(), write_secret(device_id).string(), options.keepalive,
                                 options.telemetry_interval, options.tenant, trusted_keys_dir().string()));
  SpawnOptions so;
  so.log_path = dir_ / (device_id + ".log");
  agents_.erase(device_id);
  auto [it, _] = agents_.emplace(
      device_id, ChildProcess::spawn({binary("flotilla-agent").string(), "--config", config.string(), "--device-id",
                                      device_id, "--state-dir", (dir_ / "agents" / device_id).string()},
                                     so));
  return it->second;
}

ChildProcess& Fleet::start_sim(std::size_t devices, const std::string& telemetry_interval,
                               std::vector<std::string> extra_args) {
  SpawnOptions so;
  so.log_path = dir_ / "sim.log";
  std::vector<std::string> argv{binary("flotilla-sim").string(),
                                "--broker",
                                broker_->device_uri(),
                                "--devices",
                                std::to_string(devices),
                                "--password-file",
                                (dir_ / "sim.password").string(),
                                "--telemetry-interval",
                                telemetry_interval,
                                "--keepalive",
                                "5s",
                                "--trusted-keys",
                                trusted_keys_dir().string(),
                                "--ledger",
                                sim_ledger().string()};
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  sim_.emplace(ChildProcess::spawn(std::move(argv), so));
  return *sim_;
}

std::filesystem::path Fleet::operator_key() {
  if (!operator_key_.empty()) return operator_key_;
  auto pair = signing::generate_key();
  if (!pair) throw std::runtime_error("cannot generate a signing key: " + pair.error().message);
  std::filesystem::create_directories(dir_ / "keys");
  operator_key_ = dir_ / "keys" / "operator.key";
  write_text(operator_key_, pair->private_pem, 0600);
  write_text(trusted_keys_dir() / "operator.pub", pair->public_pem);
  // Top-level keys come before the first table.
  write_text(dir_ / "cli.toml",
             fmt::format("signing_key = \"{}\"\n", operator_key_.string()) + read_file(dir_ / "cli.toml"));
  return operator_key_;
}

std::optional<v1::RpcResponse> Fleet::rpc(const v1::RpcRequest& request, std::chrono::milliseconds timeout) {
  config::MqttConfig m;
  m.broker = broker_->service_uri();
  m.username = kOperator;
  m.password = password(kOperator);
  auto options = config::transport_options(m);
  if (!options) return std::nullopt;
  auto client = cli::RpcClient::connect(*options, kOperator, timeout);
  if (!client) {
    last_rpc_error_ = client.error().message;
    return std::nullopt;
  }
  auto response = client->call(request, timeout);
  if (!response) {
    last_rpc_error_ = response.error().message;
    return std::nullopt;
  }
  return std::move(response).value();
}

std::optional<v1::DeviceDetail> Fleet::device(const std::string& id) {
  v1::RpcRequest req;
  req.mutable_get_device()->set_device_id(id);
  auto r = rpc(req);
  if (!r || r->code() != v1::RpcResponse::CODE_OK) return std::nullopt;
  return r->device();
}

std::optional<v1::ManagerStats> Fleet::stats() {
  v1::RpcRequest req;
  req.mutable_manager_stats();
  auto r = rpc(req);
  if (!r || r->code() != v1::RpcResponse::CODE_OK) return std::nullopt;
  return r->manager_stats();
}

std::optional<std::vector<v1::DeviceRecord>> Fleet::devices() {
  std::vector<v1::DeviceRecord> out;
  std::string cursor;
  while (true) {
    v1::RpcRequest req;
    req.mutable_list_devices()->set_start_after(cursor);
    auto r = rpc(req);
    if (!r || r->code() != v1::RpcResponse::CODE_OK) return std::nullopt;
    for (const auto& d : r->list_devices().devices()) out.push_back(d);
    cursor = r->list_devices().next_cursor();
    if (cursor.empty()) return out;
  }
}

CommandResult Fleet::cli(std::vector<std::string> args) {
  std::vector<std::string> argv{binary("flotilla").string(), "--config", (dir_ / "cli.toml").string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, dir_ / "cli.log", std::chrono::seconds(20));
}

std::string Fleet::logs() const {
  std::string out;
  for (const auto& entry : std::filesystem::directory_iterator(dir_)) {
    if (entry.path().extension() != ".log") continue;
    auto text = read_file(entry.path());
    if (text.size() > 6000) text = "..." + text.substr(text.size() - 6000);
    out += fmt::format("==== {}\n{}\n", entry.path().filename().string(), text);
  }
  return out;
}

}  // namespace flotilla::testing
