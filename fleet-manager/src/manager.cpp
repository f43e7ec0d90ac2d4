#include "flotilla/manager/manager.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>

#include "flotilla/core/clock.hpp"
#include "flotilla/core/codec.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/core/version.hpp"
#include "flotilla/manager/facts.hpp"
#include "flotilla/manager/index_load.hpp"
#include "flotilla/manager/query.hpp"
#include "flotilla/v1/command.pb.h"

namespace flotilla::manager {
namespace {

constexpr std::uint32_t kDefaultPage = 1000;
constexpr std::uint32_t kMaxPage = 5000;
// A reply must fit the broker's max_packet_size (1 MiB): pages stop growing past this.
constexpr std::size_t kMaxReplyBytes = 512 * 1024;
constexpr std::string_view kReplyPrefix = "flotilla/v1/cli/";
constexpr auto kRebirthCommandTtl = std::chrono::minutes(5);
// Devices one delete_device request may name (the request itself is at most 64 KiB).
constexpr int kMaxDeletePerRequest = 500;
constexpr std::uint32_t kDefaultEventPage = 100;
constexpr std::uint32_t kMaxEventPage = 1000;
// Membership event retention: how often the reactor looks for events to delete, and the most it
// deletes in one write (one reactor turn), so that ingest never waits long behind it.
constexpr auto kPruneInterval = std::chrono::seconds(10);
constexpr std::size_t kPruneBatch = 5000;

v1::RpcResponse failure(v1::RpcResponse::Code code, std::string message) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  r.set_code(code);
  r.set_error(std::move(message));
  return r;
}

}  // namespace

Result<std::unique_ptr<Manager>> Manager::create(ManagerConfig config, std::unique_ptr<Store> store,
                                                 const TransportFactory& transport_factory) {
  if (auto st = validate(config); !st) return std::move(st).error();
  auto registry = Registry::load(*store);
  if (!registry) return std::move(registry).error();
  auto groups = Groups::load(*store);
  if (!groups) return std::move(groups).error();
  auto policies = Policies::load(*store);
  if (!policies) return std::move(policies).error();
  std::unique_ptr<Manager> m(
      new Manager(std::move(config), std::move(store), std::move(registry).value(), std::move(groups).value()));
  m->policies_ = std::move(policies).value();
  if (auto st = m->build_index(); !st) return std::move(st).error();
  if (auto st = m->jobs_.load(*m->store_, unix_now_ms()); !st) return std::move(st).error();

  auto options = config::transport_options(m->config_.mqtt);
  if (!options) return std::move(options).error();
  if (options->client_id.empty()) options->client_id = fmt::format("flotilla-manager-{}", m->config_.instance_id);
  auto* queue = &m->queue_;
  auto transport = transport_factory(std::move(options).value(),
                                     [queue](TransportEvent&& e) { queue->push(std::move(e)); });
  if (!transport) return std::move(transport).error();
  m->transport_ = std::move(transport).value();

  std::vector<Subscription> subs;
  for (auto channel : {topics::Channel::birth, topics::Channel::death, topics::Channel::telemetry,
                       topics::Channel::inventory, topics::Channel::result}) {
    subs.push_back({topics::all_devices(channel), 1});
  }
  subs.push_back({topics::manager_rpc(), 1});
  Connection::Hooks hooks;
  Manager* self = m.get();
  // The Will is built at connect time, when the moment of the loss is unknown: since_ms 0.
  hooks.make_will = [self] { return std::optional<Message>(self->presence(false, 0)); };
  hooks.on_up = [self](bool session_present) {
    log::info("connected to {} (session {})", self->config_.mqtt.broker, session_present ? "resumed" : "new");
    self->on_up();
  };
  hooks.on_down = [](const std::string& cause) { log::warn("broker connection lost: {}", cause); };
  m->connection_ = std::make_unique<Connection>(
      *m->transport_, std::move(subs),
      Backoff(m->config_.mqtt.reconnect_min, m->config_.mqtt.reconnect_max, static_cast<std::uint64_t>(unix_now_ms())),
      std::move(hooks));
  return m;
}

Manager::Manager(ManagerConfig config, std::unique_ptr<Store> store, Registry registry, Groups groups)
    : config_(std::move(config)),
      store_(std::move(store)),
      registry_(std::move(registry)),
      groups_(std::move(groups)),
      jobs_(job_options(config_), job_directory()),
      queue_(config_.queue_capacity),
      log_limiter_(config_.log_burst, std::chrono::minutes(1)) {}

Manager::~Manager() = default;

DeviceFacts Manager::record_facts(const std::string& id) const {
  DeviceFacts f;
  f.id = id;
  if (const auto* r = registry_.find(id)) add_record_facts(*r, f);
  if (auto it = labels_.find(id); it != labels_.end()) {
    for (const auto& t : it->second.tags()) {
      const bool reported = std::any_of(f.values.begin(), f.values.end(),
                                        [&](const auto& kv) { return kv.first == "tag" && kv.second == t; });
      if (!reported) f.values.emplace_back("tag", t);
    }
    for (const auto& [k, v] : it->second.attributes()) f.values.emplace_back("attr." + k, v);
  }
  for (auto& g : groups_.groups_of(id)) f.values.emplace_back("group", std::move(g));
  return f;
}

Status Manager::build_index() {
  const auto started = SteadyClock::now();
  // A snapshot saved at exactly the store's current state is read instead of rebuilding.
  const auto snapshot = config_.data_dir / kIndexSnapshotFile;
  auto loaded = load_index(*store_, registry_, groups_, &snapshot);
  if (!loaded) return std::move(loaded).error();
  index_ = std::move(loaded->index);
  labels_ = std::move(loaded->labels);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started).count();
  if (loaded->from_snapshot) {
    log::info("index of {} devices read from {} in {} ms", index_.size(), snapshot.native(), ms);
  } else {
    log::info("index of {} devices built in {} ms ({:.0f} ms reading the store, {:.0f} ms indexing; {})", index_.size(),
              ms, loaded->read_ms, loaded->index_ms, loaded->snapshot_note);
  }
  return {};
}

void Manager::run(std::stop_token stop) {
  started_at_ms_ = unix_now_ms();
  log::info("manager {} starting with {} devices in the registry ({} marked online)", config_.instance_id,
            registry_.devices().size(), registry_.online_count());
  connection_->start(SteadyClock::now());
  auto next_reconcile = SteadyClock::now() + std::chrono::seconds(30);
  auto next_prune = SteadyClock::now();
  bool prune_backlog = false;
  std::vector<TransportEvent> events;
  events.reserve(config_.max_batch);
  while (!stop.stop_requested()) {
    const auto now = SteadyClock::now();
    auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(connection_->next_deadline() - now);
    wait = std::clamp(wait, std::chrono::milliseconds(0), std::chrono::milliseconds(200));
    if (prune_backlog) wait = std::chrono::milliseconds(0);
    events.clear();
    queue_.drain(events, config_.max_batch, wait);
    // Also without events: the job engine has timers.
    handle_batch(events);
    connection_->tick(SteadyClock::now());
    if (SteadyClock::now() >= next_reconcile) {
      // Dynamic groups whose queries involve time (last_seen<-5m) change without any event.
      Batch batch;
      auto changes = groups_.reconcile(index_, unix_now_ms(), batch);
      commit(batch, {}, std::move(changes));
      next_reconcile = SteadyClock::now() + std::chrono::seconds(30);
    }
    // One bounded batch per turn while a backlog lasts, so ingest goes on in between.
    if (prune_backlog || SteadyClock::now() >= next_prune) {
      prune_backlog = prune_events(unix_now_ms());
      next_prune = SteadyClock::now() + kPruneInterval;
    }
  }
  log::info("manager stopping");
  if (connection_->up()) {
    (void)transport_->publish(presence(false, unix_now_ms()));
    (void)transport_->disconnect(std::chrono::milliseconds(2000));
  }
  // Paho acknowledges a QoS 1 message when it receives it and hands it to the sink afterwards,
  // possibly after the disconnect returned. Ingest until the transport has been quiet for
  // kQuietBeforeExit, then close the queue and ingest what is left.
  constexpr auto kQuietBeforeExit = std::chrono::milliseconds(300);
  auto quiet_since = SteadyClock::now();
  while (SteadyClock::now() - quiet_since < kQuietBeforeExit) {
    events.clear();
    if (queue_.drain(events, config_.max_batch, std::chrono::milliseconds(50)) > 0) {
      handle_batch(events);
      quiet_since = SteadyClock::now();
    }
  }
  queue_.close();
  for (events.clear(); queue_.drain(events, config_.max_batch, std::chrono::milliseconds(0)) > 0; events.clear()) {
    handle_batch(events);
  }
  // The last write is behind: nothing writes to the store from here until the process exits.
  save_snapshot();
}

void Manager::save_snapshot() {
  const auto started = SteadyClock::now();
  const auto file = config_.data_dir / kIndexSnapshotFile;
  if (auto st = save_index_snapshot(*store_, index_, file); !st) {
    log::warn("index snapshot not saved, the next start rebuilds the index: {}", st.error().message);
    return;
  }
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started).count();
  log::info("index of {} devices saved to {} in {} ms", index_.size(), file.native(), ms);
}

bool Manager::prune_events(std::int64_t now_ms) {
  if (config_.event_retention.count() == 0 && config_.event_max == 0) return false;
  Batch batch;
  auto erased = groups_.prune_events(*store_, now_ms, config_.event_retention, config_.event_max, kPruneBatch, batch);
  if (!erased) {
    std::uint64_t suppressed = 0;
    if (log_limiter_.allow("prune", SteadyClock::now(), suppressed)) {
      log::warn("membership events not pruned: {}", erased.error().message);
    }
    return false;
  }
  if (batch.empty()) return false;
  commit(batch, {}, {});
  events_["membership_events_pruned"] += *erased;
  return *erased == kPruneBatch;
}

void Manager::clear_retained(const DeviceId& id) {
  const auto topic = topics::device(id, topics::Channel::config);
  // A desired configuration still waiting to be published must not follow the clear.
  std::erase_if(config_outgoing_, [&](const Message& m) { return m.topic == topic; });
  if (auto st = transport_->publish(Message{topic, {}, 1, true, {}, {}}); !st) {
    retained_to_clear_.insert(topic);
    count_drop("config_not_published", topic, st.error().message);
  }
}

void Manager::on_up() {
  // The engine sends every unanswered command again; what waited for the old session goes.
  command_backlog_.clear();
  commands_in_flight_.clear();
  jobs_.on_reconnect();
  configs_full_refresh_ = true;
  // Devices deleted while the broker was out of reach. A device that re-registered since gets its
  // configuration again from the full refresh that follows.
  for (auto it = retained_to_clear_.begin(); it != retained_to_clear_.end();) {
    if (transport_->publish(Message{*it, {}, 1, true, {}, {}})) {
      it = retained_to_clear_.erase(it);
    } else {
      ++it;
    }
  }
  if (auto id = transport_->publish(presence(true, unix_now_ms())); !id) {
    log::warn("presence publish failed: {}", id.error().message);
  }
}

Message Manager::presence(bool online, std::int64_t since_ms) const {
  v1::ManagerState state;
  state.set_schema_version(codec::schema_version);
  state.set_instance_id(config_.instance_id);
  state.set_online(online);
  state.set_since_ms(since_ms);
  state.set_version(flotilla::version);
  return Message{topics::manager_state(), codec::encode(state), 1, true, {}, {}};
}

void Manager::handle_batch(std::vector<TransportEvent>& events) {
  const auto steady_now = SteadyClock::now();
  const std::int64_t now_ms = unix_now_ms();
  Batch batch;
  std::vector<const Message*> requests;
  std::vector<DeviceFacts> inventories, telemetry;
  for (auto& e : events) {
    if (connection_->handle(e, steady_now)) continue;
    if (auto* r = std::get_if<event::Received>(&e)) {
      if (r->message.topic == topics::manager_rpc()) {
        requests.push_back(&r->message);
      } else {
        ingest(r->message, now_ms, batch, inventories, telemetry);
      }
    } else if (auto* d = std::get_if<event::Delivered>(&e)) {
      on_delivered(d->id);
      if (!d->status) count_drop("publish_failed", "", d->status.error().message);
    }
  }
  const auto changed = registry_.flush(batch);
  // The index and group membership follow the batch before it commits; nothing is answered or
  // published until it is durable (a failed write stops the manager).
  for (const auto& id : changed) index_.update(record_facts(id), FactPart::record);
  for (const auto& f : inventories) index_.update(f, FactPart::inventory);
  for (const auto& f : telemetry) index_.update(f, FactPart::telemetry);
  auto membership = groups_.reevaluate(changed, index_, now_ms, batch);
  (void)refresh_membership(membership);
  jobs_.on_devices_changed(changed, now_ms, batch);
  if (connection_->up()) jobs_.tick(now_ms, batch);
  // Desired configuration follows tenant, site and group changes.
  std::vector<std::string> touched = changed;
  for (const auto& e : membership) touched.push_back(e.device_id());
  if (configs_full_refresh_ && connection_->up()) {
    touched.clear();
    for (const auto& [id, record] : registry_.devices()) touched.push_back(id);
    refresh_configs(touched, now_ms, /*republish_drift=*/true);
    configs_full_refresh_ = false;
  } else {
    refresh_configs(touched, now_ms);
  }
  for (const auto& id : registry_.flush(batch)) index_.update(record_facts(id), FactPart::record);
  if (!batch.empty()) {
    // Nothing is answered or acted on until the batch is durable: a failed write stops the
    // manager, and a restart resumes from what RocksDB holds.
    if (auto st = store_->write(batch, true); !st) {
      log::error("store write failed, stopping: {}", st.error().message);
      std::_Exit(74);
    }
    ++batches_;
  }
  publish_events(membership);
  publish_job_commands();
  publish_configs();
  for (const Message* request : requests) answer(*request);
  for (const auto& device_id : rebirths_due_) {
    auto id = DeviceId::parse(device_id);
    if (!id) continue;
    v1::Command cmd;
    *cmd.mutable_header() = codec::make_header(*id, 0, ++command_counter_, now_ms);
    cmd.set_command_id(fmt::format("{}-rebirth-{}-{}", config_.instance_id, started_at_ms_, command_counter_));
    cmd.set_type("rebirth");
    cmd.set_expires_at_ms(now_ms + std::chrono::duration_cast<std::chrono::milliseconds>(kRebirthCommandTtl).count());
    if (auto st = transport_->publish(
            Message{topics::device(*id, topics::Channel::cmd), codec::encode(cmd), 1, false, {}, {}});
        !st) {
      log::warn("rebirth request to {} not sent: {}", device_id, st.error().message);
    }
  }
  rebirths_due_.clear();
}

std::vector<std::string> Manager::refresh_membership(std::vector<v1::MembershipEvent>& events) {
  std::set<std::string> devices;
  for (const auto& e : events) devices.insert(e.device_id());
  for (const auto& id : devices) {
    // Static groups may list devices that never connected: they are not devices of the index.
    if (registry_.find(id) != nullptr) index_.update(record_facts(id), FactPart::record);
  }
  events_["group_membership"] += events.size();
  return {devices.begin(), devices.end()};
}

void Manager::commit(Batch& batch, const std::vector<std::string>& devices, std::vector<v1::MembershipEvent> events) {
  for (const auto& id : devices) {
    if (registry_.find(id) != nullptr) index_.update(record_facts(id), FactPart::record);
  }
  (void)refresh_membership(events);
  if (!batch.empty()) {
    if (auto st = store_->write(batch, true); !st) {
      log::error("store write failed, stopping: {}", st.error().message);
      std::_Exit(74);
    }
    ++batches_;
  }
  publish_events(events);
}

void Manager::publish_events(const std::vector<v1::MembershipEvent>& events) {
  for (const auto& e : events) {
    auto topic = topics::group_events(e.group());
    if (!topic) continue;
    if (auto id = transport_->publish(Message{*topic, codec::encode(e), 1, false, {}, {}}); !id) {
      count_drop("event_not_published", *topic, id.error().message);
    }
  }
}

void Manager::ingest(const Message& message, std::int64_t now_ms, Batch& batch, std::vector<DeviceFacts>& inventories,
                     std::vector<DeviceFacts>& telemetry) {
  auto topic = topics::parse_device_topic(message.topic);
  if (!topic) {
    count_drop("bad_topic", message.topic.substr(0, 128), topic.error().message);
    return;
  }
  if (message.retained) {
    // Devices never publish retained messages; replaying one on every resubscribe would
    // resurrect stale state.
    count_drop("retained", message.topic, "device messages must not be retained");
    return;
  }
  auto outcome = registry_.ingest(*topic, message.payload, now_ms, batch);
  if (!outcome.dropped.empty()) {
    count_drop(outcome.dropped, message.topic, outcome.detail);
    return;
  }
  messages_.fetch_add(1, std::memory_order_relaxed);
  if (outcome.inventory) {
    DeviceFacts f{topic->device.str(), {}};
    add_inventory_facts(*outcome.inventory, f);
    inventories.push_back(std::move(f));
  }
  if (outcome.telemetry) {
    DeviceFacts f{topic->device.str(), {}};
    add_telemetry_facts(*outcome.telemetry, f);
    telemetry.push_back(std::move(f));
  }
  for (const auto& e : outcome.events) {
    ++events_[e];
    std::uint64_t suppressed = 0;
    if (e == "seq_gap" && log_limiter_.allow(e, SteadyClock::now(), suppressed)) {
      log::warn("device {}: {}", topic->device, outcome.detail);
    }
  }
  if (outcome.request_rebirth) request_rebirth(topic->device.str(), now_ms);
  if (outcome.result) jobs_.on_result(topic->device.str(), *outcome.result, now_ms, batch);
  if (topic->channel == topics::Channel::birth) {
    jobs_.on_birth(topic->device.str(), now_ms);
  } else if (topic->channel == topics::Channel::death) {
    if (const auto* r = registry_.find(topic->device.str()); r != nullptr && !r->online()) {
      jobs_.on_offline(topic->device.str());
    }
  }
}

void Manager::count_drop(const std::string& reason, const std::string& topic, const std::string& detail) {
  ++dropped_[reason];
  std::uint64_t suppressed = 0;
  if (log_limiter_.allow(reason, SteadyClock::now(), suppressed)) {
    log::warn("dropped message ({}) on '{}': {}{}", reason, topic, detail,
              suppressed > 0 ? fmt::format(" [{} more suppressed]", suppressed) : std::string());
  }
}

void Manager::request_rebirth(const std::string& device_id, std::int64_t now_ms) {
  auto& last = last_rebirth_ms_[device_id];
  const auto interval = std::chrono::duration_cast<std::chrono::milliseconds>(config_.rebirth_interval).count();
  if (last != 0 && now_ms - last < interval) return;
  last = now_ms;
  ++events_["rebirth_requested"];
  rebirths_due_.push_back(device_id);
}

void Manager::answer(const Message& request) {
  if (!request.response_topic.starts_with(kReplyPrefix) || request.response_topic.size() > 256) {
    count_drop("rpc_bad_reply_topic", request.topic, "requests need a response topic under flotilla/v1/cli/");
    return;
  }
  v1::RpcResponse response;
  auto decoded = codec::decode<v1::RpcRequest>(request.payload, codec::max_rpc_bytes);
  if (!decoded) {
    count_drop("rpc_parse_error", request.topic, decoded.error().message);
    response = failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, decoded.error().message);
  } else {
    response = dispatch(*decoded);
  }
  ++events_["rpc"];
  Message reply{request.response_topic, codec::encode(response), 1, false, {}, request.correlation_data};
  if (auto st = transport_->publish(reply); !st) log::warn("rpc reply not sent: {}", st.error().message);
  // What the request made durable goes out after its answer: a job to ten thousand devices is
  // answered at once, not behind its own notifications.
  publish_job_commands();
  publish_configs();
}

v1::RpcResponse Manager::dispatch(const v1::RpcRequest& request) {
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  const auto& devices = registry_.devices();
  // Who asks, for the audit log and records (the name the request states).
  const std::string actor = request.actor().empty() ? std::string("unknown") : request.actor().substr(0, 64);
  if (auto handled = dispatch_jobs(request)) return std::move(*handled);
  if (auto handled = dispatch_policies(request)) return std::move(*handled);
  switch (request.method_case()) {
    case v1::RpcRequest::kListDevices: {
      const auto& q = request.list_devices();
      const std::uint32_t limit = q.limit() == 0 ? kDefaultPage : std::min(q.limit(), kMaxPage);
      auto* out = r.mutable_list_devices();
      auto it = q.start_after().empty() ? devices.begin() : devices.upper_bound(q.start_after());
      std::size_t bytes = 0;
      for (; it != devices.end() && static_cast<std::uint32_t>(out->devices_size()) < limit && bytes < kMaxReplyBytes;
           ++it) {
        *out->add_devices() = it->second;
        bytes += it->second.ByteSizeLong();
      }
      if (it != devices.end() && out->devices_size() > 0) out->set_next_cursor(out->devices().rbegin()->device_id());
      out->set_total(devices.size());
      return r;
    }
    case v1::RpcRequest::kGetDevice: {
      auto id = DeviceId::parse(request.get_device().device_id());
      if (!id) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, id.error().message);
      const auto* rec = registry_.find(id->str());
      if (rec == nullptr) return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("device {} is not known", *id));
      auto* detail = r.mutable_device();
      *detail->mutable_record() = *rec;
      for (auto [space, target] :
           {std::pair<Space, google::protobuf::MessageLite*>{Space::inventory, detail->mutable_inventory()},
            {Space::telemetry, detail->mutable_telemetry()}}) {
        auto bytes = store_->get(space, id->str());
        if (!bytes) {
          if (bytes.error().code != Errc::not_found) {
            return failure(v1::RpcResponse::CODE_INTERNAL, bytes.error().message);
          }
          continue;
        }
        if (!target->ParseFromString(*bytes)) {
          return failure(v1::RpcResponse::CODE_INTERNAL, fmt::format("stored record of {} does not decode", *id));
        }
      }
      return r;
    }
    case v1::RpcRequest::kCountDevices: {
      const auto& q = request.count_devices();
      auto where = query::parse(q.where());
      if (!where) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, where.error().message);
      auto counts = index_.count_by(q.by(), *where, unix_now_ms());
      if (!counts) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, counts.error().message);
      auto* out = r.mutable_count_devices();
      out->set_by(q.by());
      for (const auto& [value, count] : *counts) {
        auto* b = out->add_buckets();
        b->set_value(value);
        b->set_count(count);
      }
      // Multi-valued fields count a device once per value; total is the devices that matched.
      out->set_total(q.where().empty() ? devices.size() : index_.count(*where, unix_now_ms()));
      return r;
    }
    case v1::RpcRequest::kQueryDevices: {
      const auto& q = request.query_devices();
      auto where = query::parse(q.query());
      if (!where) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, where.error().message);
      QueryOptions options;
      if (!q.sort().empty()) options.sort = SortKey{q.sort(), q.descending()};
      options.limit = q.limit() == 0 ? 100 : std::min(q.limit(), kMaxPage);
      options.cursor = q.cursor();
      options.fields.assign(q.fields().begin(), q.fields().end());
      const auto now = unix_now_ms();
      auto page = index_.query(*where, options, now);
      if (!page) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, page.error().message);
      auto* out = r.mutable_query_devices();
      std::size_t bytes = 0;
      for (const auto& row : page->rows) {
        auto* o = out->add_rows();
        o->set_device_id(row.id);
        for (const auto& [name, value] : row.values) {
          auto* v = o->add_values();
          v->set_name(name);
          v->set_value(value);
        }
        bytes += o->ByteSizeLong();
        if (bytes > kMaxReplyBytes) {
          return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT,
                         fmt::format("a page of {} rows exceeds {} KiB; ask for fewer rows or fields",
                                     page->rows.size(), kMaxReplyBytes / 1024));
        }
      }
      out->set_total(page->total);
      out->set_next_cursor(page->next_cursor);
      if (q.explain()) out->set_plan(index_.explain(*where, now));
      return r;
    }
    case v1::RpcRequest::kDeviceStats: {
      const auto& q = request.device_stats();
      auto where = query::parse(q.where());
      if (!where) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, where.error().message);
      const auto now = unix_now_ms();
      auto st = index_.stats(q.field(), *where, now);
      if (!st) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, st.error().message);
      auto* out = r.mutable_device_stats();
      out->set_field(q.field());
      out->set_count(st->count);
      out->set_min(st->min);
      out->set_max(st->max);
      out->set_sum(st->sum);
      out->set_avg(st->avg);
      out->set_p50(st->p50);
      out->set_p90(st->p90);
      out->set_p99(st->p99);
      out->set_distinct(st->distinct);
      out->set_matched(index_.count(*where, now));
      return r;
    }
    case v1::RpcRequest::kCreateGroup: {
      Batch batch;
      v1::Group group = request.create_group().group();
      group.set_created_by(actor);
      const auto now = unix_now_ms();
      auto events = groups_.create(group, index_, now, batch);
      if (!events) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, events.error().message);
      const std::string name = group.name();
      jobs_.audit(batch, now, actor, "", "group.create", name,
                  group.type() == v1::Group::TYPE_DYNAMIC ? fmt::format("query {}", group.query())
                                                          : fmt::format("{} members", group.members_size()));
      commit(batch, {}, std::move(events).value());
      *r.mutable_group() = group_info(name);
      return r;
    }
    case v1::RpcRequest::kListGroups: {
      for (const auto* g : groups_.list()) *r.mutable_groups()->add_groups() = group_info(g->name());
      return r;
    }
    case v1::RpcRequest::kShowGroup: {
      const auto& name = request.show_group().name();
      if (groups_.find(name) == nullptr)
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("group {} does not exist", name));
      *r.mutable_group() = group_info(name);
      return r;
    }
    case v1::RpcRequest::kGroupMembers: {
      const auto& q = request.group_members();
      if (groups_.find(q.name()) == nullptr) {
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("group {} does not exist", q.name()));
      }
      const auto members = groups_.members(q.name());
      const std::uint32_t limit = q.limit() == 0 ? kDefaultPage : std::min(q.limit(), kMaxPage);
      auto it = std::upper_bound(members.begin(), members.end(), q.cursor());
      if (q.cursor().empty()) it = members.begin();
      auto* out = r.mutable_group_members();
      for (; it != members.end() && static_cast<std::uint32_t>(out->device_ids_size()) < limit; ++it)
        out->add_device_ids(*it);
      if (it != members.end()) out->set_next_cursor(*out->device_ids().rbegin());
      out->set_total(members.size());
      return r;
    }
    case v1::RpcRequest::kChangeMembers: {
      const auto& q = request.change_members();
      Batch batch;
      std::vector<std::string> ids(q.device_ids().begin(), q.device_ids().end());
      const auto now = unix_now_ms();
      auto events = groups_.change_members(q.name(), ids, q.remove(), now, batch);
      if (!events) {
        return failure(events.error().code == Errc::not_found ? v1::RpcResponse::CODE_NOT_FOUND
                                                              : v1::RpcResponse::CODE_INVALID_ARGUMENT,
                       events.error().message);
      }
      jobs_.audit(
          batch, now, actor, "", q.remove() ? "group.remove" : "group.add", q.name(),
          fmt::format("{} devices: {}", ids.size(),
                      fmt::join(ids.begin(), ids.begin() + std::min<std::ptrdiff_t>(10, std::ssize(ids)), ",")));
      commit(batch, {}, std::move(events).value());
      *r.mutable_group() = group_info(q.name());
      return r;
    }
    case v1::RpcRequest::kExplainMembership: {
      const auto& q = request.explain_membership();
      if (groups_.find(q.name()) == nullptr) {
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("group {} does not exist", q.name()));
      }
      bool member = false;
      auto lines = groups_.explain(q.name(), q.device_id(), index_, unix_now_ms(), member);
      auto* out = r.mutable_explanation();
      out->set_member(member);
      for (auto& l : lines) out->add_lines(std::move(l));
      return r;
    }
    case v1::RpcRequest::kDeleteGroup: {
      const auto& name = request.delete_group().name();
      if (groups_.find(name) == nullptr)
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("group {} does not exist", name));
      *r.mutable_group() = group_info(name);
      Batch batch;
      const auto now = unix_now_ms();
      auto events = groups_.erase(name, now, batch);
      if (!events) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, events.error().message);
      jobs_.audit(batch, now, actor, "", "group.delete", name, fmt::format("{} members", events->size()));
      commit(batch, {}, std::move(events).value());
      return r;
    }
    case v1::RpcRequest::kLabelDevice: {
      const auto& q = request.label_device();
      auto id = DeviceId::parse(q.device_id());
      if (!id) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, id.error().message);
      if (registry_.find(id->str()) == nullptr) {
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("device {} is not known", *id));
      }
      v1::DeviceLabels labels = labels_[id->str()];
      std::set<std::string> tags(labels.tags().begin(), labels.tags().end());
      for (const auto& t : q.add_tags()) {
        if (auto st = validate_topic_level_name(t, "tag"); !st)
          return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, st.error().message);
        tags.insert(t);
      }
      for (const auto& t : q.remove_tags()) tags.erase(t);
      for (const auto& [k, v] : q.set_attributes()) {
        if (auto st = validate_topic_level_name(k, "attribute name"); !st) {
          return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, st.error().message);
        }
        if (v.size() > 256)
          return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, fmt::format("attribute {}: at most 256 bytes", k));
        (*labels.mutable_attributes())[k] = v;
      }
      for (const auto& k : q.unset_attributes()) labels.mutable_attributes()->erase(k);
      if (tags.size() > 64 || labels.attributes_size() > 64) {
        return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, "at most 64 tags and 64 attributes per device");
      }
      labels.clear_tags();
      for (const auto& t : tags) labels.add_tags(t);
      labels_[id->str()] = labels;
      Batch batch;
      batch.put(Space::labels, id->str(), codec::encode(labels));
      jobs_.audit(batch, unix_now_ms(), actor, "", "device.label", id->str(),
                  fmt::format("tags {}; {} attributes", fmt::join(labels.tags(), ","), labels.attributes_size()));
      index_.update(record_facts(id->str()), FactPart::record);
      auto events = groups_.reevaluate({id->str()}, index_, unix_now_ms(), batch);
      commit(batch, {id->str()}, std::move(events));
      *r.mutable_labels() = labels;
      return r;
    }
    case v1::RpcRequest::kDeleteDevice: return delete_devices(request);
    case v1::RpcRequest::kGroupEvents: return group_events(request.group_events());
    case v1::RpcRequest::kManagerStats: {
      *r.mutable_manager_stats() = stats();
      return r;
    }
    case v1::RpcRequest::kRebirth: {
      auto id = DeviceId::parse(request.rebirth().device_id());
      if (!id) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, id.error().message);
      if (registry_.find(id->str()) == nullptr) {
        return failure(v1::RpcResponse::CODE_NOT_FOUND, fmt::format("device {} is not known", *id));
      }
      last_rebirth_ms_.erase(id->str());
      request_rebirth(id->str(), unix_now_ms());
      r.mutable_rebirth()->set_command_id(fmt::format("{}-rebirth-{}-{}", config_.instance_id, started_at_ms_,
                                                      command_counter_ + rebirths_due_.size()));
      return r;
    }
    case v1::RpcRequest::kCreateJob:
    case v1::RpcRequest::kListJobs:
    case v1::RpcRequest::kShowJob:
    case v1::RpcRequest::kCancelJob:
    case v1::RpcRequest::kJobExecutions:
    case v1::RpcRequest::kAddScript:
    case v1::RpcRequest::kListScripts:
    case v1::RpcRequest::kGetScript:
    case v1::RpcRequest::kAuditLog:
    case v1::RpcRequest::kSetPolicy:
    case v1::RpcRequest::kShowPolicy:
    case v1::RpcRequest::kListPolicies:
    case v1::RpcRequest::kEffectiveConfig:
    case v1::RpcRequest::kApproveJob:
    case v1::RpcRequest::kDeletePolicy:  // dispatch_jobs
    case v1::RpcRequest::METHOD_NOT_SET: break;
  }
  return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, "unknown or missing request method");
}

v1::RpcResponse Manager::delete_devices(const v1::RpcRequest& request) {
  const auto& q = request.delete_device();
  if (q.device_ids_size() == 0) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, "name the devices to delete");
  if (q.device_ids_size() > kMaxDeletePerRequest) {
    return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT,
                   fmt::format("at most {} devices per request", kMaxDeletePerRequest));
  }
  std::set<std::string> ids;
  for (const auto& raw : q.device_ids()) {
    auto id = DeviceId::parse(raw);
    if (!id) {
      return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT,
                     fmt::format("device id {:?}: {}", raw.substr(0, 80), id.error().message));
    }
    ids.insert(id->str());
  }
  // All or nothing: every device must be known, and offline unless forced.
  std::vector<std::string> unknown, online;
  for (const auto& id : ids) {
    const auto* rec = registry_.find(id);
    if (rec == nullptr) {
      unknown.push_back(id);
    } else if (rec->online()) {
      online.push_back(id);
    }
  }
  auto some = [](const std::vector<std::string>& v) {
    return fmt::format("{}{}", fmt::join(v.begin(), v.begin() + std::min<std::ptrdiff_t>(10, std::ssize(v)), ", "),
                       v.size() > 10 ? ", ..." : "");
  };
  if (!unknown.empty()) {
    return failure(v1::RpcResponse::CODE_NOT_FOUND,
                   fmt::format("{} not known: {}; nothing was deleted", unknown.size() == 1 ? "device" : "devices",
                               some(unknown)));
  }
  if (!online.empty() && !q.force()) {
    return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT,
                   fmt::format("{} online: {}; a device that is online registers again with its next message, so "
                               "stop it first or force the deletion (--force); nothing was deleted",
                               online.size() == 1 ? "device" : "devices", some(online)));
  }

  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  const auto now = unix_now_ms();
  const std::string actor = request.actor().empty() ? std::string("unknown") : request.actor().substr(0, 64);
  Batch batch;
  std::vector<v1::MembershipEvent> events;
  auto* out = r.mutable_deleted_devices();
  for (const auto& id : ids) {
    auto record = registry_.erase(id, batch);
    if (!record) continue;  // checked above
    auto* deleted = out->add_devices();
    const bool was_online = record->online();
    *deleted->mutable_record() = std::move(*record);
    if (auto l = labels_.find(id); l != labels_.end()) {
      deleted->set_had_labels(l->second.tags_size() > 0 || l->second.attributes_size() > 0);
      labels_.erase(l);
    }
    batch.erase(Space::labels, id);
    auto left = groups_.forget_device(id, now, batch);
    for (auto& e : left) {
      deleted->add_groups(e.group());
      events.push_back(std::move(e));
    }
    index_.erase(id);
    last_rebirth_ms_.erase(id);
    std::erase(rebirths_due_, id);
    jobs_.audit(batch, now, actor, "", "device.delete", id,
                fmt::format("{}; left {} groups", was_online ? "online, forced" : "offline", deleted->groups_size()));
  }
  // Unfinished executions of the deleted devices end REMOVED; a device-level policy goes with its
  // device (one that re-registers starts from its tenant's, site's and groups' policies).
  const std::vector<std::string> deleted(ids.begin(), ids.end());
  for (const auto& id : deleted) {
    jobs_.on_device_deleted(id, now, batch);
    (void)policies_.erase("device", id, batch);  // not_found: it had none
  }
  commit(batch, {}, std::move(events));
  for (const auto& id : deleted) {
    if (auto device = DeviceId::parse(id)) clear_retained(*device);
  }
  events_["device_deleted"] += deleted.size();
  log::info("{} deleted {} devices: {}", actor, deleted.size(), some(deleted));
  return r;
}

v1::RpcResponse Manager::group_events(const v1::GroupEventsRequest& q) const {
  if (!q.group().empty()) {
    if (auto st = validate_topic_level_name(q.group(), "group"); !st) {
      return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, st.error().message);
    }
  }
  if (!q.device_id().empty()) {
    if (auto id = DeviceId::parse(q.device_id()); !id) {
      return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, id.error().message);
    }
  }
  if (q.since_ms() < 0) return failure(v1::RpcResponse::CODE_INVALID_ARGUMENT, "since_ms: must not be negative");
  EventQuery query;
  query.group = q.group();
  query.device_id = q.device_id();
  query.since_ms = q.since_ms();
  query.before_seq = q.before_seq();
  query.limit = q.limit() == 0 ? kDefaultEventPage : std::min(q.limit(), kMaxEventPage);
  auto page = groups_.read_events(*store_, query);
  if (!page) return failure(v1::RpcResponse::CODE_INTERNAL, page.error().message);
  v1::RpcResponse r;
  r.set_schema_version(codec::schema_version);
  auto* out = r.mutable_group_events();
  for (auto& e : page->events) *out->add_events() = std::move(e);
  out->set_next_cursor(page->next_cursor);
  out->set_first_seq(groups_.first_event_seq());
  out->set_last_seq(groups_.last_event_seq());
  return r;
}

v1::GroupInfo Manager::group_info(const std::string& name) const {
  v1::GroupInfo info;
  if (const auto* g = groups_.find(name)) *info.mutable_group() = *g;
  info.set_direct_members(groups_.direct_member_count(name));
  info.set_members(groups_.members(name).size());
  for (auto& c : groups_.children(name)) info.add_children(std::move(c));
  return info;
}

v1::ManagerStats Manager::stats() const {
  v1::ManagerStats s;
  s.set_instance_id(config_.instance_id);
  s.set_version(flotilla::version);
  s.set_started_at_ms(started_at_ms_);
  s.set_devices(registry_.devices().size());
  s.set_devices_online(registry_.online_count());
  s.set_messages_ingested(messages_.load());
  s.set_batches_written(batches_);
  for (const auto& [k, v] : dropped_) (*s.mutable_dropped())[k] = v;
  for (const auto& [k, v] : events_) (*s.mutable_events())[k] = v;
  return s;
}

}  // namespace flotilla::manager
