#include "flotilla/manager/index_load.hpp"

#include <chrono>
#include <string_view>

#include <fmt/format.h>

#include "flotilla/manager/facts.hpp"
#include "flotilla/v1/device.pb.h"

namespace flotilla::manager {
namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Passes facts on to another sink, counting them.
class Counting final : public FactSink {
 public:
  explicit Counting(std::uint64_t& n) : n_(n) {}
  void add(std::string_view field, std::string_view value) override {
    ++n_;
    to->add(field, value);
  }
  void add_package(std::string_view package, std::string_view version) override {
    ++n_;
    to->add_package(package, version);
  }
  FactSink* to = nullptr;

 private:
  std::uint64_t& n_;
};

}  // namespace

Result<LoadedIndex> load_index(const Store& store, const Registry& registry, const Groups& groups) {
  LoadedIndex out;
  Status bad;
  auto t0 = Clock::now();
  auto scanned = store.scan(Space::labels, "", [&](std::string_view key, std::string_view value) {
    v1::DeviceLabels l;
    if (!l.ParseFromArray(value.data(), static_cast<int>(value.size()))) {
      bad = make_error(Errc::corruption, "labels of {} do not decode", key);
      return false;
    }
    out.labels.emplace(std::string(key), std::move(l));
    return true;
  });
  if (!scanned) return std::move(scanned).error();
  if (!bad) return std::move(bad).error();
  out.read_ms += ms_since(t0);

  // The record part of every device, in id order (so slots follow ids), with its labels (the
  // two maps are joined in key order) and group memberships.
  t0 = Clock::now();
  const auto& devices = registry.devices();
  Counting counting(out.facts);
  auto label = out.labels.begin();
  for (const auto& [id, record] : devices) {
    while (label != out.labels.end() && label->first < id) ++label;
    const v1::DeviceLabels* labels = label != out.labels.end() && label->first == id ? &label->second : nullptr;
    const auto groups_of = groups.groups_of(id);
    out.index.update(id, std::nullopt, [&](FactSink& sink) {
      counting.to = &sink;
      add_record_facts(record, counting);
      if (labels != nullptr) add_label_facts(*labels, record, counting);
      for (const auto& g : groups_of) counting.add("group", g);
    });
  }
  out.index_ms += ms_since(t0);

  // Then the inventory and telemetry parts, each one sequential scan of its key space, joined
  // with the registry by id (both in key order).
  for (const Space space : {Space::inventory, Space::telemetry}) {
    const bool inventory = space == Space::inventory;
    auto next = devices.begin();
    v1::Inventory inv;
    v1::Telemetry tel;
    double index_ms = 0;
    t0 = Clock::now();
    scanned = store.scan(space, "", [&](std::string_view key, std::string_view value) {
      while (next != devices.end() && std::string_view(next->first) < key) ++next;
      if (next == devices.end() || next->first != key) return true;  // not in the registry
      const bool ok = inventory ? inv.ParseFromArray(value.data(), static_cast<int>(value.size()))
                                : tel.ParseFromArray(value.data(), static_cast<int>(value.size()));
      if (!ok) {
        bad = make_error(Errc::corruption, "stored {} of {} does not decode", inventory ? "inventory" : "telemetry",
                         key);
        return false;
      }
      const auto i0 = Clock::now();
      out.index.update(next->first, inventory ? FactPart::inventory : FactPart::telemetry, [&](FactSink& sink) {
        counting.to = &sink;
        if (inventory) {
          add_inventory_facts(inv, counting);
        } else {
          add_telemetry_facts(tel, counting);
        }
      });
      ++(inventory ? out.inventories : out.telemetries);
      index_ms += ms_since(i0);
      return true;
    });
    if (!scanned) return std::move(scanned).error();
    if (!bad) return std::move(bad).error();
    out.index_ms += index_ms;
    out.read_ms += ms_since(t0) - index_ms;
  }
  t0 = Clock::now();
  out.index.finish_load();
  out.index_ms += ms_since(t0);
  return out;
}

}  // namespace flotilla::manager
