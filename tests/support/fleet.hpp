#pragma once
// A whole Flotilla deployment for one integration test: a real Mosquitto from the production
// template (ACLs included), flotilla-manager on a RocksDB under the test's directory, real
// flotilla-agent processes, the simulator and the CLI binary. Everything is reaped and removed
// by the destructor. One thread drives an instance. Failures throw std::runtime_error.

#include <chrono>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "flotilla/v1/manager.pb.h"
#include "support/mosquitto.hpp"
#include "support/process.hpp"

namespace flotilla::testing {

struct FleetOptions {
  std::vector<std::string> devices{};  // broker users besides the manager and operator
  std::size_t sim_devices = 0;         // simulated device ids added as users: sim-{kind}-{index}
  // Extra TOML appended to the manager's configuration (e.g. a [jobs] section).
  std::string manager_toml{};
};

struct AgentOptions {
  std::string keepalive = "2s";
  std::string telemetry_interval = "1s";
  std::string tenant = "";
};

class Fleet {
 public:
  explicit Fleet(FleetOptions options);
  ~Fleet();
  Fleet(const Fleet&) = delete;
  Fleet& operator=(const Fleet&) = delete;

  MosquittoBroker& broker() { return *broker_; }
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path manager_data_dir() const { return dir_ / "manager"; }
  std::string password(const std::string& user) const { return "pw-" + user; }

  // Starts the manager (again after a stop or kill: same data directory).
  ChildProcess& start_manager();
  ChildProcess& manager() { return *manager_; }
  ChildProcess& start_agent(const std::string& device_id, AgentOptions options = {});
  ChildProcess& agent(const std::string& device_id) { return agents_.at(device_id); }
  ChildProcess& start_sim(std::size_t devices, const std::string& telemetry_interval = "1s",
                          std::vector<std::string> extra_args = {});
  ChildProcess& sim() { return *sim_; }

  // Job signing: the operator's private key (created on first use) and the directory of trusted
  // public keys every agent of this fleet is configured with (and the simulator, when asked).
  std::filesystem::path operator_key();
  std::filesystem::path trusted_keys_dir() const { return dir_ / "trusted"; }
  // The simulator's job ledger: one line "device job attempt" per execution.
  std::filesystem::path sim_ledger() const { return dir_ / "sim-ledger.txt"; }

  // One request to the manager over MQTT 5 request/response (the CLI's own client).
  std::optional<v1::RpcResponse> rpc(const v1::RpcRequest& request,
                                     std::chrono::milliseconds timeout = std::chrono::seconds(3));
  std::optional<v1::DeviceDetail> device(const std::string& id);
  std::optional<v1::ManagerStats> stats();
  // Every device record, paging through the list; nullopt when a request failed.
  std::optional<std::vector<v1::DeviceRecord>> devices();
  const std::string& last_rpc_error() const { return last_rpc_error_; }

  // Runs the flotilla CLI with this fleet's config; stdout and stderr are captured together.
  CommandResult cli(std::vector<std::string> args);

  // Polls `done` every `step` until it returns true or `timeout` passes.
  template <typename Pred>
  static bool wait_until(Pred done, std::chrono::milliseconds timeout,
                         std::chrono::milliseconds step = std::chrono::milliseconds(50)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (done()) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(step);
    }
  }

  // Logs of every process of the fleet, for failure messages.
  std::string logs() const;

 private:
  std::filesystem::path write_secret(const std::string& user);
  std::filesystem::path operator_key_;

  std::filesystem::path dir_;
  std::unique_ptr<MosquittoBroker> broker_;
  std::optional<ChildProcess> manager_;
  std::map<std::string, ChildProcess> agents_;
  std::optional<ChildProcess> sim_;
  std::string last_rpc_error_;
};

// Path of a built executable: flotilla-manager, flotilla-agent, flotilla-sim, flotilla.
std::filesystem::path binary(const std::string& name);

}  // namespace flotilla::testing
