// flotilla-bench-ingest: in-process ingest throughput of the fleet manager's write path —
// Registry::ingest + Registry::flush + one Store::write(sync=true) per batch, on a real RocksDB
// in a fresh temporary directory — for several batch sizes, printed next to the baseline
// batch=1 (one WAL sync per message: what acknowledging each message on its own would cost).
//
// A benchmark, not a test: timings are printed, never asserted. The one thing it does check is
// correctness: after each run the store is reopened and the registry must hold every device and
// every message counted (exit status 1 on a mismatch).

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "flotilla/agent/protocol.hpp"
#include "flotilla/core/app.hpp"
#include "flotilla/core/ids.hpp"
#include "flotilla/core/topics.hpp"
#include "flotilla/manager/registry.hpp"
#include "flotilla/manager/store.hpp"
#include "flotilla/sim/fleet_model.hpp"

namespace {

using namespace flotilla;
using Clock = std::chrono::steady_clock;

// Births are enrolment, not the steady state being measured: every run loads them first in
// batches of this size, timed separately from the telemetry phase.
constexpr std::size_t kBirthBatch = 4096;
// Wall-clock origin of the simulated fleet (2025-01-01T00:00:00Z); one telemetry round per second.
constexpr std::int64_t kBaseMs = 1735689600000;

struct Options {
  std::size_t devices = 10000;
  std::size_t messages = 200000;
  std::size_t baseline_messages = 2000;
  std::string batches = "1,64,512,4096";
  std::uint64_t seed = 1;
  std::string dir;
  bool keep = false;
};

struct Encoded {
  std::string topic;
  std::string payload;
};

struct Workload {
  std::vector<std::string> ids;
  std::vector<Encoded> births;
  std::vector<Encoded> telemetry;  // round-robin over the devices
};

struct RunResult {
  std::size_t batch = 0;
  std::size_t messages = 0;  // telemetry messages timed
  double seconds = 0;        // ingest + flush + write, summed over batches
  double write_seconds = 0;  // of which Store::write
  double p50_ms = 0;
  double p99_ms = 0;
  double birth_seconds = 0;
  std::uint64_t disk_bytes = 0;           // at the end of the run, store still open
  std::uint64_t disk_bytes_reopened = 0;  // after close + reopen (WAL replayed into SST files)
  bool durable_ok = false;
  std::string durable_detail;
  std::uint64_t dropped = 0;

  double rate() const { return seconds > 0 ? static_cast<double>(messages) / seconds : 0; }
  double us_per_message() const { return messages > 0 ? seconds * 1e6 / static_cast<double>(messages) : 0; }
};

[[noreturn]] void fail(const std::string& what) {
  fmt::print(stderr, "flotilla-bench-ingest: {}\n", what);
  std::exit(2);
}

std::optional<std::vector<std::size_t>> parse_batches(std::string_view text) {
  std::vector<std::size_t> out;
  while (!text.empty()) {
    const auto comma = text.find(',');
    const std::string_view item = text.substr(0, comma);
    text = comma == std::string_view::npos ? std::string_view() : text.substr(comma + 1);
    std::size_t value = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (ec != std::errc() || end != item.data() + item.size() || value == 0) return std::nullopt;
    if (std::find(out.begin(), out.end(), value) == out.end()) out.push_back(value);
  }
  if (out.empty()) return std::nullopt;
  return out;
}

Workload build_workload(const Options& o, std::size_t telemetry_count) {
  Workload w;
  w.ids.reserve(o.devices);
  w.births.reserve(o.devices);
  w.telemetry.reserve(telemetry_count);
  std::vector<sim::DeviceModel> models;
  std::vector<agent::DeviceProtocol> protocols;
  models.reserve(o.devices);
  protocols.reserve(o.devices);
  for (std::size_t i = 0; i < o.devices; ++i) {
    auto id = DeviceId::parse(sim::device_id("bench", i));
    if (!id) fail(id.error().message);
    models.push_back(sim::make_model(i, o.seed));
    agent::Identity identity{*id, models.back().kind, "bench", "bench", models.back().site, {"bench"}, {}, 30, 1};
    protocols.emplace_back(std::move(identity));
    auto& p = protocols.back();
    p.begin_session(static_cast<std::uint64_t>(kBaseMs));
    p.set_stream(2 * i + 1, 1);
    Message birth = p.birth(models.back().inventory, 0, 0, kBaseMs);
    w.ids.push_back(id->str());
    w.births.push_back({std::move(birth.topic), std::move(birth.payload)});
  }
  std::mt19937_64 rng(o.seed);
  for (std::size_t k = 0; k < telemetry_count; ++k) {
    const std::size_t i = k % o.devices;
    const std::size_t round = k / o.devices;
    const auto now_ms = kBaseMs + static_cast<std::int64_t>(round + 1) * 1000;
    Message m = protocols[i].telemetry(sim::next_telemetry(models[i], rng, round + 1), now_ms);
    w.telemetry.push_back({std::move(m.topic), std::move(m.payload)});
  }
  return w;
}

// The first three fields of /proc/loadavg.
std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one, five, fifteen;
  in >> one >> five >> fifteen;
  return fmt::format("{} {} {}", one, five, fifteen);
}

double percentile(std::vector<double> values, double p) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto rank = static_cast<std::size_t>(std::lround(p * static_cast<double>(values.size() - 1)));
  return values[std::min(rank, values.size() - 1)];
}

// Feeds `messages` to the registry in batches of `batch`, committing each batch with one
// synchronous write, as Manager::handle_batch does. Returns per-batch latencies (seconds).
struct Phase {
  double seconds = 0;
  double write_seconds = 0;
  std::vector<double> batch_seconds;
  std::uint64_t dropped = 0;
};

Phase ingest(manager::Registry& registry, manager::Store& store, const std::vector<Encoded>& messages,
             std::size_t count, std::size_t batch_size, std::size_t devices) {
  Phase phase;
  phase.batch_seconds.reserve(count / batch_size + 1);
  manager::Batch batch;
  for (std::size_t start = 0; start < count; start += batch_size) {
    const std::size_t end = std::min(count, start + batch_size);
    // The manager stamps a batch with the wall clock once; here, the message's round.
    const auto now_ms = kBaseMs + static_cast<std::int64_t>(start / devices + 1) * 1000 + 500;
    const auto t0 = Clock::now();
    for (std::size_t k = start; k < end; ++k) {
      auto topic = topics::parse_device_topic(messages[k].topic);
      if (!topic) fail(fmt::format("bad topic {}: {}", messages[k].topic, topic.error().message));
      auto outcome = registry.ingest(*topic, messages[k].payload, now_ms, batch);
      if (!outcome.dropped.empty()) ++phase.dropped;
    }
    registry.flush(batch);
    const auto t1 = Clock::now();
    if (auto st = store.write(batch, true); !st) fail(fmt::format("store write: {}", st.error().message));
    const auto t2 = Clock::now();
    batch.clear();
    phase.batch_seconds.push_back(std::chrono::duration<double>(t2 - t0).count());
    phase.write_seconds += std::chrono::duration<double>(t2 - t1).count();
  }
  phase.seconds = std::accumulate(phase.batch_seconds.begin(), phase.batch_seconds.end(), 0.0);
  return phase;
}

// Reopens the store and checks that what was acknowledged is there: every device, every message
// counted, and the last telemetry of each device stored as sent.
void verify(const std::filesystem::path& db, const Workload& w, std::size_t telemetry_count, RunResult& r) {
  auto store = manager::open_rocksdb_store(db);
  if (!store) {
    r.durable_detail = fmt::format("reopen failed: {}", store.error().message);
    return;
  }
  auto registry = manager::Registry::load(**store);
  if (!registry) {
    r.durable_detail = fmt::format("registry load failed: {}", registry.error().message);
    return;
  }
  r.disk_bytes_reopened = (*store)->disk_bytes();
  const std::size_t devices = w.ids.size();
  std::uint64_t counted = 0;
  for (const auto& [id, record] : registry->devices()) counted += record.messages();
  const std::uint64_t expected = devices + telemetry_count;
  std::size_t latest_wrong = 0;
  const std::size_t first_of_last_round = telemetry_count > devices ? telemetry_count - devices : 0;
  for (std::size_t k = first_of_last_round; k < telemetry_count; ++k) {
    const std::string& id = w.ids[k % devices];
    auto stored = (*store)->get(manager::Space::telemetry, id);
    if (!stored || *stored != w.telemetry[k].payload) ++latest_wrong;
  }
  r.durable_ok = registry->devices().size() == devices && counted == expected && latest_wrong == 0 && r.dropped == 0;
  r.durable_detail = fmt::format("{}/{} devices, {}/{} messages counted, {} latest-telemetry mismatches, {} dropped",
                                 registry->devices().size(), devices, counted, expected, latest_wrong, r.dropped);
}

RunResult run(const Options& o, const Workload& w, const std::filesystem::path& root, std::size_t batch_size,
              std::size_t telemetry_count) {
  RunResult r;
  r.batch = batch_size;
  r.messages = telemetry_count;
  const auto db = root / fmt::format("batch-{}", batch_size);
  {
    auto store = manager::open_rocksdb_store(db);
    if (!store) fail(fmt::format("open store: {}", store.error().message));
    auto registry = manager::Registry::load(**store);
    if (!registry) fail(fmt::format("load registry: {}", registry.error().message));
    const Phase births = ingest(*registry, **store, w.births, w.births.size(), kBirthBatch, o.devices);
    r.birth_seconds = births.seconds;
    const Phase tel = ingest(*registry, **store, w.telemetry, telemetry_count, batch_size, o.devices);
    r.seconds = tel.seconds;
    r.write_seconds = tel.write_seconds;
    r.p50_ms = percentile(tel.batch_seconds, 0.50) * 1e3;
    r.p99_ms = percentile(tel.batch_seconds, 0.99) * 1e3;
    r.dropped = births.dropped + tel.dropped;
    r.disk_bytes = (*store)->disk_bytes();
  }  // closed here: the check below reads only what reached the disk
  verify(db, w, telemetry_count, r);
  if (!o.keep) {
    std::error_code ec;
    std::filesystem::remove_all(db, ec);
  }
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App cli{"Flotilla ingest benchmark: Registry + RocksDB group commit per batch size vs. one sync per message."};
  cli.add_option("--devices", o.devices, "Simulated devices (one birth each, then telemetry round-robin)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{1000000}));
  cli.add_option("--messages", o.messages, "Telemetry messages timed per batch size (after the births)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
  cli.add_option("--batch", o.batches, "Comma-separated batch sizes; batch=1 is always run as the baseline")
      ->capture_default_str();
  cli.add_option("--baseline-messages", o.baseline_messages,
                 "Telemetry messages timed for the batch=1 baseline (one fsync each; keep it small)")
      ->capture_default_str()
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
  cli.add_option("--seed", o.seed, "Seed for inventories and readings")->capture_default_str();
  cli.add_option("--dir", o.dir, "Parent of the temporary store directory (default: the temp dir)");
  cli.add_flag("--keep", o.keep, "Keep the stores instead of removing them");
  if (auto code = flotilla::app::parse(cli, argc, argv)) return *code;

  auto sizes = parse_batches(o.batches);
  if (!sizes) fail(fmt::format("--batch: '{}' is not a comma-separated list of positive integers", o.batches));
  std::vector<std::size_t> batch_sizes{1};
  for (auto b : *sizes) {
    if (b != 1) batch_sizes.push_back(b);
  }
  const std::size_t baseline_count = std::min(o.baseline_messages, o.messages);

  const std::filesystem::path parent = o.dir.empty() ? std::filesystem::temp_directory_path()
                                                     : std::filesystem::path(o.dir);
  std::string pattern = (parent / "flotilla-bench-ingest-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) fail(fmt::format("mkdtemp {}: cannot create", pattern));
  const std::filesystem::path root = pattern;

  const auto prep0 = Clock::now();
  const Workload w = build_workload(o, std::max(o.messages, baseline_count));
  const double prep_s = std::chrono::duration<double>(Clock::now() - prep0).count();
  const auto avg = [](const std::vector<Encoded>& v) {
    std::size_t bytes = 0;
    for (const auto& m : v) bytes += m.payload.size();
    return v.empty() ? 0.0 : static_cast<double>(bytes) / static_cast<double>(v.size());
  };

  fmt::print("flotilla-bench-ingest: Registry::ingest + flush + Store::write(sync=true) per batch, RocksDB in {}\n",
             root.string());
  fmt::print("load average at start: {} (other work on the machine skews every figure)\n", load_average());
  fmt::print(
      "workload: {} devices; per run a fresh store, {} births first (enrolment, batches of {}, not in the\n"
      "          figures), then telemetry round-robin; payloads pre-encoded in {:.1f} s (birth {:.0f} B,\n"
      "          telemetry {:.0f} B on average)\n",
      o.devices, o.devices, kBirthBatch, prep_s, avg(w.births), avg(w.telemetry));
  fmt::print(
      "baseline: batch=1, one WAL sync per message (acknowledging each message on its own), timed over\n"
      "          {} messages (--baseline-messages) because every one waits for an fsync; the other batch\n"
      "          sizes are timed over {} messages (--messages)\n\n",
      baseline_count, o.messages);
  std::fflush(stdout);

  std::vector<RunResult> results;
  for (auto b : batch_sizes) {
    results.push_back(run(o, w, root, b, b == 1 ? baseline_count : o.messages));
    const auto& r = results.back();
    fmt::print("  ran batch={}: {} messages in {:.2f} s\n", r.batch, r.messages, r.seconds);
    std::fflush(stdout);
  }
  if (!o.keep) {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }

  const RunResult& base = results.front();
  fmt::print("\n");
  fmt::print("{:>6} {:>9} {:>8} {:>11} {:>9} {:>11} {:>11} {:>7} {:>10} {:>10} {:>11} {:>11}  {}\n", "batch",
             "messages", "seconds", "msg/s", "us/msg", "p50 ms", "p99 ms", "write%", "vs batch=1", "births/s",
             "disk B/dev", "reopen B/dev", "durability");
  bool all_ok = true;
  for (const auto& r : results) {
    all_ok = all_ok && r.durable_ok;
    fmt::print(
        "{:>6} {:>9} {:>8.2f} {:>11.0f} {:>9.2f} {:>11.3f} {:>11.3f} {:>6.0f}% {:>9.1f}x {:>10.0f} {:>11.0f} {:>11.0f} "
        " "
        "{}\n",
        r.batch, r.messages, r.seconds, r.rate(), r.us_per_message(), r.p50_ms, r.p99_ms,
        r.seconds > 0 ? 100.0 * r.write_seconds / r.seconds : 0.0, base.rate() > 0 ? r.rate() / base.rate() : 0,
        r.birth_seconds > 0 ? static_cast<double>(o.devices) / r.birth_seconds : 0.0,
        static_cast<double>(r.disk_bytes) / static_cast<double>(o.devices),
        static_cast<double>(r.disk_bytes_reopened) / static_cast<double>(o.devices), r.durable_ok ? "OK" : "MISMATCH");
  }
  fmt::print("\ndurability check, store closed and reopened after each run:\n");
  for (const auto& r : results) {
    fmt::print("  batch {:>5}: {:8} {}\n", r.batch, r.durable_ok ? "OK" : "MISMATCH", r.durable_detail);
  }
  fmt::print(
      "\np50/p99 ms: latency of one whole batch (ingest + flush + synced write), i.e. the least a message of\n"
      "that batch waits before it may be acknowledged; write%: share of the time spent in Store::write.\n"
      "births/s: the enrolment phase of the same run (births in batches of {}), for reference.\n"
      "disk B/dev: Store::disk_bytes() / devices at the end of the run (SST + WAL: mostly WAL this early);\n"
      "reopen B/dev: the same after close and reopen, once RocksDB has replayed the WAL into SST files.\n",
      kBirthBatch);
  fmt::print("durability: {}\n", all_ok ? "OK" : "MISMATCH (a correctness failure, not a timing)");
  return all_ok ? 0 : 1;
}
