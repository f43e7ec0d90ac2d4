#include "flotilla/core/connection.hpp"

#include "flotilla/core/log.hpp"

namespace flotilla {

Connection::Connection(Transport& transport, std::vector<Subscription> subscriptions, Backoff backoff, Hooks hooks)
    : transport_(transport), subscriptions_(std::move(subscriptions)), backoff_(backoff), hooks_(std::move(hooks)) {}

void Connection::start(SteadyClock::time_point now) { attempt(now); }

void Connection::attempt(SteadyClock::time_point now) {
  retry_at_ = SteadyClock::time_point::max();
  std::optional<Message> will;
  if (hooks_.make_will) will = hooks_.make_will();
  if (auto st = transport_.connect(std::move(will)); !st) {
    schedule_retry(now, st.error().message);
    return;
  }
  state_ = State::connecting;
}

void Connection::schedule_retry(SteadyClock::time_point now, const std::string& why) {
  state_ = State::waiting;
  const auto delay = backoff_.next();
  retry_at_ = now + delay;
  log::warn("broker connection attempt {} failed ({}); retrying in {} ms", backoff_.attempts(), why, delay.count());
}

void Connection::tick(SteadyClock::time_point now) {
  if (state_ == State::waiting && now >= retry_at_) attempt(now);
}

bool Connection::handle(const TransportEvent& event, SteadyClock::time_point now) {
  if (const auto* c = std::get_if<event::Connected>(&event)) {
    if (subscriptions_.empty()) {
      state_ = State::up;
      backoff_.reset();
      ++connects_;
      if (hooks_.on_up) hooks_.on_up(c->session_present);
      return true;
    }
    auto id = transport_.subscribe(subscriptions_);
    if (!id) {
      schedule_retry(now, id.error().message);
      return true;
    }
    subscribe_id_ = *id;
    state_ = State::subscribing;
    session_present_ = c->session_present;
    return true;
  }
  if (const auto* s = std::get_if<event::Subscribed>(&event)) {
    if (state_ != State::subscribing || s->id != subscribe_id_) return true;
    if (!s->status) {
      log::error("subscription refused: {}", s->status.error().message);
      (void)transport_.disconnect(std::chrono::milliseconds(500));
      schedule_retry(now, s->status.error().message);
      return true;
    }
    state_ = State::up;
    backoff_.reset();
    ++connects_;
    if (hooks_.on_up) hooks_.on_up(session_present_);
    return true;
  }
  if (const auto* f = std::get_if<event::ConnectFailed>(&event)) {
    if (state_ == State::connecting) schedule_retry(now, f->error.message);
    return true;
  }
  if (const auto* l = std::get_if<event::ConnectionLost>(&event)) {
    const bool was_up = state_ == State::up;
    if (state_ == State::up || state_ == State::subscribing) schedule_retry(now, l->cause);
    if (was_up && hooks_.on_down) hooks_.on_down(l->cause);
    return true;
  }
  return false;
}

}  // namespace flotilla
