#pragma once
// The reference evaluator of the query language: decides a query for one device by reading its
// field values. The index answers the same questions faster and is tested against this.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "flotilla/manager/query.hpp"

namespace flotilla::manager::query {

// What a query can see of one device. Implemented over stored records by the manager and over
// plain maps by tests.
class DeviceView {
 public:
  virtual ~DeviceView() = default;
  // Appends every value of `field` for this device to `out` (nothing: the field is absent).
  // Numbers and times are decimal text; booleans "true"/"false".
  virtual void values(std::string_view field, std::vector<std::string>& out) const = 0;
};

// Whether the device matches. `now_ms` resolves relative times such as last_seen<-5m.
bool matches(const Node& query, const DeviceView& device, std::int64_t now_ms);

// Why a device does or does not match: one line per predicate, in query order, e.g.
//   "firmware.version:1.2.* matched (1.2.3)" / "online:true failed (false)".
struct TraceLine {
  std::string predicate;  // canonical text of the predicate
  bool matched = false;
  std::vector<std::string> values;  // the device's values of that field
};
struct Trace {
  bool matched = false;
  std::vector<TraceLine> lines;
};
Trace explain(const Node& query, const DeviceView& device, std::int64_t now_ms);

// Whether one value satisfies one predicate (type-aware). Shared with the index.
bool value_matches(const Predicate& predicate, std::string_view value, std::int64_t now_ms);

}  // namespace flotilla::manager::query
