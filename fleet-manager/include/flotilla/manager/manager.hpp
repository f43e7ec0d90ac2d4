#pragma once
// The fleet manager service: owns the Store, the Registry and one MQTT session. One reactor
// thread (the caller of run()) owns all mutable state; the transport's threads only enqueue.

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <unordered_set>
#include <vector>

#include "flotilla/core/connection.hpp"
#include "flotilla/core/log.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/manager/config.hpp"
#include "flotilla/manager/groups.hpp"
#include "flotilla/manager/index.hpp"
#include "flotilla/manager/jobs.hpp"
#include "flotilla/manager/policies.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::manager {

using TransportFactory = std::function<Result<std::unique_ptr<Transport>>(TransportOptions, EventSink)>;

class Manager {
 public:
  // Loads the registry from `store`. Errors: the store's, invalid_argument for bad options.
  static Result<std::unique_ptr<Manager>> create(ManagerConfig config, std::unique_ptr<Store> store,
                                                 const TransportFactory& transport_factory);
  ~Manager();

  // Runs the reactor until `stop` is requested, then publishes offline presence, disconnects,
  // commits what is left in the queue and, after that last write, saves the index snapshot the
  // next start reads instead of rebuilding (docs/query.md, "Start-up").
  void run(std::stop_token stop);

  // Counters, safe to read from any thread.
  std::uint64_t messages_ingested() const { return messages_.load(); }

 private:
  Manager(ManagerConfig config, std::unique_ptr<Store> store, Registry registry, Groups groups);

  void on_up();
  void handle_batch(std::vector<TransportEvent>& events);
  void ingest(const Message& message, std::int64_t now_ms, Batch& batch, std::vector<DeviceFacts>& inventories,
              std::vector<DeviceFacts>& telemetry);
  Status build_index();
  DeviceFacts record_facts(const std::string& id) const;
  // Commits a batch made outside ingest (operator writes, reconciliation), updates the index
  // for `devices` and publishes `events`. A failed write stops the manager.
  void commit(Batch& batch, const std::vector<std::string>& devices, std::vector<v1::MembershipEvent> events);
  void publish_events(const std::vector<v1::MembershipEvent>& events);
  std::vector<std::string> refresh_membership(std::vector<v1::MembershipEvent>& events);
  void count_drop(const std::string& reason, const std::string& topic, const std::string& detail);
  void answer(const Message& request);
  v1::RpcResponse dispatch(const v1::RpcRequest& request);
  void request_rebirth(const std::string& device_id, std::int64_t now_ms);
  Message presence(bool online, std::int64_t since_ms) const;
  v1::ManagerStats stats() const;
  v1::GroupInfo group_info(const std::string& name) const;
  // Deletes devices and what the manager holds about them in one write (delete_device).
  v1::RpcResponse delete_devices(const v1::RpcRequest& request);
  v1::RpcResponse group_events(const v1::GroupEventsRequest& request) const;
  // Clears the retained messages the manager publishes for a device (its desired configuration)
  // with a zero-length retained publish; one that cannot be handed to the client is retried on
  // the next connect.
  void clear_retained(const DeviceId& id);
  // Deletes membership events beyond the retention of [groups], at most one bounded batch per
  // call. True when more may be due.
  bool prune_events(std::int64_t now_ms);
  void save_snapshot();
  // Jobs and scripts (manager_jobs.cpp).
  static JobEngineOptions job_options(const ManagerConfig& config);
  DeviceDirectory job_directory();
  std::optional<v1::RpcResponse> dispatch_jobs(const v1::RpcRequest& request);
  // Advances the job engine and publishes what it produced once `batch` is durable.
  void drive_jobs(std::int64_t now_ms, Batch& batch);
  // Hands job commands to the MQTT client, at most a window of them unacknowledged at a time
  // (the rest wait in command_backlog_), so that RPC answers never queue behind a big dispatch.
  void publish_job_commands();
  void on_delivered(OperationId id);
  // Desired configuration (manager_policies.cpp).
  PolicyScope policy_scope(const std::string& id) const;
  // Recomputes the effective configuration of these devices; changed ones are recorded in the
  // registry (flushed with the batch) and published, retained, once the batch is durable.
  void refresh_configs(const std::vector<std::string>& ids, std::int64_t now_ms, bool republish_drift = false);
  void publish_configs();
  std::optional<v1::RpcResponse> dispatch_policies(const v1::RpcRequest& request);
  Result<v1::Script> add_script(const v1::Script& script, const std::string& actor, std::int64_t now_ms, Batch& batch);

  ManagerConfig config_;
  std::unique_ptr<Store> store_;
  Registry registry_;
  FleetIndex index_;
  Groups groups_;
  std::map<std::string, v1::DeviceLabels, std::less<>> labels_;
  JobEngine jobs_;
  Policies policies_;
  std::vector<Message> config_outgoing_;
  std::deque<Message> command_backlog_;
  std::unordered_set<OperationId> commands_in_flight_;
  // Set at start and on every reconnect: recompute every device's configuration and publish it
  // again where the device does not report the desired version (a retained message may have
  // been lost with the previous process or broker).
  bool configs_full_refresh_ = true;
  // Parsed target queries of continuous jobs, by job id.
  std::map<std::string, query::Node, std::less<>> job_queries_;
  BoundedQueue<TransportEvent> queue_;
  std::unique_ptr<Transport> transport_;
  std::unique_ptr<Connection> connection_;
  log::RateLimiter log_limiter_;

  std::int64_t started_at_ms_ = 0;
  std::atomic<std::uint64_t> messages_{0};
  std::uint64_t batches_ = 0;
  std::map<std::string, std::uint64_t> dropped_;
  std::map<std::string, std::uint64_t> events_;
  std::map<std::string, std::int64_t> last_rebirth_ms_;
  std::vector<std::string> rebirths_due_;
  // Topics of deleted devices whose retained message could not be cleared yet.
  std::set<std::string> retained_to_clear_;
  std::uint64_t command_counter_ = 0;
};

}  // namespace flotilla::manager
