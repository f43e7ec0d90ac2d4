#pragma once
// The MQTT 5 transport seen by agent, manager, simulator and CLI. Exactly one implementation
// talks to Paho (src/paho_transport.cpp); everything else depends on this interface only.
//
// Every operation is asynchronous: outcomes come back as TransportEvents through the EventSink,
// which runs on the transport's own threads. A sink translates and enqueues (typically into a
// BoundedQueue drained by the owner's reactor thread); it must never call back into the
// transport. Because no reactor ever waits on the transport, a full queue that blocks the
// transport's receive thread cannot deadlock an operation in progress.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "flotilla/core/result.hpp"

namespace flotilla {

struct BrokerUri {
  bool tls = false;
  std::string host;
  std::uint16_t port = 0;
};

// Accepts mqtt://host:port and mqtts://host:port (port defaults to 1883 / 8883).
// Errors: invalid_argument saying which part is wrong.
Result<BrokerUri> parse_broker_uri(std::string_view uri);

struct Message {
  std::string topic;
  std::string payload;
  int qos = 1;
  bool retained = false;
  // MQTT 5 request/response properties; empty when absent.
  std::string response_topic;
  std::string correlation_data;
};

struct TlsOptions {
  std::string ca_file;    // PEM trust store; empty: system default
  std::string cert_file;  // client certificate (mutual TLS); optional
  std::string key_file;   // its private key; must not be world-readable
  bool verify_server = true;
};

struct TransportOptions {
  std::string broker_uri;  // mqtt://host:port or mqtts://host:port
  std::string client_id;
  std::string username;
  std::string password;
  // The broker declares the client gone after 1.5x this without traffic and publishes its Will.
  std::chrono::seconds keepalive{30};
  // MQTT 5 Session Expiry Interval: how long the broker keeps subscriptions and queued QoS 1
  // messages after a disconnect. Without it a Clean Start = 0 session dies at disconnect.
  std::chrono::seconds session_expiry{std::chrono::hours(24)};
  bool clean_start = false;
  std::chrono::seconds connect_timeout{10};
  // Publishes the client holds while the broker's receive maximum keeps them from being sent
  // (Paho's own default is 100, far too few for a manager notifying thousands of devices at
  // once). Beyond it publish() fails (unavailable) and the caller retries later.
  int max_buffered = 200'000;
  TlsOptions tls;
};

struct Subscription {
  std::string filter;
  int qos = 1;
};

using OperationId = std::uint64_t;

namespace event {
struct Connected {
  bool session_present = false;
};
struct ConnectFailed {
  Error error;
};
// An established connection ended (network, broker shutdown, server DISCONNECT, takeover).
struct ConnectionLost {
  std::string cause;
};
struct Received {
  Message message;
};
// Outcome of a QoS >= 1 publish: ok once the broker's PUBACK carries a success reason code.
struct Delivered {
  OperationId id = 0;
  Status status;
};
struct Subscribed {
  OperationId id = 0;
  Status status;  // permission_denied when the broker refused a filter
};
}  // namespace event

using TransportEvent = std::variant<event::Connected, event::ConnectFailed, event::ConnectionLost, event::Received,
                                    event::Delivered, event::Subscribed>;
using EventSink = std::function<void(TransportEvent&&)>;

class Transport {
 public:
  virtual ~Transport() = default;

  // Starts one connection attempt; Connected or ConnectFailed follows. `will` is the Will message
  // for this session. Reconnecting is the owner's decision (with its own backoff).
  // Errors: invalid_argument (bad options), unavailable (attempt could not start).
  virtual Status connect(std::optional<Message> will) = 0;

  // Queues a publish. For QoS >= 1 a Delivered event with the returned id follows.
  // Errors: unavailable when not connected (nothing is buffered: the caller keeps its own outbox).
  virtual Result<OperationId> publish(const Message& message) = 0;

  // Queues a subscription request; a Subscribed event with the returned id follows.
  // Errors: unavailable when not connected.
  virtual Result<OperationId> subscribe(const std::vector<Subscription>& subscriptions) = 0;

  // Disconnects cleanly (no Will is published), waiting at most `timeout`.
  virtual Status disconnect(std::chrono::milliseconds timeout) = 0;

  virtual bool connected() const = 0;
};

// The MQTT 5 transport over Paho. Errors: invalid_argument for a bad URI or client id.
Result<std::unique_ptr<Transport>> make_mqtt_transport(TransportOptions options, EventSink sink);

}  // namespace flotilla
