#include "flotilla/core/memory_transport.hpp"

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <vector>

namespace flotilla {

bool MemoryBroker::matches(std::string_view filter, std::string_view topic) {
  while (true) {
    const auto fslash = filter.find('/');
    const auto flevel = filter.substr(0, fslash);
    if (flevel == "#") return true;
    const auto tslash = topic.find('/');
    const auto tlevel = topic.substr(0, tslash);
    if (flevel != "+" && flevel != tlevel) return false;
    if (fslash == std::string_view::npos || tslash == std::string_view::npos) {
      // "a/#" also matches "a".
      return fslash == tslash || (tslash == std::string_view::npos && filter.substr(fslash + 1) == "#");
    }
    filter.remove_prefix(fslash + 1);
    topic.remove_prefix(tslash + 1);
  }
}

using Delivery = std::pair<EventSink, TransportEvent>;

struct MemoryBroker::State {
  struct Session {
    std::map<std::string, int> subscriptions;
    std::deque<Message> queued;  // QoS 1 messages for a disconnected persistent session
    Client* client = nullptr;    // connected transport, if any
    bool persistent = false;
    std::optional<Message> will;
  };
  mutable std::mutex mutex;
  std::map<std::string, Session> sessions;
  std::map<std::string, Message> retained;
  std::uint64_t published = 0;

  // Routes a message to every matching session; collects deliveries to run after unlocking.
  void route(const Message& m, std::vector<Delivery>& out);
};

class MemoryBroker::Client final : public Transport {
 public:
  Client(std::shared_ptr<State> state, TransportOptions options, EventSink sink)
      : event_sink(std::move(sink)), state_(std::move(state)), options_(std::move(options)) {}

  ~Client() override {
    std::vector<Delivery> out;
    {
      std::lock_guard lock(state_->mutex);
      auto it = state_->sessions.find(options_.client_id);
      if (it != state_->sessions.end() && it->second.client == this) detach(it, false, out);
    }
  }

  Status connect(std::optional<Message> will) override {
    std::vector<Delivery> out;
    {
      std::lock_guard lock(state_->mutex);
      auto it = state_->sessions.find(options_.client_id);
      bool present = false;
      if (it != state_->sessions.end()) {
        if (it->second.client != nullptr && it->second.client != this) {
          // Session takeover: the old connection is dropped and its Will published.
          Client* old = it->second.client;
          old->detach(it, true, out);  // may erase a non-persistent session
          out.emplace_back(old->event_sink, event::ConnectionLost{"session taken over"});
          it = state_->sessions.find(options_.client_id);
        }
      }
      if (it != state_->sessions.end()) {
        if (options_.clean_start || !it->second.persistent) {
          state_->sessions.erase(it);
          it = state_->sessions.end();
        } else {
          present = true;
        }
      }
      if (it == state_->sessions.end()) it = state_->sessions.emplace(options_.client_id, State::Session{}).first;
      auto& s = it->second;
      s.client = this;
      s.persistent = options_.session_expiry.count() > 0;
      s.will = std::move(will);
      connected_ = true;
      out.emplace_back(event_sink, event::Connected{present});
      for (auto& m : s.queued) out.emplace_back(event_sink, event::Received{std::move(m)});
      s.queued.clear();
    }
    for (auto& [sink, e] : out) sink(std::move(e));
    return {};
  }

  Result<OperationId> publish(const Message& message) override {
    std::vector<Delivery> out;
    const OperationId id = next_id_++;
    {
      std::lock_guard lock(state_->mutex);
      if (!connected_) return make_error(Errc::unavailable, "not connected");
      state_->route(message, out);
      if (message.qos > 0) out.emplace_back(event_sink, event::Delivered{id, {}});
    }
    for (auto& [sink, e] : out) sink(std::move(e));
    return id;
  }

  Result<OperationId> subscribe(const std::vector<Subscription>& subscriptions) override {
    std::vector<Delivery> out;
    const OperationId id = next_id_++;
    {
      std::lock_guard lock(state_->mutex);
      if (!connected_) return make_error(Errc::unavailable, "not connected");
      auto& s = state_->sessions.at(options_.client_id);
      for (const auto& sub : subscriptions) s.subscriptions[sub.filter] = sub.qos;
      out.emplace_back(event_sink, event::Subscribed{id, {}});
      for (const auto& [topic, m] : state_->retained) {
        for (const auto& sub : subscriptions) {
          if (MemoryBroker::matches(sub.filter, topic)) {
            out.emplace_back(event_sink, event::Received{m});
            break;
          }
        }
      }
    }
    for (auto& [sink, e] : out) sink(std::move(e));
    return id;
  }

  Status disconnect(std::chrono::milliseconds) override {
    std::vector<Delivery> out;
    {
      std::lock_guard lock(state_->mutex);
      auto it = state_->sessions.find(options_.client_id);
      if (it != state_->sessions.end() && it->second.client == this) detach(it, false, out);
    }
    for (auto& [sink, e] : out) sink(std::move(e));
    return {};
  }

  bool connected() const override {
    std::lock_guard lock(state_->mutex);
    return connected_;
  }

  // Called with the lock held. Ends this connection; publishes the Will when `with_will`.
  void detach(std::map<std::string, State::Session>::iterator it, bool with_will, std::vector<Delivery>& out) {
    connected_ = false;
    auto will = std::move(it->second.will);
    it->second.will.reset();
    it->second.client = nullptr;
    if (!it->second.persistent) state_->sessions.erase(it);
    if (with_will && will) state_->route(*will, out);
  }

  EventSink event_sink;

 private:
  std::shared_ptr<State> state_;
  TransportOptions options_;
  bool connected_ = false;  // guarded by state_->mutex
  std::atomic<OperationId> next_id_{1};
};

void MemoryBroker::State::route(const Message& m, std::vector<Delivery>& out) {
  ++published;
  if (m.retained) {
    if (m.payload.empty()) retained.erase(m.topic);
    else retained[m.topic] = m;
  }
  for (auto& [id, s] : sessions) {
    int qos = -1;
    for (const auto& [filter, q] : s.subscriptions) {
      if (MemoryBroker::matches(filter, m.topic)) qos = std::max(qos, q);
    }
    if (qos < 0) continue;
    Message copy = m;
    copy.retained = false;  // MQTT: a live delivery clears the retain flag
    copy.qos = std::min(qos, m.qos);
    if (s.client != nullptr) out.emplace_back(s.client->event_sink, event::Received{std::move(copy)});
    else if (s.persistent && copy.qos > 0) s.queued.push_back(std::move(copy));
  }
}

MemoryBroker::MemoryBroker() : state_(std::make_shared<State>()) {}
MemoryBroker::~MemoryBroker() = default;

Result<std::unique_ptr<Transport>> MemoryBroker::make_transport(TransportOptions options, EventSink sink) {
  if (options.client_id.empty()) return make_error(Errc::invalid_argument, "client id must not be empty");
  return std::unique_ptr<Transport>(std::make_unique<Client>(state_, std::move(options), std::move(sink)));
}

bool MemoryBroker::drop(const std::string& client_id) {
  std::vector<Delivery> out;
  {
    std::lock_guard lock(state_->mutex);
    auto it = state_->sessions.find(client_id);
    if (it == state_->sessions.end() || it->second.client == nullptr) return false;
    Client* c = it->second.client;
    c->detach(it, true, out);
    out.emplace_back(c->event_sink, event::ConnectionLost{"network failure"});
  }
  for (auto& [sink, e] : out) sink(std::move(e));
  return true;
}

std::uint64_t MemoryBroker::published() const {
  std::lock_guard lock(state_->mutex);
  return state_->published;
}

}  // namespace flotilla
