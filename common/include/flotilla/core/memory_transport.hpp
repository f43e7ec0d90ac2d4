#pragma once
// An in-memory MQTT broker and Transport for fast flow tests of agent, manager and simulator
// with no sockets: topic filters with + and #, retained messages, persistent sessions that
// queue QoS 1 messages while their client is away, Wills on network loss and on session
// takeover. Thread-safe; events are handed to sinks on the calling thread, outside the lock.

#include <memory>
#include <string>

#include "flotilla/core/transport.hpp"

namespace flotilla {

class MemoryBroker {
 public:
  MemoryBroker();
  ~MemoryBroker();
  MemoryBroker(const MemoryBroker&) = delete;
  MemoryBroker& operator=(const MemoryBroker&) = delete;

  // A transport factory for Agent/Manager/Simulator::create. The broker must outlive every
  // transport it made.
  Result<std::unique_ptr<Transport>> make_transport(TransportOptions options, EventSink sink);

  // Simulates a network failure of a connected client: it gets ConnectionLost and the broker
  // publishes its Will. Returns false when no such client is connected.
  bool drop(const std::string& client_id);

  // Messages published through the broker so far (all clients).
  std::uint64_t published() const;

  // Whether MQTT topic `filter` matches `topic`.
  static bool matches(std::string_view filter, std::string_view topic);

 private:
  struct State;
  class Client;
  std::shared_ptr<State> state_;
};

}  // namespace flotilla
