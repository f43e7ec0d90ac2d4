#pragma once
// MQTT 5 request/response client of the manager's RPC API (topics::manager_rpc()).

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "flotilla/core/result.hpp"
#include "flotilla/core/transport.hpp"
#include "flotilla/v1/manager.pb.h"

namespace flotilla::cli {

// Owns one short-lived broker connection (clean start, session expiry 0) subscribed to this
// invocation's reply topic flotilla/v1/cli/{username}/{session} and to the manager's retained
// state. Not thread-safe: one thread calls connect(), call() and the destructor. Transport events
// arrive on Paho's threads and are only pushed into a bounded queue that call() drains.
class RpcClient {
 public:
  // Connects, then subscribes; waits at most `timeout` for both. Forces clean_start = true and
  // session_expiry = 0; an empty options.client_id becomes "flotilla-cli-" + 16 random hex digits.
  // `username` names the reply topic (options.username is what the broker sees).
  // Errors: invalid_argument (bad username, URI or client id), unavailable (connect failed or
  // connection lost), permission_denied (broker refused credentials or the subscription),
  // timeout (no CONNACK/SUBACK within `timeout`).
  static Result<RpcClient> connect(TransportOptions options, const std::string& username,
                                   std::chrono::milliseconds timeout);

  RpcClient(RpcClient&&) noexcept;
  RpcClient& operator=(RpcClient&&) noexcept;
  // Disconnects cleanly (waits at most about a second).
  ~RpcClient();

  // Publishes `request` (schema_version filled in when 0) with a fresh correlation id and waits at
  // most `timeout` for the reply carrying it. Any RpcResponse code is a successful call; the
  // caller interprets it.
  // Errors: timeout (no reply; the message says whether the manager announced itself offline or
  // never announced itself), unavailable (connection lost), permission_denied (broker refused the
  // publish), parse_error / too_large (undecodable reply).
  Result<v1::RpcResponse> call(const v1::RpcRequest& request, std::chrono::milliseconds timeout);

  // The manager's retained presence, once received.
  const std::optional<v1::ManagerState>& manager_state() const;
  const std::string& reply_topic() const;

 private:
  struct Impl;
  explicit RpcClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// `bytes` random bytes as lowercase hex (2 * bytes characters).
std::string random_hex(std::size_t bytes);

}  // namespace flotilla::cli
