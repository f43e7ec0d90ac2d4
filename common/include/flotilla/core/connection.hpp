#pragma once
// Keeps one MQTT session up over a Transport: first connect, reconnect with full-jitter
// exponential backoff, and the owner's subscriptions restored after every connect (Paho does not
// restore them itself). Owned and driven by one reactor thread: feed it the transport's
// connection events and call tick() when next_deadline() passes.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "flotilla/core/backoff.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/transport.hpp"

namespace flotilla {

class Connection {
 public:
  struct Hooks {
    // Builds the Will for the next session (called before every connect attempt).
    std::function<std::optional<Message>()> make_will;
    // The session is usable: connected and every subscription granted.
    std::function<void(bool session_present)> on_up;
    // The session ended; `cause` says why.
    std::function<void(const std::string& cause)> on_down;
  };

  Connection(Transport& transport, std::vector<Subscription> subscriptions, Backoff backoff, Hooks hooks);

  // Starts the first connect attempt now.
  void start(SteadyClock::time_point now);

  // Handles Connected, ConnectFailed, ConnectionLost and Subscribed events; returns true when the
  // event was one of those (other events are the owner's).
  bool handle(const TransportEvent& event, SteadyClock::time_point now);

  // Starts a reconnect attempt when one is due.
  void tick(SteadyClock::time_point now);

  // When tick() next has work; time_point::max() when none is scheduled.
  SteadyClock::time_point next_deadline() const { return retry_at_; }

  bool up() const { return state_ == State::up; }
  std::uint64_t connects() const { return connects_; }

 private:
  enum class State { idle, connecting, subscribing, up, waiting };
  void attempt(SteadyClock::time_point now);
  void schedule_retry(SteadyClock::time_point now, const std::string& why);

  Transport& transport_;
  std::vector<Subscription> subscriptions_;
  Backoff backoff_;
  Hooks hooks_;
  State state_ = State::idle;
  OperationId subscribe_id_ = 0;
  bool session_present_ = false;
  SteadyClock::time_point retry_at_ = SteadyClock::time_point::max();
  std::uint64_t connects_ = 0;
};

}  // namespace flotilla
