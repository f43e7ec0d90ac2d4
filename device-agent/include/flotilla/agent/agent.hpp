#pragma once
// The device agent: collects this host's inventory and health, keeps every reading in a durable
// outbox until the broker acknowledges it, and answers commands. One reactor thread (the caller
// of run()) owns all state; the transport's threads only enqueue events.

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <stop_token>
#include <string>
#include <vector>

#include "flotilla/agent/collectors.hpp"
#include "flotilla/agent/config.hpp"
#include "flotilla/agent/job_runner.hpp"
#include "flotilla/agent/outbox.hpp"
#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/connection.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/v1/job.pb.h"

namespace flotilla::agent {

using TransportFactory = std::function<Result<std::unique_ptr<Transport>>(TransportOptions, EventSink)>;

class Agent {
 public:
  // Opens the state directory and outbox. Errors: invalid_argument, io_error.
  static Result<std::unique_ptr<Agent>> create(AgentConfig config, std::vector<std::unique_ptr<Collector>> collectors,
                                               const TransportFactory& transport_factory);
  ~Agent();

  // Runs until `stop` is requested; then publishes a graceful death and disconnects.
  void run(std::stop_token stop);

 private:
  Agent(AgentConfig config, std::vector<std::unique_ptr<Collector>> collectors, std::unique_ptr<Outbox> outbox);

  Result<std::uint64_t> next_epoch();
  Result<std::uint64_t> load_stream_id();
  v1::Inventory collect_inventory();
  void on_up();
  void on_down();
  void handle(TransportEvent& event);
  void on_command(const Message& message);
  void enqueue(const Message& message);
  void pump();
  void commit_acks();
  void sample_telemetry();
  void check_inventory(bool force);
  void publish_job_reports(std::vector<JobReport> reports);
  // Desired configuration (docs/policies.md): applies it, keeps it durably for the next start
  // and reports its version.
  void on_config(const Message& message);
  // Applies a configuration addressed to this device (unless it is the one applied), keeps it
  // and reports its version. Errors: invalid_argument (another device, invalid values).
  Status adopt_config(const v1::DesiredConfig& config);
  Status apply_config(const v1::DesiredConfig& config);
  // The config.set job: applies the configuration its command carries when it holds every value
  // the signed document sets.
  JobOutcome config_set(const JobRequest& request);
  // A patch.scan's outcome becomes part of the inventory (and is kept for the next start).
  void note_patch_scan(const JobReport& report);

  AgentConfig config_;
  std::vector<std::unique_ptr<Collector>> collectors_;
  std::unique_ptr<Outbox> outbox_;
  std::unique_ptr<JobRunner> jobs_;
  DeviceProtocol protocol_;
  BoundedQueue<TransportEvent> queue_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Connection> connection_;
  std::mt19937_64 rng_;
  std::uint64_t stream_id_ = 0;

  // Publishes in flight: transport operation id -> outbox record id.
  std::map<OperationId, std::uint64_t> inflight_;
  std::uint64_t last_sent_record_ = 0;
  std::vector<std::uint64_t> acked_;  // delivered this turn, committed together
  OperationId birth_op_ = 0;
  std::uint64_t birth_reported_dropped_ = 0;
  v1::PatchStatus patches_;     // last patch.scan; empty until one ran
  std::string last_inventory_;  // serialized inventory last published, for change detection
  SteadyClock::time_point next_telemetry_{};
  SteadyClock::time_point next_inventory_{};
};

}  // namespace flotilla::agent
