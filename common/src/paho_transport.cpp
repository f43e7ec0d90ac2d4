// The only file that includes Paho. Converts Paho exceptions, tokens and reason codes into
// flotilla Results and TransportEvents.

#include <atomic>
#include <charconv>
#include <memory>
#include <utility>

#include <mqtt/async_client.h>

#include "flotilla/core/transport.hpp"

namespace flotilla {
namespace {

constexpr int kFirstFailureReason = 0x80;

Error from_exception(const mqtt::exception& e) {
  const int reason = e.get_reason_code();
  if (reason == mqtt::ReasonCode::NOT_AUTHORIZED || reason == mqtt::ReasonCode::BAD_USER_NAME_OR_PASSWORD) {
    return make_error(Errc::permission_denied, "{}", e.what());
  }
  return make_error(Errc::unavailable, "{}", e.what());
}

Error from_reason(int reason, std::string_view what) {
  const Errc code = (reason == mqtt::ReasonCode::NOT_AUTHORIZED ||
                     reason == mqtt::ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                        ? Errc::permission_denied
                        : Errc::unavailable;
  return make_error(code, "{} refused: {} (reason code 0x{:02x})", what, mqtt::exception::reason_code_str(reason),
                    reason);
}

Error from_failed_token(const mqtt::token& tok, std::string_view what) {
  const int reason = tok.get_reason_code();
  if (reason >= kFirstFailureReason) return from_reason(reason, what);
  return make_error(Errc::unavailable, "{} failed: {}", what, mqtt::exception::error_str(tok.get_return_code()));
}

void* as_context(OperationId id) { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(id)); }  // NOLINT
OperationId from_context(void* context) {
  return static_cast<OperationId>(reinterpret_cast<std::uintptr_t>(context));  // NOLINT
}

class PahoTransport final : public Transport, private mqtt::iaction_listener {
 public:
  PahoTransport(TransportOptions options, const std::string& paho_uri, EventSink sink)
      : options_(std::move(options)),
        sink_(std::move(sink)),
        client_(paho_uri, options_.client_id, mqtt::create_options(MQTTVERSION_5, options_.max_buffered), nullptr) {
    // Runs on Paho's threads: translate and hand over, never call back into the client.
    client_.set_connection_lost_handler(
        [this](const std::string& cause) { lost(cause.empty() ? "connection lost" : cause); });
    client_.set_disconnected_handler([this](const mqtt::properties&, mqtt::ReasonCode reason) {
      lost(fmt::format("broker sent DISCONNECT: {}", mqtt::exception::reason_code_str(reason)));
    });
    client_.set_message_callback([this](const mqtt::const_message_ptr& msg) {
      Message m;
      m.topic = msg->get_topic();
      m.payload = msg->get_payload_str();
      m.qos = msg->get_qos();
      m.retained = msg->is_retained();
      const auto& props = msg->get_properties();
      if (props.contains(mqtt::property::RESPONSE_TOPIC)) {
        m.response_topic = mqtt::get<std::string>(props, mqtt::property::RESPONSE_TOPIC);
      }
      if (props.contains(mqtt::property::CORRELATION_DATA)) {
        m.correlation_data = mqtt::get<std::string>(props, mqtt::property::CORRELATION_DATA);
      }
      emit(event::Received{std::move(m)});
    });
  }

  ~PahoTransport() override {
    if (connected_.load()) (void)disconnect(std::chrono::milliseconds(1000));
    alive_.store(false);  // from here on no event reaches the sink, whatever Paho still does
    try {
      client_.disable_callbacks();
    } catch (const mqtt::exception&) {
      // Paho refuses while a disconnect is still in progress; alive_ already silences callbacks.
    }
  }

  Status connect(std::optional<Message> will) override {
    auto builder = mqtt::connect_options_builder()
                       .mqtt_version(MQTTVERSION_5)
                       .clean_start(options_.clean_start)
                       .keep_alive_interval(options_.keepalive)
                       .connect_timeout(options_.connect_timeout)
                       .automatic_reconnect(false)
                       .properties({{mqtt::property::SESSION_EXPIRY_INTERVAL,
                                     static_cast<int>(options_.session_expiry.count())}});
    if (!options_.username.empty()) builder.user_name(options_.username);
    if (!options_.password.empty()) builder.password(options_.password);
    if (will) {
      builder.will(mqtt::message(will->topic, will->payload, will->qos, will->retained));
    }
    if (tls_) {
      auto ssl = mqtt::ssl_options_builder().enable_server_cert_auth(options_.tls.verify_server).finalize();
      if (!options_.tls.ca_file.empty()) ssl.set_trust_store(options_.tls.ca_file);
      if (!options_.tls.cert_file.empty()) ssl.set_key_store(options_.tls.cert_file);
      if (!options_.tls.key_file.empty()) ssl.set_private_key(options_.tls.key_file);
      builder.ssl(std::move(ssl));
    }
    try {
      client_.connect(builder.finalize(), nullptr, *this);
    } catch (const mqtt::exception& e) {
      return from_exception(e);
    }
    return {};
  }

  Result<OperationId> publish(const Message& message) override {
    if (!connected_.load()) return make_error(Errc::unavailable, "not connected");
    auto msg = mqtt::message::create(message.topic, message.payload, message.qos, message.retained);
    if (!message.response_topic.empty() || !message.correlation_data.empty()) {
      mqtt::properties props;
      if (!message.response_topic.empty()) props.add({mqtt::property::RESPONSE_TOPIC, message.response_topic});
      if (!message.correlation_data.empty()) {
        props.add({mqtt::property::CORRELATION_DATA, message.correlation_data});
      }
      msg->set_properties(std::move(props));
    }
    const OperationId id = next_id_.fetch_add(1);
    try {
      client_.publish(msg, as_context(id), *this);
    } catch (const mqtt::exception& e) {
      return from_exception(e);
    }
    return id;
  }

  Result<OperationId> subscribe(const std::vector<Subscription>& subscriptions) override {
    if (!connected_.load()) return make_error(Errc::unavailable, "not connected");
    auto filters = std::make_shared<mqtt::string_collection>();
    mqtt::iasync_client::qos_collection qos;
    for (const auto& s : subscriptions) {
      filters->push_back(s.filter);
      qos.push_back(s.qos);
    }
    const OperationId id = next_id_.fetch_add(1);
    try {
      client_.subscribe(filters, qos, as_context(id), *this);
    } catch (const mqtt::exception& e) {
      return from_exception(e);
    }
    return id;
  }

  Status disconnect(std::chrono::milliseconds timeout) override {
    connected_.store(false);
    try {
      // The token stays owned here until the client is destroyed: Paho's threads may still touch
      // it after wait_for() returns.
      disconnect_token_ = client_.disconnect(static_cast<int>(timeout.count()));
      if (!disconnect_token_->wait_for(timeout + std::chrono::milliseconds(200))) {
        return make_error(Errc::timeout, "disconnect did not complete in {} ms", timeout.count());
      }
    } catch (const mqtt::exception& e) {
      return from_exception(e);
    }
    return {};
  }

  bool connected() const override { return connected_.load(); }

  void set_tls(bool tls) { tls_ = tls; }

 private:
  void emit(TransportEvent&& e) {
    if (alive_.load()) sink_(std::move(e));
  }

  void lost(std::string cause) {
    if (connected_.exchange(false)) emit(event::ConnectionLost{std::move(cause)});
  }

  // iaction_listener: runs on Paho's threads.
  void on_success(const mqtt::token& tok) override {
    switch (tok.get_type()) {
      case mqtt::token::Type::CONNECT: {
        connected_.store(true);
        emit(event::Connected{tok.get_connect_response().is_session_present()});
        break;
      }
      case mqtt::token::Type::PUBLISH: {
        const int reason = tok.get_reason_code();
        Status st;
        if (reason >= kFirstFailureReason) st = from_reason(reason, "publish");
        emit(event::Delivered{from_context(tok.get_user_context()), std::move(st)});
        break;
      }
      case mqtt::token::Type::SUBSCRIBE: {
        Status st;
        const auto response = tok.get_subscribe_response();
        for (auto code : response.get_reason_codes()) {
          if (code >= kFirstFailureReason) {
            st = from_reason(code, "subscribe");
            break;
          }
        }
        emit(event::Subscribed{from_context(tok.get_user_context()), std::move(st)});
        break;
      }
      default: break;
    }
  }

  void on_failure(const mqtt::token& tok) override {
    switch (tok.get_type()) {
      case mqtt::token::Type::CONNECT: emit(event::ConnectFailed{from_failed_token(tok, "connect")}); break;
      case mqtt::token::Type::PUBLISH:
        emit(event::Delivered{from_context(tok.get_user_context()), from_failed_token(tok, "publish")});
        break;
      case mqtt::token::Type::SUBSCRIBE:
        emit(event::Subscribed{from_context(tok.get_user_context()), from_failed_token(tok, "subscribe")});
        break;
      default: break;
    }
  }

  TransportOptions options_;
  EventSink sink_;
  mqtt::async_client client_;
  mqtt::token_ptr disconnect_token_;
  bool tls_ = false;
  std::atomic<bool> connected_{false};
  std::atomic<bool> alive_{true};
  std::atomic<OperationId> next_id_{1};
};

}  // namespace

Result<BrokerUri> parse_broker_uri(std::string_view uri) {
  BrokerUri out;
  std::string_view rest;
  if (uri.starts_with("mqtt://")) {
    rest = uri.substr(7);
  } else if (uri.starts_with("mqtts://")) {
    out.tls = true;
    rest = uri.substr(8);
  } else {
    return make_error(Errc::invalid_argument, "'{}' must start with mqtt:// or mqtts://", uri);
  }
  if (!rest.empty() && rest.back() == '/') rest.remove_suffix(1);
  out.port = out.tls ? 8883 : 1883;
  std::string_view host = rest;
  if (rest.starts_with('[')) {  // [ipv6]:port
    const auto close = rest.find(']');
    if (close == std::string_view::npos) return make_error(Errc::invalid_argument, "'{}': unclosed '['", uri);
    host = rest.substr(0, close + 1);
    rest = rest.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') return make_error(Errc::invalid_argument, "'{}': bad port", uri);
  } else {
    const auto colon = rest.rfind(':');
    host = rest.substr(0, colon);
    rest = colon == std::string_view::npos ? std::string_view{} : rest.substr(colon);
  }
  if (host.empty()) return make_error(Errc::invalid_argument, "'{}' has no host", uri);
  if (host.find_first_of("/?#@ ") != std::string_view::npos) {
    return make_error(Errc::invalid_argument, "'{}': host contains a forbidden character", uri);
  }
  if (!rest.empty()) {
    const std::string_view digits = rest.substr(1);
    unsigned port = 0;
    const auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (digits.empty() || ec != std::errc{} || ptr != digits.data() + digits.size() || port == 0 || port > 65535) {
      return make_error(Errc::invalid_argument, "'{}': port must be a number from 1 to 65535", uri);
    }
    out.port = static_cast<std::uint16_t>(port);
  }
  out.host = std::string(host);
  return out;
}

Result<std::unique_ptr<Transport>> make_mqtt_transport(TransportOptions options, EventSink sink) {
  auto uri = parse_broker_uri(options.broker_uri);
  if (!uri) return std::move(uri).error();
  if (options.client_id.empty() || options.client_id.size() > 128) {
    return make_error(Errc::invalid_argument, "client id must be 1 to 128 characters");
  }
  const std::string paho_uri = fmt::format("{}://{}:{}", uri->tls ? "ssl" : "tcp", uri->host, uri->port);
  try {
    auto transport = std::make_unique<PahoTransport>(std::move(options), paho_uri, std::move(sink));
    transport->set_tls(uri->tls);
    return std::unique_ptr<Transport>(std::move(transport));
  } catch (const mqtt::exception& e) {
    return make_error(Errc::invalid_argument, "cannot create MQTT client: {}", e.what());
  }
}

}  // namespace flotilla
