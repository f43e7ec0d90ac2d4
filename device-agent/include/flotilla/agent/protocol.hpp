#pragma once
// The device side of the wire protocol, shared by the real agent and the simulator: session
// epochs and sequence numbers, birth / Will / death, and validation of incoming commands.
// Pure: no I/O, time comes in as an argument. Owned by one thread.

#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "flotilla/core/ids.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/v1/command.pb.h"
#include "flotilla/v1/device.pb.h"

namespace flotilla::agent {

struct Identity {
  DeviceId id;
  v1::DeviceKind kind = v1::DEVICE_KIND_COMPUTER;
  std::string agent_version{};
  std::string tenant{};
  std::string site{};
  std::vector<std::string> tags{};
  std::string gateway_id{};
  std::uint32_t keepalive_s = 30;
  std::uint32_t telemetry_interval_s = 30;
};

class DeviceProtocol {
 public:
  explicit DeviceProtocol(Identity identity) : identity_(std::move(identity)) {}

  const Identity& identity() const { return identity_; }
  std::uint64_t epoch() const { return epoch_; }
  std::uint64_t stream_id() const { return stream_id_; }
  // Stream seq the next reading will carry.
  std::uint64_t next_seq() const { return next_seq_; }

  // Version of the desired configuration the device applies, reported in births and telemetry.
  void set_config_version(std::string version) { config_version_ = std::move(version); }
  const std::string& config_version() const { return config_version_; }

  // Starts session `epoch` (must be larger than any before).
  void begin_session(std::uint64_t epoch) { epoch_ = epoch; }
  // Sets the reading stream: its id and the seq of the next reading. The agent takes both from
  // its durable state so they survive restarts; it resets next_seq after a failed append, since
  // a reading that was never stored was never sent either.
  void set_stream(std::uint64_t stream_id, std::uint64_t next_seq) {
    stream_id_ = stream_id;
    next_seq_ = next_seq;
  }

  // The Will for the current session: a Death with reason CONNECTION_LOST and its epoch.
  Message will(std::int64_t now_ms) const;
  // Birth for the current session. `acked_seq`: every reading up to it was acknowledged by the
  // broker; `outbox_dropped`: readings dropped by the outbox bound and not yet reported.
  Message birth(const v1::Inventory& inventory, std::uint64_t acked_seq, std::uint64_t outbox_dropped,
                std::int64_t now_ms);
  Message graceful_death(std::int64_t now_ms);
  Message telemetry(v1::Telemetry telemetry, std::int64_t now_ms);
  Message inventory(v1::Inventory inventory, std::int64_t now_ms);

  // What to do with a message received on the device's cmd topic.
  struct Execute {
    v1::Command command;
  };
  struct Reply {
    Message result;  // already-answered duplicate or rejection
  };
  struct Ignore {
    std::string why;  // undecodable, for another device: nothing to answer
  };
  using CommandDecision = std::variant<Execute, Reply, Ignore>;
  CommandDecision on_command(const Message& message, std::int64_t now_ms);

  // A job's result or progress report. Jobs are de-duplicated by the agent's durable execution
  // store, not by this class.
  Message job_result(std::string_view job_id, std::uint32_t attempt, v1::CommandResult::Status status, std::string text,
                     const std::map<std::string, std::string>& output, std::uint32_t progress_percent,
                     std::int64_t now_ms);

  // Builds the result message of an executed command and remembers it for duplicates.
  Message result(const v1::Command& command, v1::CommandResult::Status status, std::string text,
                 const std::map<std::string, std::string>& output, std::int64_t now_ms);

 private:
  v1::Header reading_header(std::int64_t now_ms);
  Message reply_for(const std::string& command_id, v1::CommandResult::Status status, std::string text,
                    const std::map<std::string, std::string>& output, std::int64_t now_ms);

  static constexpr std::size_t kRememberedCommands = 1024;

  Identity identity_;
  std::uint64_t epoch_ = 0;
  std::uint64_t stream_id_ = 1;
  std::uint64_t next_seq_ = 1;
  std::string config_version_;
  // Results of recently executed commands, for answering redeliveries without executing again.
  std::map<std::string, v1::CommandResult> executed_;
  std::deque<std::string> executed_order_;
};

}  // namespace flotilla::agent
