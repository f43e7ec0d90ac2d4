#pragma once
// Runs N virtual devices, each with its own MQTT session (client id, Will, birth, telemetry,
// commands), over one reactor thread: the caller of run(). Devices connect spread over
// connect_spread so a large fleet does not arrive as one burst.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "flotilla/core/config.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/v1/command.pb.h"

namespace flotilla::sim {

struct SimConfig {
  config::MqttConfig mqtt;  // password is shared by every simulated device; username = device id
  std::size_t devices = 200;
  std::string prefix = "sim";
  std::uint64_t seed = 1;
  std::chrono::milliseconds telemetry_interval{std::chrono::seconds(10)};
  std::chrono::milliseconds connect_spread{std::chrono::seconds(2)};
  std::string tenant = "demo";
  // Jobs. Public keys whose signatures the devices accept (a directory of *.pub / *.pem or one
  // file); none: every job is rejected, as a real agent would.
  std::filesystem::path trusted_keys;
  // Fractions of job executions that report FAILED, or never answer at all (chosen per job and
  // device from a hash, so a redelivery meets the same fate).
  double job_fail_rate = 0;
  double job_silent_rate = 0;
  // Appends one line "device job attempt" per job execution (each device executes a job attempt
  // at most once; tests count the lines).
  std::filesystem::path ledger;
};

using TransportFactory = std::function<Result<std::unique_ptr<Transport>>(TransportOptions, EventSink)>;

class Simulator {
 public:
  // Errors: invalid_argument.
  static Result<std::unique_ptr<Simulator>> create(SimConfig config, const TransportFactory& factory);
  ~Simulator();

  void run(std::stop_token stop);

  // Devices whose session is up; safe from any thread.
  std::size_t connected() const;

 private:
  struct Device;
  struct Event;
  explicit Simulator(SimConfig config);
  void handle(Device& d, TransportEvent& e);
  void on_job(Device& d, const v1::Command& command, std::int64_t now_ms);

  SimConfig config_;
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace flotilla::sim
