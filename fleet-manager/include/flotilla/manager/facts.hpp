#pragma once
// Turns stored device data into the (field, value) facts the query language sees. Field names
// are those of query::fields() and docs/query.md.

#include <cstdint>

#include "flotilla/manager/index.hpp"
#include "flotilla/manager/query_eval.hpp"
#include "flotilla/v1/device.pb.h"
#include "flotilla/v1/record.pb.h"

namespace flotilla::manager {

// Appends the facts of one part to `out.values`.
void add_record_facts(const v1::DeviceRecord& record, DeviceFacts& out);
void add_inventory_facts(const v1::Inventory& inventory, DeviceFacts& out);
void add_telemetry_facts(const v1::Telemetry& telemetry, DeviceFacts& out);
// Appends the facts of a device's operator labels (record part): each tag not already among
// `out`'s tags, then attr.<key> for each attribute.
void add_label_facts(const v1::DeviceLabels& labels, DeviceFacts& out);

// The same facts, passed to a sink (the fleet index's, at start-up) without building strings.
void add_record_facts(const v1::DeviceRecord& record, FactSink& out);
void add_inventory_facts(const v1::Inventory& inventory, FactSink& out);
void add_telemetry_facts(const v1::Telemetry& telemetry, FactSink& out);
// Label tags the record does not carry already, then attr.<key> for each attribute.
void add_label_facts(const v1::DeviceLabels& labels, const v1::DeviceRecord& record, FactSink& out);

// All facts of a device; inventory and telemetry may be absent.
DeviceFacts facts_of(const v1::DeviceRecord& record, const v1::Inventory* inventory, const v1::Telemetry* telemetry);

// The reference evaluator's view of a device's facts.
class FactsView final : public query::DeviceView {
 public:
  explicit FactsView(const DeviceFacts& facts) : facts_(facts) {}
  void values(std::string_view field, std::vector<std::string>& out) const override;

 private:
  const DeviceFacts& facts_;
};

}  // namespace flotilla::manager
