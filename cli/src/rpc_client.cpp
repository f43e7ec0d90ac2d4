#include "flotilla/cli/rpc_client.hpp"

#include <algorithm>
#include <random>
#include <type_traits>
#include <utility>

#include "flotilla/cli/render.hpp"
#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/config.hpp"
#include "flotilla/core/queue.hpp"
#include "flotilla/core/topics.hpp"

namespace flotilla::cli {
namespace {

// One invocation sees a CONNACK, a SUBACK, a retained state, PUBACKs and replies: tiny traffic.
constexpr std::size_t kQueueCapacity = 256;
constexpr std::chrono::milliseconds kDisconnectTimeout{500};

using EventQueue = BoundedQueue<TransportEvent>;

std::string seconds_text(std::chrono::milliseconds d) { return config::format_duration(d); }

}  // namespace

std::string random_hex(std::size_t bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::random_device device;
  std::string out;
  out.reserve(bytes * 2);
  for (std::size_t i = 0; i < bytes; ++i) {
    const unsigned value = device() & 0xFFU;
    out += kDigits[value >> 4U];
    out += kDigits[value & 0xFU];
  }
  return out;
}

struct RpcClient::Impl {
  std::shared_ptr<EventQueue> queue = std::make_shared<EventQueue>(kQueueCapacity);
  std::unique_ptr<Transport> transport;
  std::string broker;
  std::string reply_topic;
  std::string state_topic = topics::manager_state();
  std::optional<v1::ManagerState> state;
  bool lost = false;
  std::string lost_cause;

  ~Impl() {
    // Closing first unblocks a Paho thread stuck in push() and drops events nobody will read.
    queue->close();
    if (transport && transport->connected()) (void)transport->disconnect(kDisconnectTimeout);
    transport.reset();
  }

  std::optional<TransportEvent> next(SteadyClock::time_point deadline) {
    const auto now = SteadyClock::now();
    if (now >= deadline) return std::nullopt;
    return queue->pop(deadline - now);
  }

  // Returns true when the message was the manager's state (consumed here).
  bool take_state(const Message& m) {
    if (m.topic != state_topic) return false;
    if (m.payload.empty()) {  // retained state cleared
      state.reset();
      return true;
    }
    if (auto decoded = codec::decode<v1::ManagerState>(m.payload, codec::max_small_bytes)) state = std::move(*decoded);
    return true;
  }

  std::string manager_hint() const {
    if (!state) return fmt::format("no manager has announced itself on {} (is flotilla-manager running?)", state_topic);
    const std::string name = state->instance_id().empty() ? std::string("the manager")
                                                          : "manager " + state->instance_id();
    if (!state->online()) {
      if (state->since_ms() <= 0) return fmt::format("{} is offline", name);
      return fmt::format("{} is offline (since {})", name, format_age(state->since_ms(), unix_now_ms()));
    }
    return fmt::format("{} is online but did not answer", name);
  }
};

RpcClient::RpcClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RpcClient::RpcClient(RpcClient&&) noexcept = default;
RpcClient& RpcClient::operator=(RpcClient&&) noexcept = default;
RpcClient::~RpcClient() = default;

const std::optional<v1::ManagerState>& RpcClient::manager_state() const { return impl_->state; }
const std::string& RpcClient::reply_topic() const { return impl_->reply_topic; }

Result<RpcClient> RpcClient::connect(TransportOptions options, const std::string& username,
                                     std::chrono::milliseconds timeout) {
  auto impl = std::make_unique<Impl>();
  auto reply = topics::cli_reply(username, random_hex(8));
  if (!reply) return make_error(Errc::invalid_argument, "username: {}", reply.error().message);
  impl->reply_topic = std::move(*reply);
  impl->broker = options.broker_uri;

  if (options.client_id.empty()) options.client_id = "flotilla-cli-" + random_hex(8);
  options.clean_start = true;
  options.session_expiry = std::chrono::seconds(0);
  // Paho gives up on its own no later than we do, so no attempt outlives this invocation.
  const auto wanted = std::max(std::chrono::ceil<std::chrono::seconds>(timeout), std::chrono::seconds(1));
  options.connect_timeout = std::min(wanted, std::max(options.connect_timeout, std::chrono::seconds(1)));

  auto queue = impl->queue;
  auto transport = make_mqtt_transport(std::move(options), [queue](TransportEvent&& e) {
    // Paho thread: enqueue only.
    (void)queue->push(std::move(e));
  });
  if (!transport) return std::move(transport).error();
  impl->transport = std::move(*transport);

  const auto deadline = SteadyClock::now() + timeout;
  if (auto st = impl->transport->connect(std::nullopt); !st) {
    return make_error(st.error().code, "cannot connect to broker {}: {}", impl->broker, st.error().message);
  }
  for (;;) {
    auto ev = impl->next(deadline);
    if (!ev) {
      return make_error(Errc::timeout, "broker {} did not accept the connection within {}", impl->broker,
                        seconds_text(timeout));
    }
    if (std::holds_alternative<event::Connected>(*ev)) break;
    if (auto* failed = std::get_if<event::ConnectFailed>(&*ev)) {
      return make_error(failed->error.code, "cannot connect to broker {}: {}", impl->broker, failed->error.message);
    }
  }

  auto sub = impl->transport->subscribe({{impl->reply_topic, 1}, {impl->state_topic, 1}});
  if (!sub) return make_error(sub.error().code, "cannot subscribe to {}: {}", impl->reply_topic, sub.error().message);
  for (;;) {
    auto ev = impl->next(deadline);
    if (!ev) {
      return make_error(Errc::timeout, "broker {} did not confirm the subscription to {} within {}", impl->broker,
                        impl->reply_topic, seconds_text(timeout));
    }
    if (auto* s = std::get_if<event::Subscribed>(&*ev); s != nullptr && s->id == *sub) {
      if (!s->status) {
        return make_error(Errc::permission_denied, "broker {} refused the subscription to {} or {}: {}", impl->broker,
                          impl->reply_topic, impl->state_topic, s->status.error().message);
      }
      break;
    }
    if (auto* lost = std::get_if<event::ConnectionLost>(&*ev)) {
      return make_error(Errc::unavailable, "connection to broker {} lost: {}", impl->broker, lost->cause);
    }
    if (auto* r = std::get_if<event::Received>(&*ev)) (void)impl->take_state(r->message);
  }
  return RpcClient(std::move(impl));
}

Result<v1::RpcResponse> RpcClient::call(const v1::RpcRequest& request, std::chrono::milliseconds timeout) {
  Impl& s = *impl_;
  if (s.lost) return make_error(Errc::unavailable, "connection to broker {} lost: {}", s.broker, s.lost_cause);

  v1::RpcRequest copy;
  const v1::RpcRequest* to_send = &request;
  if (request.schema_version() == 0) {
    copy = request;
    copy.set_schema_version(codec::schema_version);
    to_send = &copy;
  }
  Message message;
  message.topic = topics::manager_rpc();
  message.payload = codec::encode(*to_send);
  message.qos = 1;
  message.response_topic = s.reply_topic;
  message.correlation_data = random_hex(8);

  const auto deadline = SteadyClock::now() + timeout;
  auto published = s.transport->publish(message);
  if (!published) {
    return make_error(published.error().code, "cannot send the request to {}: {}", message.topic,
                      published.error().message);
  }
  for (;;) {
    auto ev = s.next(deadline);
    if (!ev) {
      return make_error(Errc::timeout, "no reply from the manager within {}: {}", seconds_text(timeout),
                        s.manager_hint());
    }
    if (auto* r = std::get_if<event::Received>(&*ev)) {
      if (s.take_state(r->message)) continue;
      if (r->message.topic != s.reply_topic || r->message.correlation_data != message.correlation_data) continue;
      auto response = codec::decode<v1::RpcResponse>(r->message.payload, codec::max_rpc_reply_bytes);
      if (!response) {
        return make_error(response.error().code, "undecodable reply from the manager: {}", response.error().message);
      }
      return std::move(*response);
    }
    if (auto* d = std::get_if<event::Delivered>(&*ev); d != nullptr && d->id == *published && !d->status) {
      return make_error(d->status.error().code, "broker {} refused the request on {}: {}", s.broker, message.topic,
                        d->status.error().message);
    }
    if (auto* lost = std::get_if<event::ConnectionLost>(&*ev)) {
      s.lost = true;
      s.lost_cause = lost->cause;
      return make_error(Errc::unavailable, "connection to broker {} lost: {}", s.broker, lost->cause);
    }
  }
}

}  // namespace flotilla::cli
